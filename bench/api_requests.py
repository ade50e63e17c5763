"""API requests per run, by client, verb and resource, from the API server's audit log (issue 12, point 8).

The API server's ``apiserver_request_total`` counts by verb, group, version, resource, subresource, scope,
component and code, never by user, so with the floor client, the operator and the control plane all
talking at once it cannot say whose requests a run cost. The audit log can: `make bench` starts the
cluster with ``STOCKADE_AUDIT_POLICY=bench/audit-policy.yaml`` (metadata only, every request once), runs
the operator as a ServiceAccount of its own and the benchmark's client with a User-Agent of its own, and
this module counts what each of them sent while one run went from creation to Ready, and in the quiet
second after.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLIENT_AGENT = "stockade-bench"  # the benchmark's own User-Agent (floor client, AgentRun creation, its watches)
OPERATOR_ACCOUNT = ("default", "stockade-bench-operator")  # the identity the benchmark runs the operator as
WRITES = {"create", "update", "patch", "delete", "deletecollection"}


def audit_log_path() -> Path | None:
    """STOCKADE_AUDIT_LOG, else the local cluster's (None when it was started without an audit policy)."""
    if os.environ.get("STOCKADE_AUDIT_LOG"):
        return Path(os.environ["STOCKADE_AUDIT_LOG"])
    found = subprocess.run([str(ROOT / "e2e/cluster.sh"), "auditlog"], capture_output=True, text=True, check=False)
    return Path(found.stdout.strip()) if found.returncode == 0 and found.stdout.strip() else None


class AuditLog:
    """The audit log read from a mark on: the events written since."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        return self.path.stat().st_size

    def since(self, offset: int) -> list[dict[str, Any]]:
        with self.path.open("rb") as file:
            file.seek(offset)
            data = file.read()
        return [json.loads(line) for line in data.splitlines() if line.strip()]


def _when(event: Mapping[str, Any]) -> float:
    return datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()


def who(event: Mapping[str, Any], operator_user: str) -> str:
    """stockade (the operator), client (the benchmark), or the control-plane component (its User-Agent's product)."""
    user = (event.get("user") or {}).get("username", "")
    agent = str(event.get("userAgent") or "")
    if user == operator_user:
        return "stockade"
    if agent.startswith(CLIENT_AGENT):
        return "client"
    return agent.split("/", 1)[0] or user or "?"


def what(event: Mapping[str, Any]) -> str:
    ref = event.get("objectRef") or {}
    resource = ref.get("resource", event.get("requestURI", "?"))
    if ref.get("subresource"):
        resource += "/" + ref["subresource"]
    return f"{event.get('verb', '?')} {resource}"


@dataclass(frozen=True)
class Window:
    """One run: the wall-clock moments it was created, seen Ready, and the end of the quiet after."""

    start: float
    ready: float
    settled: float


@dataclass
class Counts:
    runs: int
    to_ready: Counter[tuple[str, str]] = field(default_factory=Counter)  # (who, "verb resource") -> requests
    after_ready: Counter[tuple[str, str]] = field(default_factory=Counter)
    agentrun_writes: Counter[tuple[str, str]] = field(default_factory=Counter)  # to Ready and after


def count(events: Iterable[Mapping[str, Any]], windows: Sequence[Window], operator_user: str) -> Counts:
    """Each event in a run's window, counted once (a watch when it started, every other request when done)."""
    result = Counts(runs=len(windows))
    for event in events:
        if event.get("stage") not in ("ResponseComplete", "ResponseStarted"):
            continue
        if (event.get("stage") == "ResponseStarted") != (event.get("verb") == "watch"):
            continue
        when = _when(event)
        window = next((w for w in windows if w.start <= when <= w.settled), None)
        if window is None:
            continue
        key = (who(event, operator_user), what(event))
        (result.to_ready if when <= window.ready else result.after_ready)[key] += 1
        ref = event.get("objectRef") or {}
        if ref.get("resource") == "agentruns" and event.get("verb") in WRITES:
            result.agentrun_writes[key] += 1
    return result


def report(title: str, counts: Counts, clients: Sequence[str] = ("client", "stockade")) -> list[str]:
    """Requests per run: each client's by verb and resource, the control plane's by component."""
    per = max(counts.runs, 1)
    lines = [f"\n{title}: API requests per run ({counts.runs} runs, one at a time; audit log)",
             f"  {'who':<26}{'request':<44}{'to Ready':>9}{'after':>8}"]
    keys = set(counts.to_ready) | set(counts.after_ready)
    for client in clients:
        mine = sorted(k for k in keys if k[0] == client)
        for key in mine:
            lines.append(f"  {client:<26}{key[1]:<44}{counts.to_ready[key] / per:>9.1f}"
                         f"{counts.after_ready[key] / per:>8.1f}")
        total = sum(counts.to_ready[k] for k in mine) / per
        after = sum(counts.after_ready[k] for k in mine) / per
        writes = sum(counts.to_ready[k] for k in mine if k[1].split()[0] in WRITES) / per
        lines.append(f"  {client + ' total':<26}{f'({writes:.1f} writes)':<44}{total:>9.1f}{after:>8.1f}")
    others = Counter[str]()
    after_others = Counter[str]()
    for (component, _), value in counts.to_ready.items():
        if component not in clients:
            others[component] += value
    for (component, _), value in counts.after_ready.items():
        if component not in clients:
            after_others[component] += value
    for component in sorted(set(others) | set(after_others)):
        lines.append(f"  {component:<26}{'(all requests)':<44}{others[component] / per:>9.1f}"
                     f"{after_others[component] / per:>8.1f}")
    if counts.agentrun_writes:
        lines.append("  writes to the AgentRun itself, per run (to Ready and after): " + ", ".join(
            f"{k[0]} {k[1]}: {v / per:.1f}" for k, v in sorted(counts.agentrun_writes.items())))
    return lines


def as_json(counts: Counts) -> dict[str, Any]:
    def flat(counter: Counter[tuple[str, str]]) -> dict[str, float]:
        return {f"{k[0]}: {k[1]}": v / max(counts.runs, 1) for k, v in sorted(counter.items())}

    return {"runs": counts.runs, "to_ready": flat(counts.to_ready), "after_ready": flat(counts.after_ready),
            "agentrun_writes": flat(counts.agentrun_writes)}
