"""A queued run starts when capacity frees: how soon, beside a floor, and how many writes an admission costs.

    KUBECONFIG=... python bench/queue_latency.py [--rounds 10]     (figures printed, never asserted)

(Not named queue.py: as a script's own directory comes first on sys.path, it would shadow the standard library.)

* stockade: an AgentPolicy with a budget of one run selects a fresh team namespace. Each round, run A holds the
  budget and run B waits Queued; A is deleted. Capacity is free the moment A's last pod is gone (a deleted
  run's share is released once its pods are gone); the figure is from that moment, as a pod watch sees it, to
  the moment the same watch sees B's pod (and a namespace watch B's run namespace) appear.
* floor: the least any controller must do after the same signal: a client watching pods sees a pod go and
  creates the next run's fence (namespace, guardrails) and its pod at once, as fast as the API server allows.
* writes: MODIFIED events of each AgentRun (every write to it changes its resourceVersion) from creation until
  it is Running, for a run admitted at once and for a run that waited Queued first. The Admitted condition rides
  on the status write that Running brings anyway; a queued run adds its one Queued write.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT / "bench"))

from kubernetes import client, watch  # noqa: E402

import official_client  # noqa: E402
from stockade.api.models import AgentRunSpec  # noqa: E402
from stockade.kube import Kube, KubeError  # noqa: E402
from stockade.plan import PlanSettings, RunRef, build  # noqa: E402

SPEC: dict[str, Any] = {
    "template": {"spec": {"containers": [{"name": "agent", "image": "registry.example/agent:1",
                                          "resources": {"limits": {"cpu": "100m", "memory": "128Mi"}}}]}},
    "grant": {"cpu": "1", "memory": "1Gi", "pods": 1, "duration": "1h"},
}
LABEL = "stockade-bench/queue"


class Events:
    """One watch per kind; the first time each object is ADDED and DELETED, and its MODIFIED count."""

    def __init__(self, kube: Kube, kind: str, selector: str | None = None) -> None:
        self.kube, self.kind, self.selector = kube, kind, selector
        self.added: dict[str, float] = {}
        self.deleted: dict[str, float] = {}
        self.modified: dict[str, int] = {}
        self.phase: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _list(self, **kw: Any) -> Any:
        shared = official_client.shared()
        core, custom = client.CoreV1Api(shared), client.CustomObjectsApi(shared)
        if self.kind == "pods":
            return core.list_pod_for_all_namespaces(**kw)
        if self.kind == "namespaces":
            return core.list_namespace(**kw)
        return custom.list_cluster_custom_object("stockade.io", "v1alpha1", "agentruns", **kw)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for event in watch.Watch().stream(self._list, label_selector=self.selector, timeout_seconds=30):  # type: ignore[no-untyped-call]
                    now = time.perf_counter()
                    obj = event["object"]
                    body = obj if isinstance(obj, dict) else official_client.shared().sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
                    meta = body["metadata"]
                    key = f"{meta.get('namespace') or ''}/{meta['name']}"
                    if event["type"] == "ADDED":
                        self.added.setdefault(key, now)
                    elif event["type"] == "DELETED":
                        self.deleted.setdefault(key, now)
                    elif event["type"] == "MODIFIED":
                        self.modified[key] = self.modified.get(key, 0) + 1
                    self.phase[key] = str((body.get("status") or {}).get("phase") or "")
                    if self._stop.is_set():
                        break
            except Exception:  # a dropped watch is re-opened
                time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()


async def until(check: Any, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(str(check))
        await asyncio.sleep(0.002)


def agentrun(team: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "stockade.io/v1alpha1", "kind": "AgentRun", "metadata": {"name": name, "namespace": team},
            "spec": SPEC}


async def stockade_rounds(kube: Kube, team: str, rounds: int) -> tuple[list[float], list[float], list[int], list[int]]:
    pods, namespaces = Events(kube, "pods", f"stockade.io/agentrun-namespace={team}"), Events(kube, "namespaces")
    runs = Events(kube, "agentruns")
    await asyncio.sleep(0.5)
    to_pod, to_namespace, direct_writes, queued_writes = [], [], [], []
    holder = f"a{uuid.uuid4().hex[:6]}"
    await kube.create(agentrun(team, holder))
    await until(lambda: runs.phase.get(f"{team}/{holder}") == "Running")
    direct_writes.append(runs.modified.get(f"{team}/{holder}", 0))
    for _ in range(rounds):
        waiting = f"b{uuid.uuid4().hex[:6]}"
        await kube.create(agentrun(team, waiting))
        await until(lambda w=waiting: runs.phase.get(f"{team}/{w}") == "Queued")
        await kube.delete("stockade.io/v1alpha1", "AgentRun", team, holder)
        await until(lambda w=waiting: f"{team}-{w}/{w}" in pods.added)
        freed = pods.deleted[f"{team}-{holder}/{holder}"]
        to_pod.append(pods.added[f"{team}-{waiting}/{waiting}"] - freed)
        to_namespace.append(namespaces.added[f"/{team}-{waiting}"] - freed)
        await until(lambda w=waiting: runs.phase.get(f"{team}/{w}") == "Running")
        queued_writes.append(runs.modified.get(f"{team}/{waiting}", 0))
        holder = waiting
    for watcher in (pods, namespaces, runs):
        watcher.stop()
    return to_pod, to_namespace, direct_writes, queued_writes


async def floor_rounds(kube: Kube, rounds: int) -> list[float]:
    """A pod goes; a client that saw it go builds the next fence and pod straight away."""
    label = f"floor-{uuid.uuid4().hex[:5]}"
    pods = Events(kube, "pods", f"{LABEL}={label}")
    await asyncio.sleep(0.5)
    spec = AgentRunSpec.model_validate(SPEC)
    figures, previous = [], None
    for _ in range(rounds + 1):
        name = f"f{uuid.uuid4().hex[:6]}"
        if previous is not None:
            await kube.delete("v1", "Pod", f"floor-{previous}", previous, grace=0)
            await until(lambda p=previous: f"floor-{p}/{p}" in pods.deleted)
        plan = build(RunRef("floor", name), spec, {}, PlanSettings())
        objects = [*plan.guardrails, plan.workload]
        for obj in objects:
            assert obj is not None
            obj["metadata"]["labels"] = {k: v for k, v in obj["metadata"]["labels"].items() if "stockade" not in k}
        ns, *rest = plan.guardrails
        await kube.create(ns)
        await asyncio.gather(*(kube.create(obj) for obj in rest))
        pod = plan.workload
        assert pod is not None
        pod["metadata"]["labels"][LABEL] = label
        while True:
            try:
                await kube.create(pod)
                break
            except KubeError as err:
                if "status unknown for quota" not in err.message:
                    raise
                await asyncio.sleep(0.005)
        await until(lambda n=name: f"floor-{n}/{n}" in pods.added)
        if previous is not None:
            figures.append(pods.added[f"floor-{name}/{name}"] - pods.deleted[f"floor-{previous}/{previous}"])
        previous = name
    pods.stop()
    return figures


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    return (f"n={len(ordered)} p50={statistics.median(ordered):.3f} p90={ordered[round(0.9 * (len(ordered) - 1))]:.3f}"
            f" max={ordered[-1]:.3f}")


def start_operator(team: str) -> subprocess.Popen[bytes]:
    log = Path(f"/tmp/stockade-bench-queue-{team}.log").open("wb")  # noqa: SIM115 (the child keeps it)
    return subprocess.Popen([sys.executable, "-m", "stockade.cli", "run", "--liveness", "http://127.0.0.1:0/healthz"],
                            env={**os.environ, "STOCKADE_METRICS_PORT": "0"}, stdout=log, stderr=subprocess.STDOUT)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--operator-pid", type=int, help="use an operator already running (else one is started)")
    args = parser.parse_args()
    kube = Kube.connect(workers=16)
    team = f"bench-q-{uuid.uuid4().hex[:5]}"
    policy = f"bench-{team}"
    await kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": team, "labels": {LABEL: team}}})
    await kube.call("POST", "/apis/stockade.io/v1alpha1/agentpolicies", {
        "apiVersion": "stockade.io/v1alpha1", "kind": "AgentPolicy", "metadata": {"name": policy},
        "spec": {"namespaceSelector": {"matchLabels": {LABEL: team}}, "budgets": {"perNamespace": {"runs": 1}}}})
    proc = start_operator(team) if args.operator_pid is None else None
    if proc is not None:
        await asyncio.sleep(4)
    try:
        floor = await floor_rounds(kube, args.rounds)
        to_pod, to_namespace, direct, queued = await stockade_rounds(kube, team, args.rounds)
        print(f"\ncapacity freed (last pod gone) -> next run's pod created, seconds, {time.strftime('%F %T')}")
        print(f"  floor (client reacting at once)       {summary(floor)}")
        print(f"  stockade: queued run's run namespace  {summary(to_namespace)}")
        print(f"  stockade: queued run's pod            {summary(to_pod)}")
        print("writes to the AgentRun (MODIFIED events) from creation to Running:")
        print(f"  admitted at once: {direct}   queued, then admitted: {sorted(set(queued))} (each round)")
    finally:
        for run in await kube.list_objects("stockade.io/v1alpha1", "AgentRun", team):
            await kube.delete("stockade.io/v1alpha1", "AgentRun", team, run["metadata"]["name"])
        await kube.call("DELETE", f"/apis/stockade.io/v1alpha1/agentpolicies/{policy}")
        await asyncio.sleep(3)
        for ns in await kube.list_objects("v1", "Namespace"):
            if ns["metadata"]["name"].startswith("floor-f") or ns["metadata"]["name"] == team:
                await kube.delete("v1", "Namespace", None, ns["metadata"]["name"])
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    asyncio.run(main())
