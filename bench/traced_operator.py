"""`stockade run` under tracemalloc, for `bench/run.py --tracemalloc` (never used outside the benchmark).

    python bench/traced_operator.py run [stockade run's arguments]

Each SIGUSR2 writes $STOCKADE_TRACEMALLOC_OUT.<n>: the first is the baseline; every later one lists the
allocation sites (file and line, and whole files) that grew most since the baseline, then the largest now.
Tracing costs time and memory of its own: RSS figures come from a run without it.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import tracemalloc
from pathlib import Path
from typing import Any

FRAMES = int(os.environ.get("STOCKADE_TRACEMALLOC_FRAMES", "12"))
OUT = os.environ.get("STOCKADE_TRACEMALLOC_OUT", "/tmp/stockade-tracemalloc")
IGNORED = (tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
           tracemalloc.Filter(False, "<unknown>"))
_state: dict[str, Any] = {"baseline": None, "n": 0}


def _dump(*_: Any) -> None:
    snapshot = tracemalloc.take_snapshot().filter_traces(IGNORED)
    baseline = _state["baseline"]
    lines = [f"traced now: {sum(s.size for s in snapshot.statistics('filename')) / 1e6:.1f} MB"]
    if baseline is None:
        _state["baseline"] = snapshot
    else:
        lines.append(f"\ngrowth since the baseline, by file ({FRAMES} frames traced):")
        lines += [f"  {s}" for s in snapshot.compare_to(baseline, "filename")[:25]]
        lines.append("\ngrowth since the baseline, by line:")
        lines += [f"  {s}" for s in snapshot.compare_to(baseline, "lineno")[:40]]
        lines.append("\ngrowth since the baseline, by whole traceback (the 12 largest):")
        for stat in snapshot.compare_to(baseline, "traceback")[:12]:
            lines.append(f"  {stat.size_diff / 1e6:+.2f} MB in {stat.count_diff:+d} blocks:")
            lines += [f"      {frame}" for frame in stat.traceback.format()[-2 * FRAMES:]]
    lines.append("\nlargest now, by file:")
    lines += [f"  {s}" for s in snapshot.statistics("filename")[:20]]
    written = Path(f"{OUT}.{_state['n']}.tmp")
    written.write_text("\n".join(lines) + "\n")
    written.rename(f"{OUT}.{_state['n']}")  # whole or not at all for the reader
    _state["n"] += 1


if __name__ == "__main__":
    tracemalloc.start(FRAMES)
    signal.signal(signal.SIGUSR2, _dump)
    sys.argv = ["stockade", *sys.argv[1:]]
    runpy.run_module("stockade.cli", run_name="__main__", alter_sys=True)
