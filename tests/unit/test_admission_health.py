"""Admission whole or not (stockade.admission.health), the AdmissionReady condition, and doctor's reading of it."""

from __future__ import annotations

import copy
from typing import Any

from stockade import cli_doctor
from stockade.admission import health, vap, webhook
from stockade.conditions import Observed, compute_conditions, compute_phase

USERS = ["system:serviceaccount:stockade-system:stockade"]
CLIENTS = {hid: {"url": f"https://127.0.0.1:9443/{hid}", "caBundle": "Q0E="}
           for hid in (webhook.VALIDATE_ID, webhook.MUTATE_ID, webhook.AGENTRUN_MUTATE_ID, webhook.POLICY_ID,
                       webhook.POLICY_DEFAULTS_ID)}


def desired() -> list[dict[str, Any]]:
    return [*vap.manifests(USERS, ["stockade-system"], prefix="stockade-local"),
            webhook.validating(CLIENTS, USERS, ["stockade-system"], name="stockade-local"),
            webhook.mutating(CLIENTS, USERS, ["stockade-system"], name="stockade-local")]


def as_live(objects: list[dict[str, Any]]) -> dict[health.ObjectKey, dict[str, Any]]:
    """What the API server gives back: the same, plus defaults and metadata it adds."""
    live = {}
    for obj in copy.deepcopy(objects):
        obj["metadata"].update(uid="u", resourceVersion="7", labels={**obj["metadata"].get("labels", {}), "x": "y"})
        for hook in obj.get("webhooks") or []:
            hook.setdefault("objectSelector", {})
        if obj["kind"] == "ValidatingAdmissionPolicy":
            obj["spec"]["matchConstraints"]["matchPolicy"] = "Equivalent"
        live[health.key_of(obj)] = obj
    return live


def test_names_follow_the_prefix_so_a_chart_and_the_local_operator_never_share_one() -> None:
    local = {o["metadata"]["name"] for o in vap.manifests(USERS, prefix="stockade-local")}
    chart = {o["metadata"]["name"] for o in vap.manifests(USERS, prefix="stockade")}
    assert not local & chart
    assert all(name.startswith("stockade-local-") for name in local)
    bindings = [o for o in vap.manifests(USERS, prefix="stockade-local") if o["kind"].endswith("Binding")]
    assert all(b["spec"]["policyName"].startswith("stockade-local-") for b in bindings)


def test_everything_in_place_with_server_defaults_and_extra_labels() -> None:
    found = health.admission_health(desired(), as_live(desired()))
    assert found.ok and found.reason == "AdmissionInPlace" and not found.broken
    assert found.condition() == (True, "AdmissionInPlace", found.message)


def test_a_deleted_configuration_is_missing_and_restorable() -> None:
    live = as_live(desired())
    del live[("ValidatingWebhookConfiguration", "stockade-local")]
    found = health.admission_health(desired(), live)
    assert not found.ok and found.reason == "AdmissionMissing"
    assert "ValidatingWebhookConfiguration stockade-local was deleted; the operator is restoring it" in found.message
    assert health.restorable(found) == [("ValidatingWebhookConfiguration", "stockade-local")]


def test_a_failure_policy_turned_to_ignore_is_a_change_with_its_path() -> None:
    live = as_live(desired())
    live[("ValidatingWebhookConfiguration", "stockade-local")]["webhooks"][0]["failurePolicy"] = "Ignore"
    found = health.admission_health(desired(), live)
    assert not found.ok and found.reason == "AdmissionChanged"
    assert "webhooks[allowlist.stockade.io].failurePolicy" in found.message
    assert health.restorable(found) == [("ValidatingWebhookConfiguration", "stockade-local")]


def test_a_widened_namespace_selector_and_a_removed_webhook_are_changes() -> None:
    live = as_live(desired())
    live[("ValidatingWebhookConfiguration", "stockade-local")]["webhooks"][0]["namespaceSelector"] = {}
    assert health.object_health(desired()[-2], live[("ValidatingWebhookConfiguration", "stockade-local")]).detail \
        .startswith("webhooks[allowlist.stockade.io].namespaceSelector")
    live = as_live(desired())
    live[("MutatingWebhookConfiguration", "stockade-local")]["webhooks"].pop(0)
    assert health.object_health(desired()[-1], live[("MutatingWebhookConfiguration", "stockade-local")]).detail \
        == "webhooks[gpu-visibility.stockade.io] (missing)"


def test_an_extra_webhook_or_another_order_of_webhooks_is_not_drift() -> None:
    live = as_live(desired())
    config = live[("ValidatingWebhookConfiguration", "stockade-local")]
    config["webhooks"] = [*reversed(config["webhooks"]), {"name": "someone-else.example.com"}]
    assert health.admission_health(desired(), live).ok


