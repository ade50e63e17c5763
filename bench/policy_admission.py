"""The AgentRun policy check in-handler, beside the existing allowlist webhook's check of a pod.

    .venv/bin/python bench/policy_admission.py [--runs 1000] [--policies 20] [--requests 5000]

No cluster: it builds what the watches would have stored (``--runs`` AgentRuns, each with a run
namespace and a pod; ``--policies`` AgentPolicies selecting team namespaces by labels; the namespaces)
and times, request by request, what the webhook does in its handler besides SubjectAccessReviews:

* policy: ``grantpolicy.admit.decide`` for an AgentRun CREATE whose grant has no API rules (so no
  SubjectAccessReview), in a team namespace several policies select: selection, every ceiling, egress.
* child: the same for a child run created in a run namespace (delegation: siblings and pods counted).
* defaults: ``grantpolicy.admit.default_ops`` (the mutating webhook's work).
* floor: ``admission.policy.decide`` for a pod CREATE in a run namespace, the allowlist webhook's
  in-handler decision, on the same machine in the same process.

Prints p50 / p99 in microseconds, wall clock and the thread's CPU time (the machine's other load shows
in the first, not the second). Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))

from stockade import labels  # noqa: E402
from stockade.admission import policy as allowlist  # noqa: E402
from stockade.api.models import AgentRunSpec  # noqa: E402
from stockade.grantcheck import Usage  # noqa: E402
from stockade.grantpolicy import admit  # noqa: E402
from stockade.grantpolicy.index import PolicyIndex  # noqa: E402
from stockade.store import Store  # noqa: E402

GRANT: dict[str, Any] = {
    "cpu": "4", "memory": "16Gi", "gpu": 1, "gpuResource": "nvidia.com/gpu", "ephemeralStorage": "20Gi", "pods": 2,
    "egress": [{"cidr": "10.42.0.0/16", "ports": [443]}, {"host": "api.example.com", "ports": [443]}],
    "dns": True, "duration": "4h",
}
TEMPLATE = {"spec": {"containers": [{"name": "agent", "image": "registry.example/agent:1",
                                     "resources": {"limits": {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "1"}}}]}}


def _policy(index: int) -> dict[str, Any]:
    return {"metadata": {"name": f"policy-{index:02d}", "resourceVersion": "1"}, "spec": {
        "namespaceSelector": {"matchExpressions": [
            {"key": "team", "operator": "In", "values": [f"team-{index % 5}", "shared"]},
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]}]},
        "ceilings": {"cpu": "16", "memory": "64Gi", "ephemeralStorage": "100Gi", "pods": 8,
                     "gpus": {"nvidia.com/gpu": 2, "nvidia.com/mig-1g.10gb": 4}, "maxDuration": "24h",
                     "requiredResponse": ["isolate"]},
        "egress": {"cidrs": ["10.0.0.0/8", "192.168.0.0/16", "fd00::/8"], "hosts": ["*.example.com"],
                   "ports": [443, 8443], "dns": True},
    }}


def _world(runs: int, policies: int) -> tuple[PolicyIndex, Store, str, str]:
    index, store = PolicyIndex(), Store()
    for i in range(policies):
        index.put_policy(_policy(i))
    for team in range(10):
        index.put_namespace({"metadata": {"name": f"team-{team}", "labels": {
            "team": f"team-{team % 5}", "kubernetes.io/metadata.name": f"team-{team}"}}})
    parent_ns = ""
    for i in range(runs):
        team, name = f"team-{i % 10}", f"run-{i}"
        run_ns = f"{team}-{name}"
        grant = {**GRANT, "delegation": True, "cpu": "16", "memory": "64Gi", "pods": 8, "gpu": 2}
        store.put_agentrun({"kind": "AgentRun", "metadata": {"namespace": team, "name": name, "uid": f"u{i}",
                                                             "resourceVersion": str(i + 1)},
                            "spec": {"template": TEMPLATE, "grant": grant},
                            "status": {"phase": "Running", "runNamespace": run_ns,
                                       "expiresAt": "2099-01-01T00:00:00Z"}})
        namespace = {"kind": "Namespace", "metadata": {"name": run_ns, "resourceVersion": "1", "labels": {
            labels.AGENTRUN: name, labels.AGENTRUN_NAMESPACE: team}}}
        store.put(namespace)
        index.put_namespace(namespace)
        store.put({"kind": "Pod", "metadata": {"namespace": run_ns, "name": name, "resourceVersion": "1"},
                   "spec": copy.deepcopy(TEMPLATE["spec"]), "status": {"phase": "Running"}})
        parent_ns = parent_ns or run_ns
    return index, store, "team-0", parent_ns


def _time(fn: Callable[[], Any], requests: int) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU (this thread's) microseconds per call: on a shared machine the wall clock's tail
    is mostly time spent preempted, which the CPU time leaves out."""
    for _ in range(min(200, requests)):
        fn()  # warm caches (the policy index caches each namespace's policies until something changes)
    wall, cpu = [], []
    for _ in range(requests):
        started, started_cpu = time.perf_counter(), time.thread_time()
        fn()
        cpu.append((time.thread_time() - started_cpu) * 1e6)
        wall.append((time.perf_counter() - started) * 1e6)
    return wall, cpu


