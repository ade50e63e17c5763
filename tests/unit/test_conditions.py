from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from stockade.api.models import AgentRunStatus, Condition
from stockade.conditions import (
    Observed,
    compute_conditions,
    compute_phase,
    merge_conditions,
    run_status,
    status_changed,
    status_patch,
)


def conds(obs):
    return {c.type: c for c in compute_conditions(obs)}


def test_running_is_ready_and_current():
    obs = Observed(3, "ns", guardrails_ready=True, workload_phase="Running")
    found = conds(obs)
    assert compute_phase(obs) == "Running"
    assert found["Ready"].status == "True"
    assert found["Reconciling"].status == "False"
    assert found["Stalled"].status == "False"
    assert all(c.observedGeneration == 3 for c in found.values())


def test_building_fence_is_reconciling():
    obs = Observed(1, "ns", guardrails_ready=False, guardrails_message="waiting for quota")
    found = conds(obs)
    assert compute_phase(obs) == "Pending"
    assert found["Ready"].status == "False" and found["Ready"].reason == "GuardrailsPending"
    assert found["Reconciling"].status == "True"


def test_refused_template_is_stalled_with_reason():
    obs = Observed(2, "ns", refusals=["spec.template.spec.hostNetwork: host namespaces are never granted"],
                   guardrails_ready=True)
    found = conds(obs)
    assert found["Ready"].reason == "TemplateExceedsGrant"
    assert "hostNetwork" in found["Ready"].message
    assert found["Stalled"].status == "True"


def test_a_platform_admission_denial_is_progressing_not_stalled():
    obs = Observed(2, "ns", held=("AdmissionRefused", "admission webhook \"x\" denied the request: no"))
    found = conds(obs)
    assert compute_phase(obs) == "Pending"
    assert (found["Ready"].status, found["Ready"].reason) == ("False", "AdmissionRefused")
    assert "denied the request" in found["Ready"].message
    assert found["Reconciling"].status == "True" and found["Stalled"].status == "False"


def test_invalid_spec_is_stalled():
    found = conds(Observed(1, "ns", invalid="InvalidSpec: spec.grant.cpu: bad"))
    assert found["Stalled"].status == "True" and found["Ready"].reason == "InvalidSpec"


def test_phases():
    assert compute_phase(Observed(1, "n", guardrails_ready=True, workload_phase="Succeeded")) == "Succeeded"
    assert compute_phase(Observed(1, "n", guardrails_ready=True, workload_phase="Failed")) == "Failed"
    assert compute_phase(Observed(1, "n", expired=True, workload_phase="Running")) == "Expired"
    assert compute_phase(Observed(1, "n", quarantined=("Violation", "x"), workload_phase="Running")) == "Quarantined"
    assert compute_phase(Observed(1, "n", terminal_phase="Succeeded")) == "Succeeded"


def test_transition_time_kept_until_status_flips():
    first = merge_conditions([], compute_conditions(Observed(1, "n")), "t1")
    same = merge_conditions([c.model_dump() for c in first], compute_conditions(Observed(2, "n")), "t2")
    assert {c.type: c.lastTransitionTime for c in same}["Ready"] == "t1"
    running = Observed(2, "n", guardrails_ready=True, workload_phase="Running")
    flipped = merge_conditions([c.model_dump() for c in same], compute_conditions(running), "t3")
    assert {c.type: c.lastTransitionTime for c in flipped}["Ready"] == "t3"


def test_no_write_when_nothing_changed():
    status = {"phase": "Running", "conditions": [{"type": "Ready"}]}
    assert not status_changed({**status, "violations": []}, status)
    assert status_changed(status, {**status, "phase": "Failed"})


# The status as written: typed (AgentRunStatus, Condition), dumped to exactly the dict the reconciler wrote when it
# composed the status as a dict (these were taken from that code), explicit nulls included.
T0, T1 = "2026-01-01T00:00:01Z", "2026-01-01T00:00:05Z"


def cond(kind: str, status: str, reason: str, message: str = "", generation: int = 1, *,
         at: str = T1) -> dict[str, Any]:
    return {"type": kind, "status": status, "reason": reason, "message": message, "observedGeneration": generation,
            "lastTransitionTime": at}


