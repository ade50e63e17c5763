"""The CLI's pure parts: the fence report, explain, and the status/explain commands with a fake fetch."""

from __future__ import annotations

import copy
import datetime
import json
import re
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from stockade import cli, labels
from stockade.cli_render import duration
from stockade.cli_render import status as render_status
from stockade.explain import UnknownField, all_paths, explain
from stockade.fence_report import Fence, build_report
from stockade.kube import KubeError
from stockade.plan import PlanSettings, RunRef, build

from .fixtures import GPU_RUN, spec

NOW = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
RUN = RunRef("ml-research", "rome-42")
RESOLVED = {"api.example.com": ["203.0.113.7", "2001:db8::7"]}
HARD = {"limits.cpu": "8", "requests.cpu": "8", "requests.nvidia.com/gpu": "1", "pods": "2",
        "services.loadbalancers": "0"}
runner = CliRunner()


def agentrun(raw_spec: dict[str, Any] | None = None, **status: Any) -> dict[str, Any]:
    base = {"phase": "Running", "runNamespace": RUN.run_namespace, "observedGeneration": 1,
            "startTime": "2026-01-02T03:00:00Z", "expiresAt": "2026-01-02T07:00:00Z",
            "resolvedEgress": RESOLVED, "workload": "pod/rome-42",
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "Running", "message": "inside its fence"},
                {"type": "Stalled", "status": "False", "reason": "AsExpected", "message": ""},
                {"type": "Quarantined", "status": "False", "reason": "NotQuarantined", "message": ""},
            ]}
    base.update(status)
    return {"apiVersion": "stockade.io/v1alpha1", "kind": "AgentRun",
            "metadata": {"name": RUN.name, "namespace": RUN.namespace, "uid": "u-1", "generation": 1,
                         "creationTimestamp": "2026-01-02T02:59:05Z"},
            "spec": copy.deepcopy(raw_spec or GPU_RUN), "status": base}


def live_fence(raw_spec: dict[str, Any] | None = None, drop: tuple[str, str] | None = None,
               pods: list[dict[str, Any]] | None = None) -> Fence:
    """What the API server would hold for a complete fence (the plan's own objects), less ``drop``."""
    from stockade.api.models import AgentRunSpec

    plan = build(RUN, AgentRunSpec.model_validate(raw_spec or GPU_RUN), RESOLVED, PlanSettings())
    objects: dict[str, list[dict[str, Any]]] = {kind: [] for kind in
                                                ("ServiceAccount", "ResourceQuota", "LimitRange", "NetworkPolicy",
                                                 "Role", "RoleBinding", "Pod")}
    for obj in plan.guardrails[1:]:
        if (obj["kind"], obj["metadata"]["name"]) == drop:
            continue
        live = copy.deepcopy(obj)
        if obj["kind"] == "ResourceQuota":
            live["status"] = {"hard": HARD, "used": {"limits.cpu": "4", "requests.cpu": "9", "pods": "1"}}
        objects[obj["kind"]].append(live)
    objects["Pod"] = pods if pods is not None else [
        {"metadata": {"name": "rome-42", "labels": {}}, "spec": {"nodeName": "gpu-0"}, "status": {"phase": "Running"}}]
    return Fence(namespace=plan.namespace, objects=objects)


def with_object(fence: Fence, kind: str, obj: dict[str, Any]) -> Fence:
    objects = {**fence.objects, kind: [*fence.objects.get(kind, []), obj]}
    return Fence(namespace=fence.namespace, objects=objects, unreadable=fence.unreadable)


