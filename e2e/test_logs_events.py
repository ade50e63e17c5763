"""Logs and Events a security team can use, read from the operator's real JSON log and the API server.

The module runs its own operator (the chart's identity and settings, `stockade run --json` as the chart
starts it) so that its log holds this module's lines only: a refused object, a Falco signal's violation
and every rung of the ladder it starts, the release, a guardrail restored, a completed fence; each a line
with its level, its logger and the structured fields (stockade/audit.py). Over the whole module no line is
an ERROR, none is an access line of the liveness endpoint, and a run deleted with its namespace logs no
"being terminated" warning. Every Event on an AgentRun comes from component `stockade`, and FenceComplete
is posted once per generation.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .conftest import (
    BREAK_GLASS,
    KubectlError,
    Operator,
    agentrun,
    apply,
    get,
    kubectl,
    operator_instead,
    ready,
    simple_spec,
    wait_for,
)
from .detect_support import Signals, falco_event, releaser_bound

ID = re.compile(r"^[0-9a-f]{12}$")
RELEASER = "e2e-log-reviewer"
EGRESS = [{"cidr": "10.42.0.0/16", "ports": [443]}]
PODS = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "create"]}]


@pytest.fixture(scope="module")
def logged(operator: Operator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    with operator_instead(operator, tmp_path_factory.mktemp("logged-operator")) as mine:
        yield mine


@pytest.fixture(scope="module")
def releaser() -> Iterator[str]:
    with releaser_bound(RELEASER, "e2e-log-releaser") as user:
        yield user


def records(op: Operator) -> list[dict[str, Any]]:
    """Every line of the operator's log, parsed; a line that is not JSON (a raw traceback) is kept as such."""
    found: list[dict[str, Any]] = []
    for line in op.logs():
        if not line.strip():
            continue
        try:
            found.append(json.loads(line))
        except ValueError:
            found.append({"severity": "not-json", "message": line})
    return found


def line_with(op: Operator, what: str, timeout: float = 20, **fields: Any) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        return next((r for r in records(op) if all(r.get(k) == v for k, v in fields.items())), None)

    return wait_for(check, timeout=timeout, what=f"a log line for {what} with {fields}")


def assert_no_errors(op: Operator) -> None:
    bad = [r for r in records(op) if r.get("severity") in ("error", "fatal", "not-json")]
    assert not bad, "error lines in the operator's log:\n" + "\n".join(json.dumps(r)[:600] for r in bad[:10])


def assert_run_fields(line: dict[str, Any], team: str, name: str, level: str, logger: str | None = None) -> None:
    assert line["severity"] == level, line
    assert line["logger"].startswith("stockade.") and (logger is None or line["logger"] == logger), line
    assert (line["agentrun_namespace"], line["agentrun_name"], line["run_namespace"]) == (team, name, f"{team}-{name}")


def start(team: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    apply(agentrun(name, team, spec))
    return wait_for(lambda: ready(team, name), timeout=30, what=f"AgentRun {team}/{name} to be Ready")


def run_events(team: str, name: str) -> list[dict[str, Any]]:
    return [e for e in get("events", namespace=team)["items"]
            if e["involvedObject"].get("kind") == "AgentRun" and e["involvedObject"]["name"] == name]


def ssh_event(ns: str, pod: str) -> dict[str, Any]:
    return falco_event("Disallowed SSH Connection Non Standard Port", ns, pod, **{
        "fd.name": "10.0.0.9:40112->198.51.100.7:443", "fd.lport": 40112, "fd.rport": 443, "fd.type": "ipv4",
        "fd.l4proto": "tcp", "evt.type": "connect", "proc.name": "ssh", "proc.cmdline": "ssh -p 443 t@198.51.100.7"})


def test_a_refused_object_is_a_violation_line_with_its_fields(logged: Operator, team_namespace: str) -> None:
    start(team_namespace, "refuser", simple_spec(kubernetesAPI=PODS))
    ns, marker = f"{team_namespace}-refuser", f"gpu-{uuid.uuid4().hex[:6]}"
    # A pod PodSecurity lets through (restricted), with a GPU the grant does not hold: Stockade's webhook refuses it.
    container = {"name": "c", "image": "registry.example/a:1",
                 "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                 "resources": {"limits": {"cpu": "100m", "memory": "64Mi", "nvidia.com/gpu": "1"}}}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": marker, "namespace": ns},
           "spec": {"serviceAccountName": "agent", "restartPolicy": "Never", "containers": [container],
                    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}}}
    with pytest.raises(KubectlError, match=re.escape('admission webhook "allowlist.stockade.io" denied the request')):
        kubectl("create", "-f", "-", stdin=json.dumps(pod), as_user=f"system:serviceaccount:{ns}:agent")

    line = line_with(logged, "the refusal", pod=marker, action="denied")
    assert_run_fields(line, team_namespace, "refuser", "warn")
    assert (line["kind"], line["source"]) == ("GPUNotGranted", "admission")
    assert line["user"] == f"system:serviceaccount:{ns}:agent" and ID.match(line["incident_id"])
    assert_no_errors(logged)


