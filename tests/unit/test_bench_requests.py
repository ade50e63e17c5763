"""bench/api_requests.py: each audit event counted once, in its run's window, under the client that sent it."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import api_requests

OPERATOR = "system:serviceaccount:default:stockade-bench-operator"


def event(at: float, verb: str, resource: str, *, user: str = OPERATOR, agent: str = "kopf/1.45",
          stage: str = "ResponseComplete", subresource: str = "") -> dict[str, Any]:
    ref = {"resource": resource, **({"subresource": subresource} if subresource else {})}
    return {"stage": stage, "verb": verb, "objectRef": ref, "user": {"username": user}, "userAgent": agent,
            "requestReceivedTimestamp": datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")}


def test_events_are_counted_per_window_client_and_stage() -> None:
    windows = [api_requests.Window(100.0, 100.5, 101.5), api_requests.Window(200.0, 200.4, 201.4)]
    events = [
        event(100.1, "create", "agentruns", user="admin", agent="stockade-bench/1"),
        event(100.2, "patch", "agentruns", subresource="status"),
        event(100.3, "create", "pods"),
        event(100.3, "watch", "pods", stage="ResponseStarted"),  # a watch counts when it starts
        event(100.3, "watch", "pods", stage="ResponseComplete"),  # ... never again when it ends
        event(100.3, "create", "pods", stage="ResponseStarted"),  # not a watch: counted when complete only
        event(100.4, "update", "pods", user="system:serviceaccount:kube-system:x",
              agent="kube-controller-manager/v1.37.2", subresource="status"),
        event(101.0, "patch", "agentruns", subresource="status"),  # after Ready
        event(150.0, "patch", "agentruns", subresource="status"),  # between runs: not counted
        event(200.1, "create", "pods"),
    ]
    counts = api_requests.count(events, windows, OPERATOR)
    assert counts.to_ready == {("client", "create agentruns"): 1, ("stockade", "patch agentruns/status"): 1,
                               ("stockade", "create pods"): 2, ("stockade", "watch pods"): 1,
                               ("kube-controller-manager", "update pods/status"): 1}
    assert counts.after_ready == {("stockade", "patch agentruns/status"): 1}
    assert counts.agentrun_writes == {("client", "create agentruns"): 1, ("stockade", "patch agentruns/status"): 2}
    text = "\n".join(api_requests.report("Stockade", counts))
    assert "stockade total" in text and "(1.5 writes)" in text  # to Ready: (1 patch + 2 creates) / 2 runs
