"""Budgets and team quotas end to end: runs beyond a budget wait Queued, get no namespace and no pod, and start
by themselves in creation order as capacity frees; a team's ResourceQuota counts its runs; a policy narrowed
under a running run is reported (and, with onNarrowed: Stop, ends it).

Each test makes its own AgentPolicy selecting only its team namespace by a label. The chart's default policy
selects every namespace too; all selecting policies apply, so the test's budget is the binding one.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config, watch

from .conftest import (
    KUBECONFIG,
    Operator,
    agentrun,
    apply,
    condition,
    get,
    gpu_spec,
    kubectl,
    simple_spec,
    wait_for,
)
from .test_cli import status_json

BUDGET_LABEL = "stockade-e2e/budget"


class PodWatch:
    """Every pod event of one team's runs, from a real watch on the API server (no polling gaps): how many
    runs have a live pod (not Succeeded or Failed; a terminating pod still counts) at each moment."""

    def __init__(self, team: str) -> None:
        self.team = team
        self.live: dict[str, str] = {}  # pod uid -> run namespace
        self.most = 0
        self.added: dict[str, float] = {}  # run namespace -> when its first pod appeared (monotonic)
        self.gone: dict[str, float] = {}  # run namespace -> when its last live pod went
        self.events = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(30), "the pod watch did not start"

    def _run(self) -> None:
        try:
            api = client.CoreV1Api(config.new_client_from_config(config_file=KUBECONFIG))  # type: ignore[no-untyped-call]
            selector = f"stockade.io/agentrun-namespace={self.team}"
            listed = api.list_pod_for_all_namespaces(label_selector=selector)
            for pod in listed.items:
                self._see("ADDED", pod)
            version = listed.metadata.resource_version if listed.metadata else None
            self._ready.set()
            while not self._stop.is_set():
                stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
                    api.list_pod_for_all_namespaces, label_selector=selector, resource_version=version,
                    timeout_seconds=5)
                for event in stream:
                    self._see(event["type"], event["object"])
                    version = event["object"].metadata.resource_version
                    if self._stop.is_set():
                        break
        except BaseException as err:  # reported by check()
            self.error = err
            self._ready.set()

    def _see(self, kind: str, pod: Any) -> None:
        self.events += 1
        uid, namespace = pod.metadata.uid, pod.metadata.namespace
        alive = kind != "DELETED" and (pod.status.phase if pod.status else None) not in ("Succeeded", "Failed")
        now = time.monotonic()
        if alive:
            if uid not in self.live:
                self.added.setdefault(namespace, now)
            self.live[uid] = namespace
        elif self.live.pop(uid, None) is not None and namespace not in self.live.values():
            self.gone[namespace] = now
        self.most = max(self.most, len(set(self.live.values())))

    def runs_with_pods(self) -> int:
        return len(set(self.live.values()))

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"the pod watch failed: {self.error!r}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


@pytest.fixture
def budget_namespace(team_namespace: str) -> Iterator[str]:
    """The team namespace with a label that the test's own AgentPolicy selects; the policy goes afterwards."""
    kubectl("label", "namespace", team_namespace, f"{BUDGET_LABEL}={team_namespace}")
    yield team_namespace
    kubectl("delete", "agentpolicy", "-l", f"{BUDGET_LABEL}={team_namespace}", "--wait=false", check=False)


def policy(team: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "stockade.io/v1alpha1", "kind": "AgentPolicy",
            "metadata": {"name": f"e2e-{team}", "labels": {BUDGET_LABEL: team}},
            "spec": {"namespaceSelector": {"matchLabels": {BUDGET_LABEL: team}}, **spec}}


