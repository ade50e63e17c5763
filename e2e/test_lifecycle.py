"""A run's namespace from start to end: one per AgentRun whatever its name, never someone else's, and never
outliving its AgentRun (issue 14, points 8 and 9)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import (
    BREAK_GLASS,
    Operator,
    agentrun,
    apply,
    get,
    kubectl,
    ready,
    simple_spec,
    wait_for,
)


def wait_ready(team: str, name: str, timeout: float = 60) -> dict[str, Any]:
    return wait_for(lambda: ready(team, name), timeout=timeout, what=f"AgentRun {team}/{name} to be Ready")


def spec() -> dict[str, Any]:
    return simple_spec(duration="4h")


def assert_fenced_run(team: str, name: str) -> str:
    """Ready, in a namespace of its own labelled with its uid, the workload and guardrails inside; returns it."""
    run = wait_ready(team, name)
    ns = run["status"]["runNamespace"]
    assert len(ns) <= 63
    namespace = get("namespace", ns)
    assert namespace["metadata"]["labels"]["stockade.io/agentrun-uid"] == run["metadata"]["uid"]
    assert namespace["metadata"]["labels"]["stockade.io/agentrun-namespace"] == team
    pods = get("pods", namespace=ns)["items"]
    assert [p["metadata"]["name"] for p in pods] == [name]
    assert pods[0]["status"]["phase"] == "Running"
    assert get("networkpolicy", "stockade-deny-all", ns) and get("resourcequota", "stockade-grant", ns)
    return str(ns)


@pytest.fixture
def namespaces() -> Iterator[list[str]]:
    """Team namespaces the test names itself (deleted afterwards)."""
    made: list[str] = []
    yield made
    for name in made:
        kubectl("delete", "agentruns", "--all", "-n", name, "--wait=false", check=False)
        kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_ambiguous_names_get_distinct_run_namespaces(operator: Operator, namespaces: list[str]) -> None:
    """``col-a``/``b-x`` and ``col``/``a-b-x`` both read ``col-a-b-x``: each gets a namespace of its own."""
    col = f"col{uuid.uuid4().hex[:5]}"
    namespaces += [f"{col}-a", col]
    for team in namespaces:
        kubectl("create", "namespace", team)
    apply(agentrun("b-x", f"{col}-a", spec()))
    apply(agentrun("a-b-x", col, spec()))
    first = assert_fenced_run(f"{col}-a", "b-x")
    second = assert_fenced_run(col, "a-b-x")
    assert first != second
    assert f"{col}-a-b-x" in (first, second), "one keeps the readable name"


@pytest.mark.parametrize("length", [64, 253])
def test_long_names_get_a_working_run(operator: Operator, team_namespace: str, length: int) -> None:
    name = ("a" * 20 + "." + "b" * 300)[:length - 1] + "z"  # a DNS subdomain of exactly that length
    assert len(name) == length
    apply(agentrun(name, team_namespace, spec()))
    ns = assert_fenced_run(team_namespace, name)
    run = get("agentrun", name, team_namespace)
    assert run["status"]["workload"] == f"pod/{name}"
    assert len(get("namespace", ns)["metadata"]["labels"]["stockade.io/agentrun"]) <= 63


def test_a_long_job_name_gets_a_working_run(operator: Operator, team_namespace: str) -> None:
    name = "job-" + "x" * 70
    job = spec()
    job["workload"] = "Job"
    job["template"]["spec"]["restartPolicy"] = "Never"
    apply(agentrun(name, team_namespace, job))
    run = wait_for(lambda: (r := get("agentrun", name, team_namespace)) and (r.get("status") or {}).get("workload")
                   and r, timeout=60, what="the Job workload")
    ns = run["status"]["runNamespace"]
    job_name = run["status"]["workload"].removeprefix("job/")
    assert len(job_name) <= 63 and get("job", job_name, ns)


def test_a_dotted_name_gets_a_working_run(operator: Operator, team_namespace: str) -> None:
    apply(agentrun("agent.v2", team_namespace, spec()))
    ns = assert_fenced_run(team_namespace, "agent.v2")
    assert "." not in ns


@pytest.mark.parametrize("forged", [False, True])
def test_a_squatter_does_not_block_the_victim(operator: Operator, team_namespace: str, forged: bool) -> None:
    """A namespace made first under the name the victim would get (plain, or with the victim's name labels
    forged) is neither adopted nor a blocker: the victim runs elsewhere, the squatter's namespace is untouched."""
    squat = f"{team_namespace}-victim"
    squatter: dict[str, Any] = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": squat}}
    if forged:
        squatter["metadata"]["labels"] = {"stockade.io/agentrun": "victim",
                                          "stockade.io/agentrun-namespace": team_namespace}
    kubectl("create", "-f", "-", stdin=json.dumps(squatter), as_user=BREAK_GLASS)
    try:
        before = get("namespace", squat)
        apply(agentrun("victim", team_namespace, spec()))
        ns = assert_fenced_run(team_namespace, "victim")
        assert ns != squat
        after = get("namespace", squat)
        assert after["metadata"]["uid"] == before["metadata"]["uid"]
        assert "stockade.io/agentrun-uid" not in (after["metadata"].get("labels") or {})
        assert get("networkpolicies", namespace=squat)["items"] == [] and get("pods", namespace=squat)["items"] == []
        kubectl("delete", "agentrun", "victim", "-n", team_namespace, "--wait=false")
        wait_for(lambda: get("namespace", ns) is None, timeout=60, what="the victim's own namespace to go")
        assert not get("namespace", squat)["metadata"].get("deletionTimestamp"), "the squatter's is left alone"
    finally:
        kubectl("delete", "namespace", squat, "--wait=false", as_user=BREAK_GLASS, check=False)