def test_selector_values_are_a_set() -> None:
    live = as_live(desired())
    policy = live[("ValidatingAdmissionPolicy", "stockade-local-baseline")]
    values = policy["spec"]["matchConstraints"]["namespaceSelector"]["matchExpressions"][1]["values"]
    values.reverse()
    assert health.admission_health(desired(), live).ok
    values.pop()
    assert not health.admission_health(desired(), live).ok


def test_a_changed_policy_expression_is_a_change() -> None:
    live = as_live(desired())
    live[("ValidatingAdmissionPolicy", "stockade-local-grant")]["spec"]["validations"][0]["expression"] = "true"
    found = health.admission_health(desired(), live)
    assert found.reason == "AdmissionChanged" and "spec.validations[0].expression" in found.message


def test_what_the_chart_owns_is_restored_only_where_the_operator_may() -> None:
    live = as_live(desired())
    owners = {health.key_of(o): health.SHIPPED for o in desired() if "Policy" in o["kind"]}
    owners |= {health.key_of(o): health.FILLED for o in desired() if "Webhook" in o["kind"]}
    del live[("ValidatingAdmissionPolicy", "stockade-local-baseline")]
    del live[("ValidatingWebhookConfiguration", "stockade-local")]
    live[("MutatingWebhookConfiguration", "stockade-local")]["webhooks"] = []  # made again empty: filled in
    found = health.admission_health(desired(), live, owners)
    assert health.restorable(found) == [("MutatingWebhookConfiguration", "stockade-local")]
    assert "the chart ships it" in found.message and "helm upgrade makes it again" in found.message


def test_a_deleting_object_is_missing() -> None:
    live = as_live(desired())
    live[("ValidatingAdmissionPolicyBinding", "stockade-local-grant")]["metadata"]["deletionTimestamp"] = "now"
    assert health.admission_health(desired(), live).reason == "AdmissionMissing"


def _running(admission: tuple[bool, str, str] | None) -> Observed:
    return Observed(3, "ns", guardrails_ready=True, workload_phase="Running", admission_ready=admission)


def _by_type(obs: Observed) -> dict[str, dict[str, Any]]:
    return {c.type: c.model_dump() for c in compute_conditions(obs)}


def test_admission_missing_makes_a_running_run_not_ready_but_keeps_its_phase() -> None:
    conditions = _by_type(_running((False, "AdmissionMissing", "admission is not whole")))
    assert conditions["AdmissionReady"]["status"] == "False"
    assert conditions["Ready"] == {**conditions["Ready"], "status": "False", "reason": "AdmissionMissing",
                                   "message": "admission is not whole"}
    assert conditions["Reconciling"]["status"] == "True"  # the operator is restoring it
    assert compute_phase(_running((False, "AdmissionMissing", "m"))) == "Running"
    whole = _by_type(_running((True, "AdmissionInPlace", "in place")))
    assert whole["Ready"]["status"] == "True" and whole["AdmissionReady"]["reason"] == "AdmissionInPlace"
    assert "AdmissionReady" not in _by_type(_running(None))  # no admission extension: no condition


def test_admission_ready_is_said_on_runs_that_are_not_running_too() -> None:
    obs = Observed(1, "ns", invalid="InvalidSpec: bad", admission_ready=(False, "AdmissionMissing", "m"))
    conditions = _by_type(obs)
    assert conditions["AdmissionReady"]["status"] == "False" and conditions["Ready"]["reason"] == "InvalidSpec"


def test_doctor_reads_admission_ready_and_finds_installations_by_their_webhooks() -> None:
    run = {"status": {"conditions": [{"type": "AdmissionReady", "status": "False", "message": "gone"}]}}
    assert not cli_doctor.admission_ready_check([run, {"status": {}}]).ok
    assert "1 AgentRuns say: gone" in cli_doctor.admission_ready_check([run]).detail
    assert cli_doctor.admission_ready_check([{"status": {}}]).ok
    configs = [webhook.validating(CLIENTS, USERS, name="stockade-local"), {"metadata": {"name": "other"}}]
    assert cli_doctor.discovered(configs) == ["stockade-local"]
    policies = [{"metadata": {"name": "stockade-local-baseline"}}]
    check = cli_doctor.policy_checks(policies, [{"spec": {"policyName": "stockade-local-baseline"}}],
                                     ["stockade-local"])[0]
    assert not check.ok and "missing: stockade-local-grant, stockade-local-run-namespace" in check.detail
