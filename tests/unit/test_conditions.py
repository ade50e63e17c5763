from __future__ import annotations

from stockade.conditions import Observed, compute_conditions, compute_phase, merge_conditions, status_changed


def conds(obs):
    return {c["type"]: c for c in compute_conditions(obs)}


def test_running_is_ready_and_current():
    obs = Observed(3, "ns", guardrails_ready=True, workload_phase="Running")
    found = conds(obs)
    assert compute_phase(obs) == "Running"
    assert found["Ready"]["status"] == "True"
    assert found["Reconciling"]["status"] == "False"
    assert found["Stalled"]["status"] == "False"
    assert all(c["observedGeneration"] == 3 for c in found.values())


def test_building_fence_is_reconciling():
    obs = Observed(1, "ns", guardrails_ready=False, guardrails_message="waiting for quota")
    found = conds(obs)
    assert compute_phase(obs) == "Pending"
    assert found["Ready"]["status"] == "False" and found["Ready"]["reason"] == "GuardrailsPending"
    assert found["Reconciling"]["status"] == "True"


def test_refused_template_is_stalled_with_reason():
    obs = Observed(2, "ns", refusals=["spec.template.spec.hostNetwork: host namespaces are never granted"],
                   guardrails_ready=True)
    found = conds(obs)
    assert found["Ready"]["reason"] == "TemplateExceedsGrant"
    assert "hostNetwork" in found["Ready"]["message"]
    assert found["Stalled"]["status"] == "True"


def test_a_platform_admission_denial_is_progressing_not_stalled():
    obs = Observed(2, "ns", held=("AdmissionRefused", "admission webhook \"x\" denied the request: no"))
    found = conds(obs)
    assert compute_phase(obs) == "Pending"
    assert (found["Ready"]["status"], found["Ready"]["reason"]) == ("False", "AdmissionRefused")
    assert "denied the request" in found["Ready"]["message"]
    assert found["Reconciling"]["status"] == "True" and found["Stalled"]["status"] == "False"


def test_invalid_spec_is_stalled():
    found = conds(Observed(1, "ns", invalid="InvalidSpec: spec.grant.cpu: bad"))
    assert found["Stalled"]["status"] == "True" and found["Ready"]["reason"] == "InvalidSpec"


def test_phases():
    assert compute_phase(Observed(1, "n", guardrails_ready=True, workload_phase="Succeeded")) == "Succeeded"
    assert compute_phase(Observed(1, "n", guardrails_ready=True, workload_phase="Failed")) == "Failed"
    assert compute_phase(Observed(1, "n", expired=True, workload_phase="Running")) == "Expired"
    assert compute_phase(Observed(1, "n", quarantined=("Violation", "x"), workload_phase="Running")) == "Quarantined"
    assert compute_phase(Observed(1, "n", terminal_phase="Succeeded")) == "Succeeded"


def test_transition_time_kept_until_status_flips():
    first = merge_conditions([], compute_conditions(Observed(1, "n")), "t1")
    same = merge_conditions(first, compute_conditions(Observed(2, "n")), "t2")
    assert {c["type"]: c["lastTransitionTime"] for c in same}["Ready"] == "t1"
    flipped = merge_conditions(same, compute_conditions(Observed(2, "n", guardrails_ready=True,
                                                                 workload_phase="Running")), "t3")
    assert {c["type"]: c["lastTransitionTime"] for c in flipped}["Ready"] == "t3"


def test_no_write_when_nothing_changed():
    status = {"phase": "Running", "conditions": [{"type": "Ready"}]}
    assert not status_changed({**status, "violations": []}, status)
    assert status_changed(status, {**status, "phase": "Failed"})