def states(report: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {(row["kind"], row["name"]): row["state"] for row in report["guardrails"]}


# The report ------------------------------------------------------------------------------------

def test_complete_fence_reports_every_planned_guardrail_present() -> None:
    report = build_report(agentrun(), live_fence(), NOW)
    assert report["kind"] == "FenceReport" and report["phase"] == "Running"
    assert report["runNamespace"] == "ml-research-rome-42"
    assert report["fenceComplete"] is True
    assert states(report) == {
        ("Namespace", "ml-research-rome-42"): "present", ("ServiceAccount", "agent"): "present",
        ("ResourceQuota", "stockade-grant"): "present", ("LimitRange", "stockade-limits"): "present",
        ("NetworkPolicy", "stockade-deny-all"): "present", ("NetworkPolicy", "stockade-egress"): "present",
        ("NetworkPolicy", "stockade-dns"): "present",
    }, "DNS granted, no API access: a DNS policy and no Role or RoleBinding"
    assert report["agentRun"]["ageSeconds"] == 300
    assert report["expiresInSeconds"] == 4 * 3600 - 245
    assert report["pods"] == [{"name": "rome-42", "phase": "Running", "node": "gpu-0", "quarantined": False,
                               "terminating": False}]
    json.dumps(report)  # plain data only


def test_grant_shows_resolved_addresses_and_defaults() -> None:
    grant = build_report(agentrun(), live_fence(), NOW)["grant"]
    assert grant["cpu"] == "8" and grant["gpu"] == 1 and grant["gpuResource"] == "nvidia.com/gpu"
    assert grant["egress"][0] == {"cidr": "10.42.0.0/16", "ports": [443], "protocol": "TCP"}
    assert grant["egress"][1]["addresses"] == ["203.0.113.7", "2001:db8::7"] and grant["egress"][1]["resolved"]
    assert grant["runtimeClassNames"] == [], "defaults filled in, so scripts see every field"


def test_unresolved_host_is_reported_as_such() -> None:
    report = build_report(agentrun(resolvedEgress=None), live_fence(), NOW)
    host = report["grant"]["egress"][1]
    assert host["addresses"] == [] and host["resolved"] is False


def test_a_host_looked_up_to_no_address_is_unresolved_and_the_header_says_so() -> None:
    unresolved = {"type": "EgressResolved", "status": "False", "reason": "HostUnresolved",
                  "message": "no address found for api.example.com: the agent cannot reach it"}
    raw = agentrun(resolvedEgress={"api.example.com": []})
    raw["status"]["conditions"].append(unresolved)
    report = build_report(raw, live_fence(), NOW)
    host = report["grant"]["egress"][1]
    assert host["addresses"] == [] and host["resolved"] is False
    assert unresolved.items() <= next(c for c in report["conditions"] if c["type"] == "EgressResolved").items()
    console = Console(width=200, record=True)
    render_status(report, console)
    text = console.export_text()
    assert re.search(r"EgressResolved +False +HostUnresolved: no address found for api.example.com", text)
    assert "unresolved: allows nothing" in text
    assert re.search(r"Ready +True +Running", text), "the fence holds: Ready is not what an unresolved host changes"


def test_deleted_guardrail_is_missing_and_the_fence_incomplete() -> None:
    report = build_report(agentrun(), live_fence(drop=("NetworkPolicy", "stockade-egress")), NOW)
    assert states(report)[("NetworkPolicy", "stockade-egress")] == "missing"
    assert report["fenceComplete"] is False


def test_missing_namespace_and_unreadable_kinds() -> None:
    fence = live_fence()
    report = build_report(agentrun(), Fence(namespace=None, objects={k: v for k, v in fence.objects.items()
                                                                     if k != "NetworkPolicy"},
                                            unreadable={"NetworkPolicy": "403 Forbidden"}), NOW)
    found = states(report)
    assert found[("Namespace", "ml-research-rome-42")] == "missing"
    assert found[("NetworkPolicy", "stockade-deny-all")] == "unknown", "unreadable is not missing"
    assert report["unreadable"] == {"NetworkPolicy": "403 Forbidden"} and not report["fenceComplete"]


def test_api_grant_expects_role_and_binding() -> None:
    raw = spec(grant_kubernetesAPI=[{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
               grant_dns=False).model_dump(exclude_none=True)
    report = build_report(agentrun(raw), live_fence(raw, drop=("RoleBinding", labels.ROLE_BINDING)), NOW)
    found = states(report)
    assert found[("Role", "stockade-agent")] == "present"
    assert found[("RoleBinding", "stockade-agent")] == "missing"
    assert ("NetworkPolicy", "stockade-dns") not in found


def test_freeze_makes_an_absent_binding_revoked_and_a_present_one_unrevoked() -> None:
    raw = spec(grant_kubernetesAPI=[{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]
               ).model_dump(exclude_none=True)
    frozen = {"active": True, "reason": "PodExceedsGrant", "steps": ["isolate", "freeze"], "pods": ["rome-42"]}
    quarantine_policy = {"metadata": {"name": labels.POLICY_QUARANTINE,
                                      "labels": {labels.COMPONENT: "quarantine"}}}
    fence = with_object(live_fence(raw, drop=("RoleBinding", labels.ROLE_BINDING)), "NetworkPolicy",
                        quarantine_policy)
    report = build_report(agentrun(raw, quarantine=frozen, phase="Quarantined"), fence, NOW)
    found = states(report)
    assert found[("RoleBinding", "stockade-agent")] == "revoked"
    assert found[("NetworkPolicy", "stockade-quarantine")] == "present"
    assert report["fenceComplete"] and report["quarantine"] == frozen

    report = build_report(agentrun(raw, quarantine=frozen), live_fence(raw), NOW)
    assert states(report)[("RoleBinding", "stockade-agent")] == "unrevoked"
    assert states(report)[("NetworkPolicy", "stockade-quarantine")] == "missing", "isolated, yet no deny-all"
    assert not report["fenceComplete"]


def test_leftover_stockade_objects_are_extra() -> None:
    fence = with_object(live_fence(), "NetworkPolicy",
                        {"metadata": {"name": labels.POLICY_QUARANTINE, "labels": {labels.COMPONENT: "quarantine"}}})
    report = build_report(agentrun(), fence, NOW)
    assert states(report)[("NetworkPolicy", "stockade-quarantine")] == "extra"
    assert report["fenceComplete"]


def test_quota_rows_flag_use_beyond_the_grant() -> None:
    quota = build_report(agentrun(), live_fence(), NOW)["quota"]
    rows = {row["resource"]: row for row in quota["resources"]}
    assert quota["enforced"] is True
    assert rows["requests.nvidia.com/gpu"] == {"resource": "requests.nvidia.com/gpu", "used": None, "hard": "1",
                                               "exceeded": False}
    assert rows["requests.cpu"]["exceeded"] is True and rows["limits.cpu"]["exceeded"] is False


def test_refusals_are_the_operators_own_findings() -> None:
    """Read from status.refusals as the operator recorded them, not parsed back out of the condition message."""
    message = "the template asks for what the grant does not give: (the message is for people, not parsed)"
    conditions = [{"type": "Ready", "status": "False", "reason": "TemplateExceedsGrant", "message": message}]
    run = agentrun(conditions=conditions, phase="Pending")
    run["status"]["refusals"] = [
        {"kind": "PodExceedsGrant", "field": "spec.template.spec.hostNetwork", "message": "no | not even once"},
        {"kind": "PodExceedsGrant", "field": "spec.template.spec.containers[0].resources.limits.cpu",
         "message": "asks for 4", "allowed": "2", "hint": "to allow it, raise spec.grant.cpu on the AgentRun"}]
    report = build_report(run, live_fence(pods=[]), NOW)
    assert report["refusals"] == [
        "spec.template.spec.hostNetwork: no | not even once",
        "spec.template.spec.containers[0].resources.limits.cpu: asks for 4; the grant allows 2; to allow it, raise "
        "spec.grant.cpu on the AgentRun"]
    assert report["pods"] == []
    assert build_report(agentrun(conditions=conditions, phase="Pending"), live_fence(pods=[]), NOW)["refusals"] == []


def test_last_violations_in_order_with_the_total() -> None:
    recorded = [{"time": f"2026-01-02T03:00:{i:02d}Z", "kind": "EgressNotGranted", "pod": "rome-42",
                 "detail": f"#{i}", "source": "runtime", "action": "isolate", "evidence": {"big": "x"}}
                for i in range(15)]
    report = build_report(agentrun(violations=recorded), live_fence(), NOW, violations=3)
    assert report["violationsTotal"] == 15
    assert [v["detail"] for v in report["violations"]] == ["#12", "#13", "#14"]
    assert "evidence" not in report["violations"][0], "evidence stays in the AgentRun, not on the screen"
    assert build_report(agentrun(violations=recorded), live_fence(), NOW, violations=0)["violations"] == []


def test_invalid_spec_is_reported_not_raised() -> None:
    raw = copy.deepcopy(GPU_RUN)
    raw["grant"]["pods"] = 0
    report = build_report(agentrun(raw), live_fence(), NOW)
    assert "spec.grant.pods" in report["specError"]
    assert report["grant"]["pods"] == 0, "shown as written"
    assert set(states(report).values()) == {"present"}, "no plan to compare with: nothing is called extra"
    assert ("NetworkPolicy", "stockade-egress") in states(report)


def test_status_before_the_operator_saw_the_run() -> None:
    run = agentrun()
    del run["status"]
    report = build_report(run, Fence(namespace=None, objects={}), NOW)
    assert report["phase"] is None and report["runNamespace"] == "ml-research-rome-42"
    assert report["conditions"] == [] and report["quota"] is None and report["pods"] is None


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "-"), (5, "5s"), (65, "1m5s"), (600, "10m"), (3600, "1h"), (3720, "1h2m"), (90000, "1d1h"),
    (-30, "-30s"),
])
def test_duration(seconds: int | None, text: str) -> None:
    assert duration(seconds) == text


# explain ---------------------------------------------------------------------------------------

def test_explain_grant_lists_every_grant_field_with_type_default_and_description() -> None:
    from stockade.api.models import Grant

    doc = explain("grant")
    assert doc["path"] == "spec.grant" and doc["type"] == "Grant" and doc["required"]
    fields = {f["name"]: f for f in doc["fields"]}
    assert list(fields) == list(Grant.model_fields)
    assert all(f["description"] for f in fields.values()), "every grant field is documented"
    assert fields["cpu"]["type"] == "quantity" and fields["cpu"]["required"]
    assert fields["ephemeralStorage"]["default"] == "10Gi"
    assert fields["egress"]["type"] == "[]EgressRule" and fields["egress"]["default"] == []
    assert fields["gpu"]["constraints"] == {"minimum": 0, "maximum": 64}
    assert "gpu > 0 needs gpuResource (for example nvidia.com/gpu)" in doc["rules"]
    assert explain(None) == doc, "grant is the default"


def test_explain_nested_and_root_paths() -> None:
    egress = explain("grant.egress")
    assert [f["name"] for f in egress["fields"]] == ["cidr", "host", "ports", "protocol"]
    assert "an egress entry has exactly one of cidr and host" in egress["rules"]
    ports = explain("spec.grant.egress.ports")
    assert ports["type"] == "[]integer" and ports["constraints"]["items.maximum"] == 65535 and ports["fields"] == []
    assert explain("agentrun.spec.grant.egress") == egress == explain("ar.grant.egress")
    top = explain("spec")
    assert [f["name"] for f in top["fields"]] == ["template", "grant", "enforcement", "response", "workload"]
    assert next(f for f in top["fields"] if f["name"] == "response")["default"] == ["isolate", "evict"]
    assert explain("status.quarantine")["fields"][0]["name"] == "active"
    assert explain("grant.gpuResource")["rules"] == ["gpu > 0 needs gpuResource (for example nvidia.com/gpu)"]


def test_explain_unknown_field_suggests_near_ones() -> None:
    with pytest.raises(UnknownField) as err:
        explain("grant.egres")
    assert "spec.grant.egress" in err.value.suggestions
    with pytest.raises(UnknownField):
        explain("grant.cpu.more")
    assert "spec.grant.egress.ports" in all_paths()


def test_explain_command_human_and_json() -> None:
    result = runner.invoke(cli.app, ["explain", "grant"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for text in ("spec.grant", "cpu", "quantity", "required", "ephemeralStorage", "10Gi", "egress",
                 "The only destinations a pod may reach."):
        assert text in result.stdout
    result = runner.invoke(cli.app, ["explain", "grant.egress", "-o", "json"])
    assert result.exit_code == 0 and json.loads(result.stdout) == explain("grant.egress")
    result = runner.invoke(cli.app, ["explain", "grant.egres"])
    assert result.exit_code == 2 and "spec.grant.egress" in result.stderr


# status with a fake fetch ----------------------------------------------------------------------

@pytest.fixture
def fetched(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    calls: list[tuple[str, str]] = []
    frozen = {"active": True, "reason": "EgressNotGranted", "message": "ssh to 198.51.100.7:443",
              "since": "2026-01-02T03:01:00Z", "pods": ["rome-42"], "steps": ["isolate"]}
    violation = {"time": "2026-01-02T03:00:59Z", "kind": "EgressNotGranted", "severity": "critical",
                 "pod": "rome-42", "detail": "ssh to 198.51.100.7:443", "source": "runtime", "action": "isolate"}
    run = agentrun(phase="Quarantined", quarantine=frozen, violations=[violation])

    def fake(namespace: str, name: str) -> tuple[dict[str, Any], Fence] | None:
        calls.append((namespace, name))
        return (run, live_fence(drop=("NetworkPolicy", "stockade-egress"))) if name == "rome-42" else None

    monkeypatch.setattr(cli, "fetch_fence", fake)
    monkeypatch.setattr(cli, "default_namespace", lambda: "ml-research")
    monkeypatch.setattr(cli, "now", lambda: NOW)
    return calls


def test_status_json_is_the_report(fetched: list[tuple[str, str]]) -> None:
    result = runner.invoke(cli.app, ["status", "rome-42", "-n", "ml-research", "-o", "json", "--violations", "5"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["phase"] == "Quarantined" and report["quarantine"]["active"]
    assert states(report)[("NetworkPolicy", "stockade-egress")] == "missing"
    assert report["violations"][0]["kind"] == "EgressNotGranted"
    assert fetched == [("ml-research", "rome-42")]


def test_status_table_shows_the_fence_on_one_screen(fetched: list[tuple[str, str]]) -> None:
    result = runner.invoke(cli.app, ["status", "rome-42"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in ("AgentRun ml-research/rome-42", "Quarantined", "Running: inside its fence", "ml-research-rome-42",
                 "cpu 8", "api.example.com", "203.0.113.7", "stockade-egress", "missing", "fence incomplete",
                 "requests.nvidia.com/gpu", "services.loadbalancers", "gpu-0", "EgressNotGranted",
                 "ssh to 198.51.100.7:443", "kubectl stockade release rome-42 -n ml-research", "in 3h55m"):
        assert text in out, text
    assert fetched == [("ml-research", "rome-42")], "the context's namespace by default"


def test_status_not_found_exits_2(fetched: list[tuple[str, str]]) -> None:
    result = runner.invoke(cli.app, ["status", "nope", "-n", "ml-research", "-o", "json"])
    assert result.exit_code == 2
    # -o json: the error is JSON on stdout, for the script that asked for JSON
    assert json.loads(result.stdout)["error"] == "AgentRun ml-research/nope not found"


def test_status_api_failure_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(namespace: str, name: str) -> None:
        raise KubeError(403, "Forbidden", "agentruns is forbidden")

    monkeypatch.setattr(cli, "fetch_fence", broken)
    result = runner.invoke(cli.app, ["status", "rome-42", "-n", "x"])
    assert result.exit_code == 1 and "Forbidden" in result.stderr


def test_usage_names_the_kubectl_plugin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.argv", ["/venv/bin/kubectl-stockade", "--help"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 0
    assert "kubectl stockade" in capsys.readouterr().out
