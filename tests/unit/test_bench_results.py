"""bench/stats.py and bench/results.py: percentiles, CPU ticks from /proc/<pid>/stat, the Markdown table, and
results files replaced whole (a plot this run did not make is removed)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import results
import stats


def test_percentiles_by_nearest_rank() -> None:
    got = stats.percentiles([float(v) for v in range(100, 0, -1)])  # 1..100, unsorted
    assert (got["n"], got["p50"], got["p90"], got["p99"], got["max"], got["mean"]) == (100, 50.5, 90, 99, 100, 50.5)
    one = stats.percentiles([0.25])
    assert one["p50"] == one["p99"] == one["max"] == 0.25
    assert stats.percentiles([])["n"] == 0 and math.isnan(stats.percentiles([])["p99"])


def test_ratio_and_rate() -> None:
    assert stats.ratio(1.3, 1.0) == 1.3
    assert math.isnan(stats.ratio(1.0, 0.0)) and math.isnan(stats.ratio(float("nan"), 1.0))
    assert stats.per_minute(3, 30) == 6 and math.isnan(stats.per_minute(1, 0))


def test_cpu_ticks_are_utime_plus_stime_even_with_a_command_holding_spaces_and_parentheses() -> None:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime cutime ...
    stat = "4242 (py (a) b) S 1 4242 4242 0 -1 4194560 900 0 3 0 1234 567 8 9 20 0 5 0\n"
    assert stats.cpu_ticks(stat) == 1234 + 567


def figures(p50: float, p99: float) -> dict[str, Any]:
    return {**stats.percentiles([p50, p99]), "p50": p50, "p99": p99, "samples": [p50, p99]}


DOC: dict[str, Any] = {
    "timestamp": "2026-12-07T16:00:00Z", "git": {"commit": "0123456789abcdef", "dirty": False},
    "machine": "2 CPUs", "command": "bench/run.py", "duration_seconds": 600.0,
    "load_average": {"start": 1.5, "end": 2.0}, "rss_mb": {"at start": 80.0},
    "latency": [
        {"scenario": "one at a time", "count": 30, "floor": figures(1.0, 1.2), "stockade": figures(1.2, 1.5),
         "ratio_p50": 1.2, "ratio_p99": 1.25, "load_average": 1.9},
        {"scenario": "100 at once", "count": 100, "floor": figures(2.0, 3.0), "stockade": figures(3.0, 4.8),
         "ratio_p50": 1.5, "ratio_p99": 1.6, "load_average": 2.0},
    ],
    "scaling": [{"memory_runs": 0, "runs_present": 141, "rss_mb": 120.0, "probe": figures(1.1, 1.3)},
                {"memory_runs": 1000, "runs_present": 1146, "rss_mb": 420.0, "probe": figures(1.4, 2.0)}],
    "idle": {"runs_present": 1146, "seconds": 60.0, "cpu_seconds_per_minute": 0.5, "writes_per_minute": 0.0,
             "requests_per_minute": 2.0, "writes_by_request": {}, "rss_mb_at_end": 390.0},
    "quarantine": [{"runs_present": 1, "floor": figures(0.01, 0.02), "stockade": figures(0.05, 0.6)},
                   {"runs_present": 1146, "floor": figures(0.01, 0.03), "stockade": figures(0.1, 0.9)}],
    "restart": {"runs": 1146, "seconds_to_confirmed": 42.0, "writes": 3, "run_writes": 0, "objects_before": 9000,
                "objects_after": 9000, "differences": [], "rss_mb": 400.0, "writes_by_request": {"patch leases": 3}},
}


def row(text: str, first: str) -> list[str]:
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]
    [found] = [r for r in rows if r[0] == first]
    return found


def test_the_table_holds_each_figure_beside_its_floor_and_the_verdict_on_its_target() -> None:
    text = results.render(DOC)
    assert "commit `0123456789ab`" in text and "load average (1 min) 1.50 at the start, 2.00 at the end" in text
    assert row(text, "one at a time") == ["one at a time", "30", "1.000", "1.200", "1.20", "1.200", "1.500", "1.25",
                                          "1.90", "p50 ratio < 1.3: met"]
    assert row(text, "100 at once")[-1] == "p99 ratio < 1.5: NOT met"
    assert row(text, "1000")[2:3] == ["420"] and row(text, "1000")[-1] == "< 150 MB: NOT met"
    assert row(text, "0")[-1] == ""  # no target at 0 memory runs
    assert row(text, "operator API writes per idle minute") == ["operator API writes per idle minute", "0.0", "0: met"]
    assert row(text, "operator RSS at the end of the idle window (MB)")[1] == "390"
    assert row(text, "1")[-1] == "p99 < 0.5 s: NOT met" and row(text, "1146")[-1] == "p99 < 1 s: met"
    assert row(text, "duplicate or missing objects") == ["duplicate or missing objects", "none"]
    assert row(text, "writes: patch leases") == ["writes: patch leases", "3"]


def test_parts_not_measured_are_left_out() -> None:
    text = results.render({k: v for k, v in DOC.items() if k not in ("scaling", "idle", "quarantine", "restart")})
    assert "## Apply to fenced pod Running" in text
    assert "## Idle" not in text and "## Quarantine" not in text and "## Operator restart" not in text


def test_a_run_replaces_the_files_and_removes_a_plot_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "scaling.png").write_bytes(b"old")
    (tmp_path / "results.md").write_text("old")

    def plot(doc: Any, out: Path) -> list[str]:
        (out / "latency.png").write_bytes(b"new")
        return ["latency.png"]

    written = results.write(DOC, tmp_path, plot)
    assert json.loads((tmp_path / "results.json").read_text())["restart"]["seconds_to_confirmed"] == 42.0
    assert (tmp_path / "results.md").read_text().startswith("# Stockade benchmark results")
    assert not (tmp_path / "scaling.png").exists() and (tmp_path / "latency.png").read_bytes() == b"new"
    assert (tmp_path / "results-20261207T160000.json").exists()
    assert {p.name for p in written} == {"results.json", "results.md", "latency.png"}
    assert not list(tmp_path.glob(".*.tmp"))
