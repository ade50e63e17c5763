"""bench/results/: the figures of one `make bench` as JSON, a Markdown table and PNG plots.

``render`` (pure) turns the JSON document into Markdown; ``write`` replaces results.json, results.md and
the plots (bench/plots.py) in place, each file whole or not at all, removes a plot this run did not make,
and keeps a timestamped copy of the JSON beside them (git ignores the copies; the latest three are committed).
"""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results"
PLOTS = ("latency.png", "scaling.png")

# Issue 12's targets, as (figure, limit) for the verdict column.
LATENCY_TARGETS = {"one at a time": ("p50", 1.3), "100 at once": ("p99", 1.5)}
QUARANTINE_P99_TARGET = {"idle": 0.5, "runs": 1.0}  # seconds: idle, and with the 1,000 runs present
RSS_TARGETS = ((1000, 150.0), (5000, 600.0))  # (AgentRuns Ready, MB)


def git_head() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def _f(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _verdict(value: float | None, limit: float, unit: str = "") -> str:
    if value is None or math.isnan(value):
        return f"< {limit:g}{unit}: not measured"
    return f"< {limit:g}{unit}: {'met' if value < limit else 'NOT met'}"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows), ""]


def render(doc: Mapping[str, Any]) -> str:
    """The Markdown page of one run: what ran where, then one table per measured part (parts not measured left out)."""
    head = doc.get("git") or {}
    load = doc.get("load_average") or {}
    lines = ["# Stockade benchmark results", "",
             f"`{doc.get('command', 'make bench')}` on {doc.get('machine', '?')}, {doc.get('timestamp', '?')}, "
             f"commit `{str(head.get('commit', '?'))[:12]}`{' (uncommitted changes)' if head.get('dirty') else ''}; "
             f"load average (1 min) {_f(load.get('start'), 2)} at the start, {_f(load.get('end'), 2)} at the end; "
             f"took {_f(doc.get('duration_seconds'), 0)} s. Local kwok cluster (real API server, etcd, scheduler; "
             "no kubelet). Figures are seconds unless named otherwise.", ""]
    if doc.get("latency"):
        lines += ["## Apply to fenced pod Running", ""]
        rows = []
        for row in doc["latency"]:
            floor, ours = row["floor"], row["stockade"]
            target = LATENCY_TARGETS.get(row["scenario"])
            verdict = "reported"
            if target:
                verdict = f"{target[0]} ratio {_verdict(row.get(f'ratio_{target[0]}'), target[1])}"
            rows.append([row["scenario"], _f(row["count"]), _f(floor["p50"]), _f(ours["p50"]),
                         _f(row.get("ratio_p50"), 2), _f(floor["p99"]), _f(ours["p99"]), _f(row.get("ratio_p99"), 2),
                         _f(row.get("load_average"), 2), verdict])
        lines += _table(["scenario", "runs", "floor p50", "stockade p50", "ratio p50", "floor p99", "stockade p99",
                         "ratio p99", "load", "target"], rows)
    if doc.get("scaling"):
        lines += ["## With AgentRuns present", ""]
        rows = []
        for point in doc["scaling"]:
            limit = next((mb for runs, mb in RSS_TARGETS if point["memory_runs"] == runs), None)
            rows.append([_f(point["memory_runs"]), _f(point["runs_present"]), _f(point["rss_mb"], 0),
                         _f(point["probe"]["p50"]), _f(point["probe"]["max"]), _f(point.get("load_average"), 2),
                         _verdict(point["rss_mb"], limit, " MB") if limit else ""])
        lines += _table(["memory runs made", "AgentRuns present", "operator RSS (MB)", "one more: p50",
                         "one more: max", "load", "target"], rows)
    idle = doc.get("idle")
    if idle:
        lines += [f"## Idle, {idle['runs_present']} AgentRuns present ({_f(idle['seconds'], 0)} s measured)", ""]
        rows = [["CPU seconds per idle minute (utime + stime)", _f(idle["cpu_seconds_per_minute"]), "reported"],
                ["operator API writes per idle minute", _f(idle["writes_per_minute"], 1),
                 "0: " + ("met" if idle["writes_per_minute"] == 0 else "NOT met")],
                ["operator API requests per idle minute (all verbs)", _f(idle["requests_per_minute"], 1), ""]]
        if idle.get("rss_mb_at_end") is not None:  # results written before this figure was kept lack it
            rows.append(["operator RSS at the end of the idle window (MB)", _f(idle["rss_mb_at_end"], 0), ""])
        writes = sorted((idle.get("writes_by_request") or {}).items())
        rows += [[f"  writes: {what}", _f(n, 1), ""] for what, n in writes]
        lines += _table(["figure", "value", "target"], rows)
    if doc.get("quarantine"):
        lines += ["## Quarantine: signal to isolation", ""]
        rows = []
        for row in doc["quarantine"]:
            limit = QUARANTINE_P99_TARGET["idle" if row["runs_present"] <= 1 else "runs"]
            rows.append([_f(row["runs_present"]), _f(row["stockade"]["n"]), _f(row["floor"]["p50"], 4),
                         _f(row["stockade"]["p50"], 4), _f(row["floor"]["p99"], 4), _f(row["stockade"]["p99"], 4),
                         _f(row.get("load_average"), 2), "p99 " + _verdict(row["stockade"]["p99"], limit, " s")])
        lines += _table(["AgentRuns present", "signals", "floor p50", "stockade p50", "floor p99", "stockade p99",
                         "load", "target"], rows)
    restart = doc.get("restart")
    if restart:
        lines += [f"## Operator restart, {restart['runs']} AgentRuns present", ""]
        rows = [["start to every run's fence confirmed (s)", _f(restart["seconds_to_confirmed"], 1)],
                ["operator API writes from the start to 10 s after", _f(restart["writes"])],
                ["  of which to AgentRuns or in run namespaces (target 0)", _f(restart.get("run_writes"))],
                ["objects in run namespaces before / after",
                 f"{restart['objects_before']} / {restart['objects_after']}"],
                ["duplicate or missing objects", ", ".join(restart["differences"]) or "none"],
                ["operator RSS after the restart (MB)", _f(restart.get("rss_mb"), 0)]]
        rows += [[f"  writes: {what}", _f(n)] for what, n in sorted((restart.get("writes_by_request") or {}).items())]
        lines += _table(["figure", "value"], rows)
    rss = doc.get("rss_mb") or {}
    if rss:
        lines += ["Operator RSS (MB): " + ", ".join(f"{k} {_f(v, 0)}" for k, v in rss.items()), ""]
    return "\n".join(lines)


def _replace(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    tmp.replace(path)


def write(doc: Mapping[str, Any], out: Path = OUT, plot: Callable[[Mapping[str, Any], Path], list[str]] | None = None
          ) -> list[Path]:
    """results.json, results.md, the plots (``plot(doc, out)`` writes them and names the ones it made)."""
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=1, allow_nan=True)
    _replace(out / "results.json", lambda p: p.write_text(text))
    stamp = str(doc.get("timestamp", "")).replace(":", "").replace("-", "")[:15] or "unknown"
    (out / f"results-{stamp}.json").write_text(text)
    _replace(out / "results.md", lambda p: p.write_text(render(doc) + "\n"))
    made = plot(doc, out) if plot is not None else []
    for name in PLOTS:
        if name not in made:
            (out / name).unlink(missing_ok=True)  # not measured this time: no stale plot beside the new table
    return [out / "results.json", out / "results.md", *(out / n for n in made)]
