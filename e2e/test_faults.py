"""Faults the operator must survive without a restart of its own: the API server and etcd crashing, the
operator SIGKILLed mid-churn, many guardrails deleted at once. Slow tests carry ``@pytest.mark.slow``;
`make test` runs them all (nothing deselects the marker)."""

from __future__ import annotations

import datetime
import os
import random
import re
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import (
    BREAK_GLASS,
    ROOT,
    KubectlError,
    Operator,
    agentrun,
    apply,
    get,
    kubectl,
    ready,
    simple_spec,
    wait_for,
)

pytestmark = pytest.mark.slow


def cluster_component(action: str, name: str) -> str:
    env = {**os.environ, "STOCKADE_CLUSTER_NAME": os.environ.get("STOCKADE_CLUSTER_NAME", "stockade")}
    done = subprocess.run([str(ROOT / "e2e/cluster.sh"), "component", action, name], check=True, env=env,
                          timeout=60, capture_output=True, text=True)
    return done.stderr


def revive() -> None:
    """Start again every control-plane process that has exited (any component name selects the cluster)."""
    said = cluster_component("revive", "kube-apiserver")
    if "started again" in said:
        print(f"\n{said.strip()}")  # shown with the test's output: which process had died


@pytest.fixture(autouse=True)
def _control_plane_whole() -> Iterator[None]:
    """A controller or the scheduler that loses its lease may exit seconds after the outage ended, later than
    the test's own revive: whatever is gone is started again before the next test (a kubelet's job)."""
    yield
    revive()


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


def api_answers() -> bool:
    try:
        kubectl("get", "--raw", "/readyz")
        kubectl("get", "namespaces", "-o", "name")  # etcd answers too
    except KubectlError:
        return False
    return True


def wait_ready(team: str, name: str, timeout: float = 60) -> dict[str, Any]:
    return wait_for(lambda: ready(team, name), timeout=timeout, what=f"AgentRun {team}/{name} to be Ready")


def run_namespace_of(team: str, name: str) -> str:
    return str(get("agentrun", name, team)["status"]["runNamespace"])


def restored(kind: str, name: str, namespace: str, old_uid: str) -> dict[str, Any] | None:
    found = get(kind, name, namespace)
    return found if found and found["metadata"]["uid"] != old_uid else None