def _quantiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _row(name: str, samples: tuple[list[float], list[float]]) -> str:
    (w50, w99), (c50, c99) = _quantiles(samples[0]), _quantiles(samples[1])
    return f"{name:<10} {w50:>9.1f} {w99:>9.1f} {c50:>9.1f} {c99:>9.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--policies", type=int, default=20)
    parser.add_argument("--requests", type=int, default=5000)
    args = parser.parse_args()
    index, store, team, run_ns = _world(args.runs, args.policies)
    now = datetime.datetime.now(datetime.UTC)
    spec = {"template": TEMPLATE, "grant": GRANT}
    top = {"apiVersion": "stockade.io/v1alpha1", "kind": "AgentRun",
           "metadata": {"namespace": team, "name": "new-run"}, "spec": spec}
    child = {**top, "metadata": {"namespace": run_ns, "name": "child"},
             "spec": {**spec, "grant": {**GRANT, "cpu": "1", "memory": "1Gi", "gpu": 0, "pods": 1,
                                        "duration": "1h", "ephemeralStorage": "1Gi"}}}
    req = admit.AgentRunRequest("CREATE", team, "new-run", top, None, "alice")
    child_req = admit.AgentRunRequest("CREATE", run_ns, "child", child, None, f"system:serviceaccount:{run_ns}:agent")
    verdict = admit.decide(req, index=index, store=store, now=now)
    child_verdict = admit.decide(child_req, index=index, store=store, now=now)
    assert verdict.allowed and child_verdict.allowed, ([f.text() for f in verdict.findings],
                                                       [f.text() for f in child_verdict.findings])
    parent_key = store.run_of_namespace(run_ns)
    assert parent_key is not None
    run = allowlist.Run(namespace=parent_key[0], name=parent_key[1],
                        spec=AgentRunSpec.model_validate(store.agentruns[parent_key]["spec"]), status={},
                        usage=Usage())
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": run_ns, "name": "p"},
           "spec": copy.deepcopy(TEMPLATE["spec"])}
    pod_req = allowlist.Request(operation="CREATE", group="", resource="pods", kind="Pod", namespace=run_ns, name="p",
                                obj=pod, old=None, username=f"system:serviceaccount:{run_ns}:agent")
    assert allowlist.decide(pod_req, run, is_operator=False).allowed
    print(f"{args.runs} runs, {args.policies} policies ({len(verdict.policies)} select the namespace), "
          f"{args.requests} requests each; microseconds in-handler")
    print(f"{'check':<10} {'wall p50':>9} {'wall p99':>9} {'cpu p50':>9} {'cpu p99':>9}")
    print(_row("policy", _time(lambda: admit.decide(req, index=index, store=store, now=now), args.requests)))
    print(_row("child", _time(lambda: admit.decide(child_req, index=index, store=store, now=now), args.requests)))
    print(_row("defaults", _time(lambda: admit.default_ops(req, index=index, store=store), args.requests)))
    print(_row("floor", _time(lambda: allowlist.decide(pod_req, run, is_operator=False), args.requests)))


if __name__ == "__main__":
    main()
