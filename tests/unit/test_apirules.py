"""Never-grantable API rules (issue 14.4): one table, the CRD's CEL, the planner and the webhook."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from stockade import apirules
from stockade.api.crd import agentrun_crd
from stockade.plan import PlanSettings, RunRef, build

from .fixtures import spec

RUN = RunRef("ml-research", "rome-42")


def rule(resources: list[str], verbs: list[str] | None = None, groups: list[str] | None = None,
         **extra: object) -> dict[str, object]:
    return {"apiGroups": [""] if groups is None else groups, "resources": resources, "verbs": verbs or ["get"],
            **extra}


FORBIDDEN = [
    ("pods/binding", rule(["pods/binding"], ["create"]), "resources", "pods/binding"),
    ("legacy bindings", rule(["bindings"], ["create"]), "resources", "pods/binding"),
    ("token", rule(["serviceaccounts/token"], ["create"]), "resources", "serviceaccounts/token"),
    ("escalate", rule(["roles"], ["escalate"], ["rbac.authorization.k8s.io"]), "verbs", "escalate"),
    ("bind", rule(["roles"], ["bind"], ["rbac.authorization.k8s.io"]), "verbs", "bind"),
    ("impersonate", rule(["serviceaccounts"], ["impersonate"]), "verbs", "impersonate"),
    ("wildcard group", rule(["pods"], groups=["*"]), "apiGroups", "wildcards"),
    ("wildcard resource", rule(["*"]), "resources", "wildcards"),
    ("wildcard subresource", rule(["pods/*"]), "resources", "wildcards"),
    ("wildcard verb", rule(["pods"], ["*"]), "verbs", "wildcards"),
    ("wildcard name", rule(["configmaps"], resourceNames=["*"]), "resourceNames", "wildcards"),
    ("nodes", rule(["nodes"]), "resources", "cluster-scoped"),
    ("the run namespace itself", rule(["namespaces"], ["update"]), "resources", "namespaces"),
    ("persistent volumes", rule(["persistentvolumes"]), "resources", "cluster-scoped"),
    ("cluster roles", rule(["clusterroles"], groups=["rbac.authorization.k8s.io"]), "resources", "cluster-scoped"),
    ("CRDs", rule(["customresourcedefinitions"], groups=["apiextensions.k8s.io"]), "resources", "cluster-scoped"),
    ("exec", rule(["pods/exec"], ["create"]), "resources", "NetworkPolicy"),
    ("port-forward", rule(["pods/portforward"], ["create"]), "resources", "NetworkPolicy"),
    ("ephemeral containers", rule(["pods/ephemeralcontainers"], ["patch"]), "resources", "ephemeralcontainers"),
    ("eviction", rule(["pods/eviction"], ["create"]), "resources", "pods/eviction"),
    ("status writes", rule(["resourcequotas/status"], ["update"]), "resources", "resourcequotas/status"),
    ("RBAC writes", rule(["rolebindings"], ["create"], ["rbac.authorization.k8s.io"]), "resources", "fence"),
    ("NetworkPolicy writes", rule(["networkpolicies"], ["delete"], ["networking.k8s.io"]), "resources", "fence"),
    ("non-resource URLs", rule(["pods"], nonResourceURLs=["/metrics"]), "nonResourceURLs", "non-resource"),
]
GRANTABLE = [
    rule(["configmaps", "secrets"], ["get", "list", "watch", "create", "update", "delete"]),
    rule(["pods"], ["create", "delete", "get"]),
    rule(["pods/log"]),
    rule(["networkpolicies", "roles"], ["get", "list"], ["networking.k8s.io", "rbac.authorization.k8s.io"]),
    rule(["rayclusters"], ["create"], ["ray.io"]),
    rule(["nodes"], groups=["metrics.example.com"]),  # a custom resource of that name in another group
]


@pytest.mark.parametrize(("case", "bad", "field", "word"), FORBIDDEN, ids=[c[0] for c in FORBIDDEN])
def test_never_grantable_rules_are_named(case: str, bad: dict[str, object], field: str, word: str) -> None:
    found = apirules.never_grantable(bad)
    assert found, case
    assert any(f == field and word in message for f, message in found), found


@pytest.mark.parametrize("good", GRANTABLE)
def test_ordinary_rules_stay_grantable(good: dict[str, object]) -> None:
    assert apirules.never_grantable(good) == []


def test_the_crd_carries_cel_generated_from_the_table() -> None:
    schema = agentrun_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    items = schema["properties"]["spec"]["properties"]["grant"]["properties"]["kubernetesAPI"]["items"]
    rules = items["x-kubernetes-validations"]
    assert rules == apirules.cel_rules()
    text = " ".join(r["rule"] for r in rules)
    for entry in apirules.NEVER:
        assert any(entry.what in r["message"] for r in rules), entry.what
        for value in entry.resources or entry.verbs or ():
            assert f'"{value}"' in text, value
    assert all(r["fieldPath"].lstrip(".") in items["properties"] for r in rules)
    assert items["properties"]["apiGroups"]["default"] == [""]


# Verbs outside get..deletecollection never reach the planner: the model's enum refuses them first.
PLANNED = [c for c in FORBIDDEN if c[2] not in ("verbs", "nonResourceURLs")]


@pytest.mark.parametrize("verb", ["escalate", "bind", "impersonate", "*"])
def test_the_model_refuses_dangerous_verbs(verb: str) -> None:
    with pytest.raises(ValidationError) as err:
        spec(grant_kubernetesAPI=[rule(["roles"], [verb], ["rbac.authorization.k8s.io"])])
    assert "kubernetesAPI.0.verbs" in str(err.value)


@pytest.mark.parametrize(("case", "bad", "field", "word"), PLANNED, ids=[c[0] for c in PLANNED])
def test_the_planner_never_writes_such_a_rule_into_the_role(case: str, bad: dict[str, object], field: str,
                                                              word: str) -> None:
    good = GRANTABLE[0]
    plan = build(RUN, spec(grant_kubernetesAPI=[good, bad]), {}, PlanSettings())
    assert not [o for o in plan.guardrails if o["kind"] in ("Role", "RoleBinding")], case
    assert plan.workload is None
    refusal = [f for f in plan.refusals if f.kind == "APIRuleNotGrantable"]
    assert refusal and refusal[0].field == f"spec.grant.kubernetesAPI[1].{field}", refusal
    # and a grantable rule alone still gets its Role
    alone = build(RUN, spec(grant_kubernetesAPI=[good]), {}, PlanSettings())
    assert [o["kind"] for o in alone.guardrails if o["kind"] in ("Role", "RoleBinding")] == ["Role", "RoleBinding"]