def run_namespaces_of(team: str) -> list[dict[str, Any]]:
    return list(get("namespaces", selector=f"stockade.io/agentrun-namespace={team}")["items"])


def test_runs_deleted_right_after_creation_leave_no_namespace(operator: Operator, team_namespace: str) -> None:
    """20 AgentRuns, each deleted 0.05-0.4 s after its create: no run namespace (nor agent) survives."""
    for i in range(20):
        apply(agentrun(f"brief-{i}", team_namespace, spec()))
        time.sleep(0.05 + 0.35 * (i % 8) / 7)
        kubectl("delete", "agentrun", f"brief-{i}", "-n", team_namespace, "--wait=false")
    wait_for(lambda: not get("agentruns", namespace=team_namespace)["items"], timeout=60,
             what="every AgentRun to be gone")
    wait_for(lambda: not run_namespaces_of(team_namespace), timeout=90, interval=0.5,
             what="no run namespace left (read by label)")


def test_an_orphan_made_while_the_operator_is_down_is_removed_at_start(operator: Operator,
                                                                       team_namespace: str) -> None:
    """The AgentRun vanishes while the operator is down (its finalizer removed by hand): the run namespace
    with its running agent is removed once the operator is back."""
    apply(agentrun("orphaned", team_namespace, spec()))
    ns = assert_fenced_run(team_namespace, "orphaned")
    operator.kill()
    try:
        kubectl("patch", "agentrun", "orphaned", "-n", team_namespace, "--type=json",
                "-p", '[{"op": "remove", "path": "/metadata/finalizers"}]', as_user=BREAK_GLASS)
        kubectl("delete", "agentrun", "orphaned", "-n", team_namespace, as_user=BREAK_GLASS)
        assert get("namespace", ns) and get("pod", "orphaned", ns), "left behind while the operator is down"
    finally:
        operator.start()
    wait_for(lambda: (n := get("namespace", ns)) is None or n["metadata"].get("deletionTimestamp"), timeout=60,
             what="the orphan run namespace to be deleted")
