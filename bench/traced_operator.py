"""`stockade run` under tracemalloc, for `bench/run.py --tracemalloc` (never used outside the benchmark).

    python bench/traced_operator.py run [stockade run's arguments]

Each SIGUSR2 writes $STOCKADE_TRACEMALLOC_OUT.<n>: the first is the baseline; every later one lists the
allocation sites (file and line, and whole files) that grew most since the baseline, then the largest now.
Tracing costs time and memory of its own: RSS figures come from a run without it.
"""

from __future__ import annotations

import gc
import json
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


def _beyond_the_heap() -> list[str]:
    """What tracemalloc does not see: RSS by mapping kind, threads and tracemalloc's own share."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    rollup = Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]
    return ["\nbeyond the Python heap:",
            f"  threads {status['Threads'].strip()}, RSS {status['VmRSS'].strip()}, tracemalloc's own "
            f"{tracemalloc.get_tracemalloc_memory() / 1e6:.1f} MB",
            *(f"  {line.strip()}" for line in rollup if line.split(":")[0] in ("Rss", "Anonymous", "Private_Dirty"))]


def _bodies() -> list[str]:
    """Kubernetes objects (dicts with apiVersion, kind and metadata) alive, by kind: how many and their JSON size
    (tracemalloc says where a block was made, not whether the same object is kept twice)."""
    gc.collect()
    by_kind: dict[str, list[int]] = {}
    for obj in gc.get_objects():
        if type(obj) is dict and "metadata" in obj and "kind" in obj and "apiVersion" in obj:
            seen = by_kind.setdefault(str(obj.get("kind")), [0, 0])
            seen[0] += 1
            seen[1] += len(json.dumps(obj, default=str))
    return ["\nKubernetes objects alive, by kind (count, JSON MB):",
            *(f"  {kind}: {count} objects, {size / 1e6:.1f} MB"
              for kind, (count, size) in sorted(by_kind.items(), key=lambda kv: -kv[1][0])[:12])]


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def _untraced_report() -> None:
    """STOCKADE_TRACEMALLOC_FRAMES=0: no tracing (RSS as in production); each dump says how much of the RSS a
    full collection and glibc's malloc_trim give back, i.e. garbage and freed-but-kept memory versus live."""
    import ctypes
    before = _rss_mb()
    counts = gc.get_count()
    found = gc.collect()
    collected = _rss_mb()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    trimmed = _rss_mb()
    lines = [f"RSS {before:.1f} MB; after gc.collect() {collected:.1f} MB ({found} unreachable, counts {counts}); "
             f"after malloc_trim {trimmed:.1f} MB", *_bodies(), *_beyond_the_heap()]
    written = Path(f"{OUT}.{_state['n']}.tmp")
    written.write_text("\n".join(lines) + "\n")
    written.rename(f"{OUT}.{_state['n']}")
    _state["n"] += 1


def _dump(*_: Any) -> None:
    if not FRAMES:
        _untraced_report()
        return
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
    lines += _bodies() + _beyond_the_heap()
    lines.append("\nlargest now, by file:")
    lines += [f"  {s}" for s in snapshot.statistics("filename")[:20]]
    written = Path(f"{OUT}.{_state['n']}.tmp")
    written.write_text("\n".join(lines) + "\n")
    written.rename(f"{OUT}.{_state['n']}")  # whole or not at all for the reader
    _state["n"] += 1


if __name__ == "__main__":
    if FRAMES:
        tracemalloc.start(FRAMES)
    signal.signal(signal.SIGUSR2, _dump)
    sys.argv = ["stockade", *sys.argv[1:]]
    runpy.run_module("stockade.cli", run_name="__main__", alter_sys=True)