def test_a_signal_its_rungs_and_the_release_are_lines_with_fields(logged: Operator, team_namespace: str,
                                                                 releaser: str) -> None:
    spec = simple_spec(egress=EGRESS, kubernetesAPI=PODS)
    spec.update(response=["isolate", "freeze", "evict"], enforcement="enforce")
    start(team_namespace, "tunnel", spec)
    ns = f"{team_namespace}-tunnel"
    client = Signals(int(logged.env["STOCKADE_SIGNAL_PORT"]), logged.env["STOCKADE_SIGNAL_TOKEN"])
    status, answer = client.post("/falco", ssh_event(ns, "tunnel"))
    assert status == 202, answer

    violation = line_with(logged, "the violation", agentrun_name="tunnel", action="violation")
    assert_run_fields(violation, team_namespace, "tunnel", "warn", "stockade.respond")
    assert (violation["pod"], violation["kind"], violation["source"]) == ("tunnel", "SSHConnection", "runtime")
    assert violation["violation_severity"] and ID.match(violation["incident_id"])
    incident = violation["incident_id"]
    quarantine: set[str] = set()
    for step, pod in (("isolate", "tunnel"), ("freeze", None), ("evict", "tunnel")):
        rung = line_with(logged, f"the {step} rung", agentrun_name="tunnel", action=step)
        assert_run_fields(rung, team_namespace, "tunnel", "warn", "stockade.respond")
        assert rung.get("pod") == pod and (rung["kind"], rung["source"]) == ("SSHConnection", "runtime"), rung
        assert rung["incident_id"] == incident, "the rung names the violation that started it"
        quarantine.add(rung["quarantine_id"])
    [qid] = quarantine
    assert ID.match(qid)

    wait_for(lambda: (get("agentrun", "tunnel", team_namespace)["status"].get("quarantine") or {}).get("active"),
             timeout=20, what="the quarantine on record")
    kubectl("annotate", "agentrun", "tunnel", "-n", team_namespace, "stockade.io/release=reviewed",
            as_user=releaser)
    released = line_with(logged, "the release", agentrun_name="tunnel", action="release")
    assert_run_fields(released, team_namespace, "tunnel", "info", "stockade.respond")
    assert released["quarantine_id"] == qid, "one quarantine, one id, from its first rung to its release"
    assert (released["by"], released["kind"], released["pods"]) == (releaser, "SSHConnection", ["tunnel"])
    wait_for(lambda: get("rolebinding", "stockade-agent", ns) and get("pod", "tunnel", ns), timeout=30,
             what="the agent's RBAC and workload back after the release")
    restored = [r for r in records(logged) if r.get("agentrun_name") == "tunnel" and r.get("action") == "restore"]
    assert not restored, f"lifting a freeze restores nothing anyone tampered with: {restored}"
    assert_no_errors(logged)


def test_a_restored_guardrail_is_a_line_with_fields_and_an_event(logged: Operator, team_namespace: str) -> None:
    start(team_namespace, "drifted", simple_spec())
    ns = f"{team_namespace}-drifted"
    kubectl("delete", "networkpolicy", "stockade-deny-all", "-n", ns, as_user=BREAK_GLASS)
    line = line_with(logged, "the restore", agentrun_name="drifted", action="restore")
    assert_run_fields(line, team_namespace, "drifted", "warn", "stockade.reconcile")
    assert (line["kind"], line["guardrail"], line["drift"]) == ("NetworkPolicy", "stockade-deny-all", "missing")
    assert ID.match(line["reconcile_id"])
    wait_for(lambda: get("networkpolicy", "stockade-deny-all", ns), timeout=20, what="the guardrail back")
    [event] = wait_for(lambda: [e for e in run_events(team_namespace, "drifted") if e["reason"] == "GuardrailRestored"],
                       timeout=20, what="a GuardrailRestored Event")
    assert (event["type"], event["source"].get("component"), event["reportingComponent"]) == (
        "Warning", "stockade", "stockade")
    assert_no_errors(logged)


