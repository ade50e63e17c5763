"""Quarantine: signal -> isolation inside `make bench` (bench/signal_latency.py's way, on run.py's operator).

One AgentRun ``qtarget`` (response: isolate) in the team namespace; each signal is a Falco event POSTed to
the operator's endpoint, timed until the watches show its pod labelled quarantined and the quarantine policy
present; then released, and the next signal waits until the release is through. The floor: the same label
patch and policy create, sent by the benchmark itself against a plain pod in a plain namespace.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import official_client
import stats
from operator_proc import Operator
from signal_latency import POLICY, QUARANTINED, SPEC, Isolation, falco_ssh, histogram_quantile, operator_histogram, post
from stockade.detect.respond import quarantine_policy
from stockade.kube import Kube, object_path

NAME = "qtarget"


async def make_target(kube: Kube, team: str, limit: float = 300) -> None:
    """The target AgentRun and a plain pod for the floor, both Running."""
    await kube.create({"apiVersion": "stockade.io/v1alpha1", "kind": "AgentRun",
                       "metadata": {"name": NAME, "namespace": team}, "spec": SPEC})
    await kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"{team}-qfloor"}})
    await kube.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain", "namespace": f"{team}-qfloor"},
                       "spec": {"containers": [{"name": "c", "image": "registry.example/agent:1"}]}})
    path = object_path("stockade.io/v1alpha1", "AgentRun", team, NAME)
    deadline = time.monotonic() + limit
    while ((await kube.call("GET", path)).get("status") or {}).get("phase") != "Running":
        if time.monotonic() > deadline:
            raise TimeoutError(f"{team}/{NAME} not Running within {limit:.0f} s")
        await asyncio.sleep(0.2)


async def _released(kube: Kube, path: str, settle: float) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        run = await kube.call("GET", path)
        status = run.get("status") or {}
        if "stockade.io/release" not in (run["metadata"].get("annotations") or {}) and \
                status.get("phase") == "Running" and not (status.get("quarantine") or {}).get("active"):
            await asyncio.sleep(settle)  # let the reconcile the release caused finish
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("the release did not complete")


async def stockade_path(kube: Kube, op: Operator, team: str, signals: int, settle: float) -> list[float]:
    namespace = f"{team}-{NAME}"
    tracker = Isolation(official_client.shared(), namespace, NAME)
    url = f"http://127.0.0.1:{op.signal_port}/falco"
    path = object_path("stockade.io/v1alpha1", "AgentRun", team, NAME)
    out = []
    try:
        await asyncio.sleep(0.5)
        await asyncio.to_thread(tracker.wait, False)
        for _ in range(signals):
            started = time.perf_counter()
            status = await asyncio.to_thread(post, url, op.token, falco_ssh(namespace, NAME))
            assert status == 202, status
            out.append(await asyncio.to_thread(tracker.wait, True) - started)
            await kube.merge_patch(path, {"metadata": {"annotations": {"stockade.io/release": "bench"}}})
            await asyncio.to_thread(tracker.wait, False)
            await _released(kube, path, settle)
    finally:
        tracker.stop()
    return out


async def floor_path(kube: Kube, team: str, signals: int, settle: float) -> list[float]:
    namespace, pod = f"{team}-qfloor", "plain"
    tracker = Isolation(official_client.shared(), namespace, pod)
    policy = quarantine_policy(namespace, "floor", "floor")
    policy["metadata"]["labels"] = {"bench": "floor"}
    pod_path = object_path("v1", "Pod", namespace, pod)
    out = []
    try:
        await asyncio.sleep(0.5)
        await asyncio.to_thread(tracker.wait, False)
        for _ in range(signals):
            started = time.perf_counter()
            await asyncio.gather(kube.merge_patch(pod_path, {"metadata": {"labels": {QUARANTINED: "true"}}}),
                                 kube.create(policy))
            out.append(await asyncio.to_thread(tracker.wait, True) - started)
            await asyncio.gather(kube.merge_patch(pod_path, {"metadata": {"labels": {QUARANTINED: None}}}),
                                 kube.delete("networking.k8s.io/v1", "NetworkPolicy", namespace, POLICY))
            await asyncio.to_thread(tracker.wait, False)
            await asyncio.sleep(settle)
    finally:
        tracker.stop()
    return out


async def measure(kube: Kube, op: Operator, team: str, signals: int, *, runs_present: int,
                  settle: float = 0.1) -> dict[str, Any]:
    floor = await floor_path(kube, team, signals, settle)
    before = await asyncio.to_thread(operator_histogram, op.metrics_port)
    ours = await stockade_path(kube, op, team, signals, settle)
    after = await asyncio.to_thread(operator_histogram, op.metrics_port)
    return {"runs_present": runs_present, "load_average": os.getloadavg()[0],
            "floor": {**stats.percentiles(floor), "samples": floor},
            "stockade": {**stats.percentiles(ours), "samples": ours},
            "operator_histogram": {"p50": histogram_quantile(0.5, before, after),
                                   "p99": histogram_quantile(0.99, before, after)}}


def line(row: dict[str, Any]) -> str:
    floor, ours = row["floor"], row["stockade"]
    return (f"signal -> isolation, {row['runs_present']} AgentRun(s) present, {ours['n']} signals "
            f"(load {row['load_average']:.2f}): floor p50 {floor['p50']:.4f} p99 {floor['p99']:.4f}; "
            f"stockade p50 {ours['p50']:.4f} p99 {ours['p99']:.4f} max {ours['max']:.4f}; "
            f"operator histogram p50 {row['operator_histogram']['p50']:.4f} p99 {row['operator_histogram']['p99']:.4f}")