def runs_of(team: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get("agentruns", namespace=team)["items"]
    return sorted(items, key=lambda r: (r["metadata"]["creationTimestamp"], r["metadata"]["uid"]))


def run_where(team: str, name: str, check: Any) -> dict[str, Any] | None:
    found: dict[str, Any] | None = get("agentrun", name, team)
    return found if found and check(found) else None


def phase(run: dict[str, Any]) -> str | None:
    return (run.get("status") or {}).get("phase")


def running(team: str) -> set[str]:
    """Runs Running and not being deleted (a deleted run keeps its last phase while its namespace goes)."""
    return {r["metadata"]["name"] for r in runs_of(team)
            if phase(r) == "Running" and not r["metadata"].get("deletionTimestamp")}


def queued(run: dict[str, Any], reason: str) -> bool:
    admitted = condition(run, "Admitted")
    return phase(run) == "Queued" and admitted.get("status") == "False" and admitted.get("reason") == reason


def events(team: str, name: str) -> list[dict[str, Any]]:
    found = get("events", namespace=team)["items"]
    return [e for e in found if e["involvedObject"].get("name") == name and e["involvedObject"]["kind"] == "AgentRun"]


def run_pods(team: str) -> dict[str, list[str]]:
    pods = json.loads(kubectl("get", "pods", "-A", "-l", f"stockade.io/agentrun-namespace={team}", "-o", "json"))
    found: dict[str, list[str]] = {}
    for pod in pods["items"]:
        found.setdefault(pod["metadata"]["labels"]["stockade.io/agentrun"], []).append(pod["metadata"]["name"])
    return found


def short_spec() -> dict[str, Any]:
    spec = simple_spec(cpu="1", memory="1Gi", duration="1h")
    spec["template"]["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "500m", "memory": "256Mi"}}
    return spec


def test_twenty_runs_against_a_budget_of_five_wait_and_start_in_creation_order(
        operator: Operator, budget_namespace: str) -> None:
    team = budget_namespace
    apply(policy(team, budgets={"perNamespace": {"runs": 5}}))
    pods = PodWatch(team)
    try:
        names = [f"r{i:02d}" for i in range(20)]
        kubectl("create", "-f", "-", stdin=json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": [agentrun(n, team, short_spec()) for n in names]}))

        def settled() -> list[dict[str, Any]] | None:
            found = runs_of(team)
            running = [r for r in found if phase(r) == "Running"]
            waiting = [r for r in found if queued(r, "BudgetExhausted")]
            return found if len(running) == 5 and len(waiting) == 15 else None

        found = {r["metadata"]["name"]: r for r in wait_for(settled, timeout=90, interval=0.5,
                                                           what="5 runs Running and 15 Queued")}
        # kubectl creates a List's items one after the other: names order is creation order (creationTimestamp
        # has whole seconds, so it only confirms it).
        order = names
        stamps = [found[n]["metadata"]["creationTimestamp"] for n in order]
        assert stamps == sorted(stamps)
        assert sorted(n for n in order if phase(found[n]) == "Running") == order[:5]
        first_waiting = found[order[5]]
        assert condition(first_waiting, "Admitted")["message"] == \
            f"runs: used 5 + asked 1 > limit 5 (AgentPolicy e2e-{team}, budgets.perNamespace for {team})"
        assert not first_waiting["status"].get("runNamespace")
        assert set(run_pods(team)) == set(order[:5]), "only admitted runs have pods"
        assert get("namespace", f"{team}-{order[5]}") is None, "a queued run gets no run namespace"
        assert [e["reason"] for e in events(team, order[5]) if e["reason"] == "Queued"] == ["Queued"]
        assert "Admitted" in [e["reason"] for e in events(team, order[0])]
        status = wait_for(lambda: (get("agentpolicy", f"e2e-{team}").get("status") or {}).get("usage"), timeout=10,
                          what="the policy's usage in its status")
        assert status["runs"] == "5", status  # the test's budget is perNamespace; status.usage shows the total
        report = status_json(order[5], team)
        assert report["phase"] == "Queued" and f"e2e-{team}" in [p["name"] for p in report["policies"]]
        metrics = operator.metrics()
        assert "stockade_queued_agentruns 15.0" in metrics
        assert f'stockade_policy_budget_used{{policy="e2e-{team}",resource="runs"}} 5.0' in metrics
        columns = kubectl("get", "agentpolicy", f"e2e-{team}", "--no-headers", "-o",
                          "custom-columns=RUNS:.status.usage.runs,NS:.status.selectedNamespaces,"
                          "READY:.status.conditions[0].status").split()
        assert columns == ["5", "1", "True"], columns

        # Capacity frees one run at a time: the next in creation order starts, nobody else.
        delays = []
        for step in range(5):
            victim = order[step]
            kubectl("delete", "agentrun", victim, "-n", team, "--wait=false")
            nxt = order[5 + step]
            wait_for(lambda n=nxt: phase(get("agentrun", n, team)) == "Running", timeout=60,  # type: ignore[misc]
                     what=f"{nxt} to start after {victim} was deleted")
            now = running(team)
            assert now == set(order[step + 1:step + 6]), f"after deleting {victim}: {sorted(now)}"
            freed, started = pods.gone.get(f"{team}-{victim}"), pods.added.get(f"{team}-{nxt}")
            if freed is not None and started is not None:
                delays.append(started - freed)
        # The rest at once: whatever the order of their deletion, five run at most, in creation order.
        kubectl("delete", "agentrun", *order[5:10], "-n", team, "--wait=false")
        wait_for(lambda: running(team) == set(order[10:15]), timeout=90, what="runs 10-14 to be the Running ones")
        pods.check()
        assert pods.most <= 5, f"{pods.most} runs had pods at one moment against a budget of 5"
        # A raised budget starts the next ones in order by itself.
        apply(policy(team, budgets={"perNamespace": {"runs": 7}}))
        wait_for(lambda: running(team) == set(order[10:17]), timeout=60, what="runs 10-16 after the budget rose to 7")
        pods.check()
        assert pods.most <= 7, f"{pods.most} runs had pods at one moment against a budget of 7"
        assert pods.events > 0
        assert "stockade_queued_seconds_count" in operator.metrics()
        print(f"\nqueued run's pod created after the freed run's last pod went: {[round(d, 3) for d in delays]} s")
    finally:
        pods.stop()


def quota(team: str, **hard: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "team-quota", "namespace": team},
            "spec": {"hard": hard}}


def team_gpu_pod(team: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "notebook", "namespace": team},
            "spec": {"containers": [{"name": "c", "image": "registry.example/notebook:1",
                                     "resources": {"limits": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"}}}],
                     "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}}


def test_team_quota_counts_team_pods_and_runs(operator: Operator, budget_namespace: str) -> None:
    team = budget_namespace
    apply(policy(team))
    apply(quota(team, **{"requests.nvidia.com/gpu": "1"}))
    apply(team_gpu_pod(team))
    wait_for(lambda: ((get("resourcequota", "team-quota", team).get("status") or {}).get("used") or {})
             .get("requests.nvidia.com/gpu") == "1", timeout=40, what="the team quota to count the team's own pod")
    pods = PodWatch(team)
    try:
        # The first escape: a 4-GPU run against a team quota of one GPU waits, and never gets a pod.
        big = gpu_spec(duration="1h")
        big["grant"]["gpu"] = 4
        apply(agentrun("big", team, big))
        run = wait_for(lambda: run_where(team, "big", lambda r: queued(r, "TeamQuotaExceeded")), timeout=30,
                       what="the 4-GPU run Queued on the team quota")
        assert condition(run, "Admitted")["message"] == (
            f"requests.nvidia.com/gpu: used 1 + asked 4 > limit 1 (ResourceQuota {team}/team-quota); "
            "it cannot fit until the limit is raised")
        apply(agentrun("gpu-a", team, gpu_spec(duration="1h")))
        run = wait_for(lambda: run_where(team, "gpu-a", lambda r: queued(r, "TeamQuotaExceeded")), timeout=30,
                       what="gpu-a Queued on the team quota")
        assert condition(run, "Admitted")["message"] == \
            f"requests.nvidia.com/gpu: used 1 + asked 1 > limit 1 (ResourceQuota {team}/team-quota)"
        time.sleep(2)  # nothing is built for it meanwhile
        assert get("namespace", f"{team}-gpu-a") is None and pods.most == 0

        kubectl("delete", "pod", "notebook", "-n", team, "--grace-period=0", "--force")
        wait_for(lambda: phase(get("agentrun", "gpu-a", team)) == "Running", timeout=60,
                 what="gpu-a to start once the team's pod is gone")
        assert condition(get("agentrun", "gpu-a", team), "Admitted")["status"] == "True"

        apply(agentrun("gpu-b", team, gpu_spec(duration="1h")))
        wait_for(lambda: queued(get("agentrun", "gpu-b", team), "TeamQuotaExceeded"), timeout=30,
                 what="gpu-b Queued: gpu-a holds the team's one GPU")
        kubectl("delete", "agentrun", "gpu-a", "-n", team, "--wait=false")
        wait_for(lambda: phase(get("agentrun", "gpu-b", team)) == "Running", timeout=60,
                 what="gpu-b to start once gpu-a is gone")
        pods.check()
        assert pods.most <= 1, f"{pods.most} runs held GPUs at once against a quota of 1"
        # The run that can never fit held nobody up (gpu-a and gpu-b came after it) and never got anything.
        assert queued(get("agentrun", "big", team), "TeamQuotaExceeded")
        assert f"{team}-big" not in pods.added and get("namespace", f"{team}-big") is None
    finally:
        pods.stop()


def test_a_policy_narrowed_under_a_running_run_is_reported_then_stops_it(
        operator: Operator, budget_namespace: str) -> None:
    team = budget_namespace
    apply(policy(team, ceilings={"cpu": "4"}))
    apply(agentrun("wide", team, short_spec()))
    wait_for(lambda: phase(get("agentrun", "wide", team)) == "Running", timeout=30, what="the run to start")

    apply(policy(team, ceilings={"cpu": "500m"}))
    run = wait_for(lambda: run_where(team, "wide", lambda r: condition(r, "PolicyCompliant").get("status") == "False"),
                   timeout=30, what="PolicyCompliant=False")
    compliant = condition(run, "PolicyCompliant")
    assert compliant["reason"] == "NarrowedBelowGrant"
    assert "spec.grant.cpu" in compliant["message"] and f"AgentPolicy e2e-{team}" in compliant["message"]
    assert "500m" in compliant["message"]
    assert phase(run) == "Running", "onNarrowed: Continue keeps it running"
    assert "NarrowedBelowGrant" in [e["reason"] for e in events(team, "wide")]

    apply(policy(team, ceilings={"cpu": "500m"}, onNarrowed="Stop"))
    run = wait_for(lambda: run_where(team, "wide", lambda r: phase(r) == "Failed"), timeout=30,
                   what="the run to be stopped")
    assert condition(run, "Ready")["reason"] == "NarrowedBelowGrant"
    assert "onNarrowed: Stop" in condition(run, "Ready")["message"]
    wait_for(lambda: not run_pods(team), timeout=30, what="the stopped run's pod to go")