def test_every_event_comes_from_stockade_and_the_fence_complete_once_per_generation(
        logged: Operator, team_namespace: str) -> None:
    start(team_namespace, "announced", simple_spec())
    ns = f"{team_namespace}-announced"

    def fence_events(count: int) -> Callable[[], list[dict[str, Any]] | None]:
        def check() -> list[dict[str, Any]] | None:
            found = [e for e in run_events(team_namespace, "announced") if e["reason"] == "FenceComplete"]
            return found if len(found) >= count else None
        return check

    [first] = wait_for(fence_events(1), timeout=20, what="a FenceComplete Event")
    assert first["type"] == "Normal" and f"generation 1 is in place in run namespace {ns}" in first["message"]
    line = line_with(logged, "the fence complete", agentrun_name="announced", action="fence-complete")
    assert_run_fields(line, team_namespace, "announced", "info", "stockade.reconcile")
    assert line["generation"] == 1 and ID.match(line["reconcile_id"])

    # A guardrail removed and restored: the fence is the same generation's, not announced again.
    kubectl("delete", "networkpolicy", "stockade-deny-all", "-n", ns, as_user=BREAK_GLASS)
    wait_for(lambda: [e for e in run_events(team_namespace, "announced") if e["reason"] == "GuardrailRestored"],
             timeout=20, what="the guardrail restored")
    wait_for(lambda: ready(team_namespace, "announced"), timeout=20, what="Ready again")
    # A new generation: its fence is announced once.
    apply(agentrun("announced", team_namespace, simple_spec(cpu="3")))
    wait_for(lambda: (r := ready(team_namespace, "announced")) and r["metadata"]["generation"] == 2, timeout=30,
             what="generation 2 Ready")
    found = wait_for(fence_events(2), timeout=20, what="a second FenceComplete Event")
    restored = [r["guardrail"] for r in records(logged) if r.get("agentrun_name") == "announced"
                and r.get("action") == "restore"]
    assert restored == ["stockade-deny-all"], "a spec change is no drift: only the deleted guardrail was restored"
    assert sorted(e["message"].split(" is in place")[0] for e in found) == [
        "every guardrail of generation 1", "every guardrail of generation 2"]
    assert all(e.get("count", 1) == 1 for e in found), "once per generation"

    events = run_events(team_namespace, "announced")
    assert {e["reason"] for e in events} >= {"FenceComplete", "GuardrailRestored", "PhaseRunning"}, events
    for event in events:
        assert event["source"].get("component") == "stockade", event
        assert event["reportingComponent"] == "stockade" and event.get("reportingInstance"), event
    new_api = json.loads(kubectl("get", "events.v1.events.k8s.io", "-n", team_namespace, "-o", "json"))["items"]
    controllers = {e.get("reportingController") for e in new_api if e["regarding"]["name"] == "announced"}
    assert controllers == {"stockade"}, controllers
    assert_no_errors(logged)


def test_no_liveness_access_lines(logged: Operator) -> None:
    from .conftest import answers_ok

    for _ in range(5):
        assert answers_ok(f"http://127.0.0.1:{logged.health_port}/healthz")
    lines = records(logged)
    assert not [r for r in lines if r.get("logger") == "aiohttp.access" or "/healthz" in str(r.get("message"))]
    assert {"logger", "severity", "message", "timestamp"} <= set(lines[0]), lines[0]


def test_a_run_deleted_with_its_namespace_logs_no_error_and_no_terminating_warning(logged: Operator) -> None:
    team = f"team-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", team)
    for name in ("gone-a", "gone-b"):
        start(team, name, simple_spec())
    kubectl("delete", "namespace", team, "--wait=false")  # the AgentRuns go with it, then their run namespaces
    for name in ("gone-a", "gone-b"):
        wait_for(lambda n=name: get("namespace", f"{team}-{n}") is None, timeout=90,  # type: ignore[misc]
                 what=f"run namespace {team}-{name} to be gone")
    wait_for(lambda: get("namespace", team) is None, timeout=90, what="the team namespace to be gone")
    noisy = [r for r in records(logged) if r.get("severity") not in ("debug", "info")
             and "being terminated" in json.dumps(r)]
    assert not noisy, "a namespace being deleted is expected, not a warning:\n" + "\n".join(
        json.dumps(r)[:600] for r in noisy[:10])
    counted = [line for line in logged.metrics().splitlines()
               if line.startswith("stockade_reconcile_errors_total{") and 'reason="Forbidden"' in line]
    assert not counted, counted
    assert_no_errors(logged)