def metric(operator: Operator, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    total = 0.0
    for line in operator.metrics().splitlines():
        match = re.match(rf"^{name}(?:{{(.*)}})? (\S+)$", line)
        if match and (not wanted or all(part in (match.group(1) or "") for part in wanted.split(","))):
            total += float(match.group(2))
    return total


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_drift_is_repaired_after_a_control_plane_restart(operator: Operator, team_namespace: str,
                                                         component: str) -> None:
    """The component hangs for 15 s (SIGSTOP: watches go silent) and is then killed and started again;
    a guardrail deleted afterwards comes back, and the operator process is the same one throughout."""
    apply(agentrun("steady", team_namespace, simple_spec(duration="4h")))
    wait_ready(team_namespace, "steady")
    ns = run_namespace_of(team_namespace, "steady")
    starts, pid = operator.starts, operator.proc.pid if operator.proc else None
    outage = now()
    cluster_component("pause", component)
    try:
        time.sleep(15)
    finally:
        cluster_component("restart", component)
    wait_for(api_answers, timeout=60, interval=0.5, what=f"the API to answer after {component} restarted")
    cluster_component("revive", component)  # a controller that lost its lease meanwhile (a kubelet's job)
    back = time.monotonic()
    took = []
    for kind, name in [("networkpolicy", "stockade-egress"), ("resourcequota", "stockade-grant")]:
        old = get(kind, name, ns)["metadata"]["uid"]
        kubectl("delete", kind, name, "-n", ns, as_user=BREAK_GLASS)
        deleted = time.monotonic()
        wait_for(lambda k=kind, n=name, u=old: restored(k, n, ns, u), timeout=60, interval=0.2,
                 what=f"{kind}/{name} to be restored after the {component} restart")
        took.append(f"{kind} {time.monotonic() - deleted:.1f} s")
    print(f"\n{component} paused 15 s and restarted: each guardrail deleted afterwards restored in {', '.join(took)} "
          f"({time.monotonic() - back:.1f} s from the API answering again to both restored)")
    # A restarted API server refuses everyone until its authorizer has synced: not the chart's RBAC.
    operator.excuse(outage, now())
    assert operator.starts == starts and operator.proc is not None and operator.proc.pid == pid
    assert operator.proc.poll() is None, "the operator kept running"
    # New runs still get their fence too (reviving meanwhile: the scheduler or kwok's controller may exit
    # late, once its lease renewal finally times out, and a pod then never runs; not the operator's doing).
    apply(agentrun("after", team_namespace, simple_spec(duration="4h")))
    def revived_and_ready() -> dict[str, Any] | None:
        revive()
        return ready(team_namespace, "after")

    wait_for(revived_and_ready, timeout=90, interval=1,
             what=f"AgentRun {team_namespace}/after to be Ready")


def _fence_counts(ns: str) -> tuple[int, int, int, int]:
    """(pods, network policies, quotas, agent service accounts) in a run namespace."""
    return (len(get("pods", namespace=ns)["items"]), len(get("networkpolicies", namespace=ns)["items"]),
            len(get("resourcequotas", namespace=ns)["items"]),
            len(get("serviceaccounts", namespace=ns, selector="stockade.io/agentrun")["items"]))


def run_namespaces_of(team: str) -> list[dict[str, Any]]:
    return list(get("namespaces", selector=f"stockade.io/agentrun-namespace={team}")["items"])


def test_sigkill_during_churn_converges(operator: Operator, team_namespace: str) -> None:
    """60 runs created and 20 of them deleted in a random order while the operator is SIGKILLed at three
    random moments: afterwards every remaining run has exactly one pod and its guardrails, and no run
    namespace is left for a deleted run."""
    rng = random.Random(14)
    names = [f"churn-{i}" for i in range(60)]
    doomed = set(rng.sample(names, 20))
    kills = sorted(rng.sample(range(10, 80), 3))
    steps: list[tuple[str, str]] = [("create", n) for n in names]
    for name in doomed:  # each deletion somewhere after its creation
        steps.insert(rng.randint(steps.index(("create", name)) + 1, len(steps)), ("delete", name))
    killed_at: list[float] = []
    started = time.monotonic()
    for index, (action, name) in enumerate(steps):
        if index in kills:
            operator.kill()
            killed_at.append(time.monotonic() - started)
            time.sleep(rng.uniform(0.0, 1.0))
            operator.start()
        # Admission fails closed while the operator is down: a client retries, as kubectl users and GitOps do.
        if action == "create":
            wait_for(lambda n=name: apply(agentrun(n, team_namespace, simple_spec(duration="4h", dns=True))) or True,
                     timeout=60, interval=0.2, what=f"{name} to be accepted")
        else:
            wait_for(lambda n=name: kubectl("delete", "agentrun", n, "-n", team_namespace, "--wait=false") or True,
                     timeout=60, interval=0.2, what=f"{name}'s deletion to be accepted")
        time.sleep(rng.uniform(0.0, 0.15))
    churned = time.monotonic()
    survivors = [n for n in names if n not in doomed]
    for name in survivors:
        try:
            wait_ready(team_namespace, name, timeout=120)
        except AssertionError as err:
            stuck = get("agentrun", name, team_namespace) or {}
            raise AssertionError(f"{err}\nmetadata: {stuck.get('metadata')}\nstatus: {stuck.get('status')}\n"
                                 f"operator log:\n{operator.log_tail(40)}") from None
    converged = time.monotonic()
    for name in survivors:
        assert _fence_counts(run_namespace_of(team_namespace, name)) == (1, 3, 1, 1), name
    for name in doomed:
        wait_for(lambda n=name: get("agentrun", n, team_namespace) is None, timeout=120, what=f"{name} gone")
    owners = {n: get("agentrun", n, team_namespace)["metadata"]["uid"] for n in survivors}

    def only_survivors_namespaces() -> bool:
        live = [ns for ns in run_namespaces_of(team_namespace) if not ns["metadata"].get("deletionTimestamp")]
        uids = sorted(ns["metadata"]["labels"].get("stockade.io/agentrun-uid", "") for ns in live)
        return uids == sorted(owners.values())

    wait_for(only_survivors_namespaces, timeout=180, interval=1, what="no run namespace of a deleted run")
    print(f"\nchurn: kills at {[round(t, 1) for t in killed_at]} s; all {len(survivors)} survivors Ready "
          f"{converged - churned:.1f} s after the churn; orphans gone {time.monotonic() - churned:.1f} s after it")


def test_hundred_guardrails_deleted_at_once_are_all_restored_and_reported(operator: Operator,
                                                                         team_namespace: str) -> None:
    names = [f"mass-{i}" for i in range(50)]
    apply([agentrun(n, team_namespace, simple_spec(duration="4h")) for n in names])
    for name in names:
        wait_ready(team_namespace, name, timeout=120)
    namespaces = [run_namespace_of(team_namespace, n) for n in names]
    doomed = [(ns, policy) for ns in namespaces for policy in ("stockade-egress", "stockade-deny-all")]
    uids = {(ns, p): get("networkpolicy", p, ns)["metadata"]["uid"] for ns, p in doomed}
    drift_before = metric(operator, "stockade_drift_repaired_total", kind="NetworkPolicy")
    log_before = len(operator.logs())
    # All 100 at once: one kubectl per run namespace, in parallel.
    procs = [subprocess.Popen([str(os.environ.get("STOCKADE_BIN", "")) + "/kubectl", "--kubeconfig",
                               os.environ["KUBECONFIG"], "delete", "networkpolicy", "stockade-egress",
                               "stockade-deny-all", "-n", ns, "--wait=false", "--as", BREAK_GLASS,
                               "--as-group", "stockade:e2e-break-glass", "--as-group", "system:masters"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for ns in namespaces]
    for proc in procs:
        assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    deleted = time.monotonic()
    for ns, policy in doomed:
        wait_for(lambda n=ns, p=policy: restored("networkpolicy", p, n, uids[(n, p)]), timeout=60,
                 what=f"{ns}/{policy} to be restored")
    restored_in = time.monotonic() - deleted
    wait_for(lambda: metric(operator, "stockade_drift_repaired_total", kind="NetworkPolicy") - drift_before >= 100,
             timeout=30, what="100 restorations counted")
    assert metric(operator, "stockade_drift_repaired_total", kind="NetworkPolicy") - drift_before == 100
    lines = [line for line in operator.logs()[log_before:] if "restoring missing NetworkPolicy" in line]
    assert len(lines) == 100, f"{len(lines)} log lines for 100 restorations"

    def warnings() -> int:
        events = get("events", namespace=team_namespace)["items"]
        return sum(e.get("count") or 1 for e in events if e["reason"] == "GuardrailRestored" and
                   e["type"] == "Warning" and e["involvedObject"]["name"].startswith("mass-"))

    wait_for(lambda: warnings() >= 100, timeout=60, what="100 Warning Events")
    assert warnings() == 100
    print(f"\n100 guardrails restored within {restored_in:.1f} s; metric +100, 100 log lines, 100 Warning Events")
