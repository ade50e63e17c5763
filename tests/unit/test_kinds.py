"""The table of kinds (stockade.kinds) and what each role must bring with it wherever the kind is used.

Every table that used to spell kinds out is derived from stockade.kinds; these check that each role holds in
the places that make it true (the webhook's and the policies' rules, the watches, RBAC and the chart, the
planner's labels, detection), so that adding one line to the table either works or says what is missing.
"""

from __future__ import annotations

from typing import Any

import pytest

from stockade import kinds, rbac, watch
from stockade.admission import vap, webhook
from stockade.admission.policy import Request, Run, decide
from stockade.detect import detection, rules
from stockade.kube import object_path
from stockade.plan import PlanSettings, RunRef, build

from .fixtures import spec
from .test_rbac import granted, render

OPERATOR = ["system:serviceaccount:stockade-system:stockade"]
GUARDRAILS = [pytest.param(kind, id=kind.kind) for kind in kinds.GUARDRAILS]
NEVER_GRANTED = [pytest.param(kind, id=kind.kind) for kind in kinds.NEVER_GRANTED]


def resource_rules(rules_: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(group, resource, operation) for admission rules."""
    return {(group, res, op) for rule in rules_ for group in rule["apiGroups"] for res in rule["resources"]
            for op in rule["operations"]}


def allowlist() -> set[tuple[str, str, str]]:
    """What the validating webhook's allowlist hook is sent."""
    clients = {hid: {"url": "https://x"} for hid in (webhook.VALIDATE_ID, webhook.POLICY_ID)}
    return resource_rules(webhook.validating(clients, OPERATOR)["webhooks"][0]["rules"])


def policy(name: str) -> dict[str, Any]:
    """The spec of one ValidatingAdmissionPolicy as shipped."""
    return next(obj["spec"] for obj in vap.manifests(OPERATOR)
                if obj["kind"] == "ValidatingAdmissionPolicy" and obj["metadata"]["name"] == name)


def matched(name: str) -> set[tuple[str, str, str]]:
    return resource_rules(policy(name)["matchConstraints"]["resourceRules"])


def test_each_kind_is_listed_once_and_named_as_the_api_server_names_it() -> None:
    assert len(kinds.BY_REF) == len(kinds.KINDS)
    assert len({kind.resource for kind in kinds.KINDS}) == len(kinds.KINDS)
    for kind in kinds.KINDS:
        assert kind.plural == kind.plural.lower() and kind.plural.endswith("s"), kind
        assert kind.kind[0].isupper(), kind
    assert kinds.KINDS[0].kind == "Namespace", "the watch layer lists namespaces first (pods are kept by them)"
    assert object_path("v1", "Pod", "ns", "p") == "/api/v1/namespaces/ns/pods/p"
    assert object_path("apps/v1", "Deployment", "ns") == "/apis/apps/v1/namespaces/ns/deployments"
    assert object_path("v1", "Namespace", None, "ns") == "/api/v1/namespaces/ns"


def test_rules_group_by_api_group_in_table_order_and_keep_the_order_given() -> None:
    service, pod = kinds.named("Service"), kinds.named("Pod")
    job, role = kinds.named("Job"), kinds.named("Role")
    assert kinds.rules([role, service, job, pod]) == [
        ("", ["services", "pods"]), ("batch", ["jobs"]), ("rbac.authorization.k8s.io", ["roles"])]
    assert kinds.rules([job], lambda k: (k.plural, f"{k.plural}/*")) == [("batch", ["jobs", "jobs/*"])]
    with pytest.raises(KeyError):
        kinds.named("Event")  # core and events.k8s.io: say which
    assert kinds.named("Event", "events.k8s.io/v1").group == "events.k8s.io"


@pytest.mark.parametrize("kind", GUARDRAILS)
def test_a_guardrail_is_watched_repaired_confined_and_refused_to_everyone_else(kind: kinds.Kind) -> None:
    assert kind.namespaced
    assert next(w for w in watch.KINDS if w.kind == kind.kind).selector == "stockade.io/agentrun"
    assert (kind.group, kind.version, kind.plural, kind.kind) in detection.WATCHED
    assert {(kind.group, kind.plural, op) for op in ("UPDATE", "DELETE")} <= allowlist()
    for name in ("stockade-baseline", "stockade-operator-confinement"):
        assert {(kind.group, kind.plural, op) for op in ("CREATE", "UPDATE", "DELETE")} <= matched(name), name
    assert kind.plural in vap.GUARDRAIL_KINDS  # the baseline policy's CEL names it
    allowed = {(p.group, p.resource, verb) for p in rbac.PERMISSIONS for verb in p.verbs}
    assert {(kind.group, kind.plural, verb) for verb in ("list", "watch", "create", "patch", "delete")} <= allowed


@pytest.mark.parametrize("kind", GUARDRAILS)
@pytest.mark.parametrize("operation", ["CREATE", "UPDATE", "DELETE"])
def test_the_webhook_refuses_a_guardrail_change_by_anyone_but_the_operator(kind: kinds.Kind, operation: str) -> None:
    body = {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": {"name": "x", "namespace": "run-ns"}}
    request = Request(operation, kind.group, kind.plural, kind.kind, "run-ns", "x",
                      None if operation == "DELETE" else body, None if operation == "CREATE" else body, "alice")
    decision = decide(request, Run("team", "run", spec()), is_operator=False)
    assert not decision.allowed
    assert decision.kind == "GuardrailChange"


@pytest.mark.parametrize("kind", GUARDRAILS)
def test_detection_flags_a_guardrail_someone_else_edited(kind: kinds.Kind) -> None:
    edited = {"kind": kind.kind, "metadata": {
        "name": "stockade-x", "namespace": "run-ns", "uid": "u",
        "labels": {"app.kubernetes.io/managed-by": "stockade", "stockade.io/agentrun": "rome"},
        "managedFields": [{"manager": "kubectl-edit", "operation": "Update", "time": "2025-06-01T11:30:00Z"}]}}
    found = rules.judge_object(edited, spec(), "rome", "2025-06-01T12:00:00Z")
    assert found is not None and found.kind == "GuardrailEdited"


def test_the_planner_labels_each_guardrail_with_its_kinds_component() -> None:
    """Pruning deletes by component (reconcile.PRUNABLE_COMPONENTS) and the fence report lists by it: a
    planned object whose component is not its kind's would never be pruned, or be pruned when still wanted."""
    body = spec(grant_kubernetesAPI=[{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}])
    plan = build(RunRef("team", "rome"), body, {}, PlanSettings())
    fence = plan.guardrails[1:]  # after the Namespace
    assert {obj["kind"] for obj in fence} == {kind.kind for kind in kinds.GUARDRAILS}
    for obj in fence:
        assert obj["metadata"]["labels"]["stockade.io/component"] == kinds.BY_REF[
            (obj["apiVersion"], obj["kind"])].guardrail, obj["kind"]


@pytest.mark.parametrize("kind", NEVER_GRANTED)
def test_a_controller_no_grant_names_is_refused_by_the_webhook_and_the_policies(kind: kinds.Kind) -> None:
    assert kind.makes_pods
    assert (kind.group, kind.plural, "UPDATE") in allowlist()
    assert {(kind.group, kind.plural, op) for op in ("CREATE", "UPDATE")} <= matched("stockade-grant")
    assert f"'{kind.plural}'" in policy("stockade-grant")["validations"][0]["expression"]
    assert (kind.group, kind.plural, "CREATE") in matched("stockade-baseline"), "its pod template meets the baseline"
    body = {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": {"name": "w", "namespace": "run-ns"},
            "spec": {}}
    request = Request("CREATE", kind.group, kind.plural, kind.kind, "run-ns", "w", body, None, "alice")
    decision = decide(request, Run("team", "run", spec()), is_operator=False)
    assert not decision.allowed
    assert decision.kind == "WorkloadNotGranted"


def test_every_kind_the_operator_watches_is_in_the_charts_cluster_role() -> None:
    chart = {(group, resource, verb) for group, resource, verb, _ in granted(render())}
    for kind in (*kinds.WATCHED, *kinds.DETECTED, *kinds.ADMISSION):
        assert {(kind.group, kind.plural, "list"), (kind.group, kind.plural, "watch")} <= chart, kind.kind
    for kind in kinds.GUARDRAILS:
        assert {(kind.group, kind.plural, verb) for verb in ("create", "patch", "delete")} <= chart, kind.kind