def written(observed: Observed, extra: dict[str, Any] | None = None,
            previous: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    conditions = merge_conditions(previous or [], compute_conditions(observed), T1)
    return status_patch(run_status(observed, compute_phase(observed), conditions, extra))


def test_a_running_run_is_written_with_its_cleared_fields_as_null():
    observed = Observed(1, "team-rome", guardrails_ready=True, guardrails_message="every guardrail is in place",
                        workload_phase="Running",
                        admission=(True, "Admitted", "within the budgets of AgentPolicy open"),
                        compliance=(True, "WithinPolicy", "within the ceilings of AgentPolicy open"),
                        egress=(True, "AllHostsResolved", "every granted host resolved: api.example.com"))
    extra = {"startTime": "2026-01-01T00:00:00Z", "expiresAt": None, "workload": "pod/rome",
             "resolvedEgress": {"api.example.com": ["203.0.113.10"]}, "refusals": None, "policies": ["open"]}
    new = written(observed, extra, previous=[{"type": "Ready", "status": "True", "lastTransitionTime": T0}])
    assert new == {
        "phase": "Running", "runNamespace": "team-rome", "observedGeneration": 1,
        "conditions": [
            cond("Ready", "True", "Running", "the agent is running inside its fence", at=T0),
            cond("GuardrailsReady", "True", "GuardrailsApplied", "every guardrail is in place"),
            cond("Reconciling", "False", "Running"),
            cond("Stalled", "False", "AsExpected"),
            cond("Quarantined", "False", "NotQuarantined"),
            cond("Admitted", "True", "Admitted", "within the budgets of AgentPolicy open"),
            cond("PolicyCompliant", "True", "WithinPolicy", "within the ceilings of AgentPolicy open"),
            cond("EgressResolved", "True", "AllHostsResolved", "every granted host resolved: api.example.com"),
        ],
        "startTime": "2026-01-01T00:00:00Z", "expiresAt": None, "workload": "pod/rome",
        "resolvedEgress": {"api.example.com": ["203.0.113.10"]}, "refusals": None, "policies": ["open"],
    }
    assert "expiresAt" in new and "refusals" in new, "a merge patch clears them only when they are written as null"
    assert "violations" not in new and "quarantine" not in new, "the responder's fields are never written here"


def test_a_blocked_run_writes_only_its_own_fields_and_a_null_run_namespace():
    new = written(Observed(2, None, blocked=("NamespaceConflict", "every name is taken")))
    blocked = [cond(kind, status, "NamespaceConflict", "every name is taken", generation=2)
               for kind, status in (("Ready", "False"), ("GuardrailsReady", "False"), ("Reconciling", "False"),
                                    ("Stalled", "True"))]
    assert new == {"phase": "Pending", "runNamespace": None, "observedGeneration": 2, "conditions": blocked}


def test_refusals_are_written_with_only_the_fields_they_have():
    refused = Observed(1, "team-rome", refusals=["spec.containers[0].resources.limits.cpu: 8 > 4"],
                       guardrails_ready=True)
    refusal = {"kind": "PodExceedsGrant", "field": "spec.containers[0].resources.limits.cpu", "message": "8 > 4"}
    new = written(refused, {"expiresAt": "2026-01-01T04:00:00Z", "refusals": [refusal], "policies": None})
    message = "the template asks for what the grant does not give: spec.containers[0].resources.limits.cpu: 8 > 4"
    assert new == {
        "phase": "Pending", "runNamespace": "team-rome", "observedGeneration": 1,
        "conditions": [
            cond("Ready", "False", "TemplateExceedsGrant", message),
            cond("GuardrailsReady", "True", "GuardrailsApplied"),
            cond("Reconciling", "False", "TemplateExceedsGrant"),
            cond("Stalled", "True", "TemplateExceedsGrant", message),
            cond("Quarantined", "False", "NotQuarantined"),
        ],
        "expiresAt": "2026-01-01T04:00:00Z", "refusals": [refusal], "policies": None,
    }


def test_the_status_is_the_apis_model():
    status = run_status(Observed(1, "ns", guardrails_ready=True, workload_phase="Running"), "Running",
                        compute_conditions(Observed(1, "ns", guardrails_ready=True, workload_phase="Running")))
    assert isinstance(status, AgentRunStatus) and all(isinstance(c, Condition) for c in status.conditions)
    assert status.model_fields_set == {"phase", "runNamespace", "observedGeneration", "conditions"}


def test_a_field_the_status_does_not_have_is_refused_not_dropped():
    observed = Observed(1, "ns")
    with pytest.raises(ValueError, match="notAField"):
        run_status(observed, "Pending", [], {"notAField": 1})
    with pytest.raises(ValidationError):
        run_status(observed, "Sleeping", [])  # not a Phase


def test_a_null_the_api_server_already_dropped_is_no_change() -> None:
    # An AgentPolicy without GPU budgets writes usage.gpus: null; the API server keeps no such key, and
    # comparing the two as different made a write on every watch event of the policy.
    old = {"usage": {"runs": "1/5", "cpu": "1"}, "expiresAt": "2026-12-07T00:00:00Z"}
    assert not status_changed(old, {"usage": {"runs": "1/5", "gpus": None, "cpu": "1"}, "refusals": None})
    assert status_changed(old, {"usage": {"runs": "2/5", "gpus": None}})
    assert status_changed(old, {"expiresAt": None}), "a null removes a field that is there"
    assert status_changed(old, {"usage": {"gpus": {"nvidia.com/gpu": "1/8"}}})
