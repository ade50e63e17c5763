"""The AgentRun admission decision over the store: policies, closed by default, delegation, SAR tuples."""

from __future__ import annotations

import copy
import datetime
from typing import Any

from stockade import labels
from stockade.admission import vap, webhook
from stockade.grantpolicy import admit
from stockade.grantpolicy.index import PolicyIndex
from stockade.store import Store

from .fixtures import GPU_RUN

NOW = datetime.datetime(2026, 12, 2, 7, 0, tzinfo=datetime.UTC)
RUN_NS = "ml-rome-42"
POLICY = {"namespaceSelector": {"matchLabels": {"team": "ml"}},
          "ceilings": {"gpus": {"nvidia.com/gpu": 1}, "maxDuration": "8h"},
          "egress": {"cidrs": ["10.42.0.0/16"], "hosts": ["api.example.com"], "ports": [443], "dns": True},
          "kubernetesAPI": [{"apiGroups": [""], "resources": ["configmaps", "pods/log"], "verbs": ["get", "list"]}]}


def agentrun(namespace: str = "ml", name: str = "child", **grant: Any) -> dict[str, Any]:
    spec = copy.deepcopy(GPU_RUN)
    spec["grant"].update(grant)
    return {"apiVersion": "stockade.io/v1alpha1", "kind": "AgentRun",
            "metadata": {"namespace": namespace, "name": name, "uid": f"uid-{name}", "resourceVersion": "1"},
            "spec": spec}


def world(delegation: bool = False) -> tuple[PolicyIndex, Store]:
    index, store = PolicyIndex(), Store()
    index.put_policy({"metadata": {"name": "ml-policy", "resourceVersion": "1"}, "spec": POLICY})
    index.put_namespace({"metadata": {"name": "ml", "labels": {"team": "ml"}}})
    index.put_namespace({"metadata": {"name": "web", "labels": {"team": "web"}}})
    parent = agentrun(name="rome-42", gpu=1, delegation=delegation, pods=3)
    parent["status"] = {"phase": "Running", "expiresAt": "2026-12-02T10:00:00Z", "runNamespace": RUN_NS}
    store.put_agentrun(parent)
    run_ns = {"kind": "Namespace", "metadata": {"name": RUN_NS, "resourceVersion": "1", "labels": {
        labels.AGENTRUN: "rome-42", labels.AGENTRUN_NAMESPACE: "ml", "stockade.io/agentrun-uid": "uid-rome-42"}}}
    store.put(run_ns)
    index.put_namespace(run_ns)
    return index, store


def decide(obj: dict[str, Any], index: PolicyIndex, store: Store, *, user: str = "alice",
           operation: str = "CREATE", old: dict[str, Any] | None = None) -> admit.Verdict:
    meta = obj["metadata"]
    req = admit.AgentRunRequest(operation, meta["namespace"], meta["name"], obj, old, user)
    return admit.decide(req, index=index, store=store, now=NOW)


def test_a_grant_within_the_policy_is_admitted_and_names_its_policy():
    verdict = decide(agentrun(), *world())
    assert verdict.allowed and verdict.policies == ["ml-policy"] and verdict.permissions == []


def test_the_first_escape_is_refused_with_field_policy_and_limit():
    verdict = decide(agentrun(gpu=4, egress=[{"cidr": "0.0.0.0/0", "ports": [22, 443, 3333]}]), *world())
    texts = [f.text() for f in verdict.findings]
    assert any(t.startswith("spec.grant.gpu: 4 nvidia.com/gpu asked; AgentPolicy ml-policy allows at most 1")
               for t in texts)
    assert any(t.startswith("spec.grant.egress[0].cidr: 0.0.0.0/0 asked; AgentPolicy ml-policy") for t in texts)


def test_closed_by_default_in_a_namespace_no_policy_selects():
    (only,) = decide(agentrun(namespace="web"), *world()).findings
    assert only.kind == "NoPolicy" and "web" in only.text()


def test_an_unseen_namespace_is_refused_until_seen():
    (only,) = decide(agentrun(namespace="brand-new"), *world()).findings
    assert only.kind == "NamespaceUnknown"


def test_the_second_escape_the_agents_child_is_refused_without_delegation():
    index, store = world()
    child = agentrun(namespace=RUN_NS, gpu=8, egress=[{"cidr": "0.0.0.0/0", "ports": [22]}])
    (only,) = decide(child, index, store, user=f"system:serviceaccount:{RUN_NS}:agent").findings
    assert only.kind == "DelegationNotGranted" and "ml/rome-42" in only.text()
    (again,) = decide(child, index, store, user="alice").findings  # inside a run namespace, whoever asks
    assert again.kind == "DelegationNotGranted"


def test_a_runs_service_account_may_not_create_runs_elsewhere():
    index, store = world(delegation=True)
    (only,) = decide(agentrun(namespace="ml"), index, store, user=f"system:serviceaccount:{RUN_NS}:agent").findings
    assert only.kind == "OutsideRunNamespace" and RUN_NS in only.text()


def test_with_delegation_a_child_is_carved_and_bounded_by_the_team_policy():
    index, store = world(delegation=True)
    ok = agentrun(namespace=RUN_NS, cpu="2", memory="4Gi", ephemeralStorage="1Gi", pods=1, duration="1h")
    verdict = decide(ok, index, store)
    assert verdict.allowed, [f.text() for f in verdict.findings]
    assert verdict.parent == ("ml", "rome-42") and verdict.policies == ["ml-policy"]
    store.put_agentrun(ok)  # it exists now: a second one asking the GPU again finds none left
    second = agentrun(namespace=RUN_NS, name="child-2", cpu="2", memory="4Gi", ephemeralStorage="1Gi", pods=1,
                      duration="1h")
    found = decide(second, index, store).findings
    assert [f.field for f in found] == ["spec.grant.gpu"] and "0 left of its 1" in found[0].text()


def test_unchanged_spec_updates_and_deletions_are_not_rechecked():
    index, store = world()
    too_big = agentrun(gpu=4)
    assert decide(too_big, index, store, operation="UPDATE", old=copy.deepcopy(too_big)).allowed
    gone = copy.deepcopy(too_big)
    gone["metadata"]["deletionTimestamp"] = "2026-12-02T07:00:00Z"
    assert decide(gone, index, store, operation="UPDATE", old=agentrun()).allowed
    assert not decide(too_big, index, store, operation="UPDATE", old=agentrun()).allowed


def test_granted_api_rules_become_one_review_each_of_the_requesting_user():
    rule = {"apiGroups": [""], "resources": ["configmaps", "pods/log"], "verbs": ["get"], "resourceNames": ["a"]}
    verdict = decide(agentrun(kubernetesAPI=[rule]), *world())
    assert verdict.allowed and len(verdict.permissions) == 2
    user = {"username": "alice", "uid": "u1", "groups": ["team-ml"], "extra": {"scopes": ["x"]}}
    reviews = [admit.review(p, "ml", user)["spec"] for p in verdict.permissions]
    assert reviews[1] == {"resourceAttributes": {"namespace": "ml", "verb": "get", "group": "", "resource": "pods",
                                                 "subresource": "log", "name": "a"},
                          "user": "alice", "groups": ["team-ml"], "uid": "u1", "extra": {"scopes": ["x"]}}


def test_the_webhook_entry_judges_agentruns_only_in_every_namespace_but_the_exempt_ones():
    clients = {hid: webhook.client_config(b"CA", hid, url="https://127.0.0.1:9443")
               for hid in (webhook.VALIDATE_ID, webhook.MUTATE_ID, webhook.POLICY_ID, webhook.POLICY_DEFAULTS_ID)}
    hooks = webhook.validating(clients, ["op"], ["stockade-system"])["webhooks"]
    (entry,) = [h for h in hooks if h["name"] == "agentrun-policy.stockade.io"]
    assert entry["rules"] == [{"apiGroups": ["stockade.io"], "apiVersions": ["*"], "resources": ["agentruns"],
                               "operations": ["CREATE", "UPDATE"], "scope": "Namespaced"}]
    assert entry["failurePolicy"] == "Fail" and entry["clientConfig"]["url"].endswith("/agentrun-policy")
    (names,) = entry["namespaceSelector"]["matchExpressions"]
    assert names["operator"] == "NotIn" and {"kube-system", "stockade-system"} <= set(names["values"])
    assert vap.not_operator(["op"]) in entry["matchConditions"]
    others = [h for h in hooks if h["name"] != "agentrun-policy.stockade.io"]
    assert all(h["namespaceSelector"]["matchExpressions"][0]["key"] == labels.AGENTRUN or "objectSelector" in h
               for h in others), "the other entries still match run namespaces only"


def test_defaults_fill_what_the_grant_omits_from_the_bounding_policies():
    index, store = world()
    index.put_policy({"metadata": {"name": "ml-defaults", "resourceVersion": "1"}, "spec": {
        "namespaceSelector": {"matchLabels": {"team": "ml"}}, "defaults": {"duration": "2h",
                                                                           "runtimeClassNames": ["nvidia"]}}})
    bare = agentrun(name="bare")
    del bare["spec"]["grant"]["duration"]
    req = admit.AgentRunRequest("CREATE", "ml", "bare", bare, None, "alice")
    assert admit.default_ops(req, index=index, store=store) == [
        {"op": "add", "path": "/spec/grant/duration", "value": "2h"},
        {"op": "add", "path": "/spec/grant/runtimeClassNames", "value": ["nvidia"]}]
    child = agentrun(namespace=RUN_NS, name="kid")  # a child: its parent's team namespace's policies
    del child["spec"]["grant"]["duration"]
    req = admit.AgentRunRequest("CREATE", RUN_NS, "kid", child, None, "alice")
    assert {op["path"] for op in admit.default_ops(req, index=index, store=store)} == {
        "/spec/grant/duration", "/spec/grant/runtimeClassNames"}
    elsewhere = admit.AgentRunRequest("CREATE", "web", "x", bare, None, "alice")
    assert admit.default_ops(elsewhere, index=index, store=store) == []


def test_the_defaults_hook_may_be_skipped_and_never_reaches_exempt_namespaces():
    clients = {webhook.POLICY_DEFAULTS_ID: webhook.client_config(b"CA", webhook.POLICY_DEFAULTS_ID,
                                                                 url="https://127.0.0.1:9443")}
    hook = webhook.policy_defaults_hook(clients, ["op"], ["stockade-system"])
    assert hook["failurePolicy"] == "Ignore", "a skipped default leaves the field out; validation still checks it"
    assert hook["rules"][0]["resources"] == ["agentruns"]
    assert {"kube-system", "stockade-system"} <= set(hook["namespaceSelector"]["matchExpressions"][0]["values"])
    assert hook["clientConfig"]["url"].endswith("/agentrun-policy-defaults")


def test_a_quarantined_parents_active_children_are_the_ones_to_quarantine():
    _, store = world(delegation=True)
    for name, status in (("kid-a", {"phase": "Running"}), ("kid-b", {"phase": "Quarantined",
                                                                       "quarantine": {"active": True}}),
                         ("kid-c", {"phase": "Succeeded"}), ("kid-d", {})):
        child = agentrun(namespace=RUN_NS, name=name)
        child["status"] = status
        store.put_agentrun(child)
    parent = copy.deepcopy(store.agentruns[("ml", "rome-42")])
    assert admit.children_to_quarantine(store, parent) == []  # not quarantined: nothing to do
    parent["status"]["quarantine"] = {"active": True, "reason": "SSHConnection"}
    assert sorted(admit.children_to_quarantine(store, parent)) == [(RUN_NS, "kid-a"), (RUN_NS, "kid-d")]


def test_childrens_grants_count_as_the_parents_pods():
    from decimal import Decimal

    from stockade.admission.policy import usage_of

    _, store = world(delegation=True)
    for name, cpu, pods in (("kid-a", "1", 2), ("kid-b", "500m", 1)):
        store.put_agentrun(agentrun(namespace=RUN_NS, name=name, cpu=cpu, memory="1Gi", ephemeralStorage="1Gi",
                                    gpu=0, pods=pods))
    gone = agentrun(namespace=RUN_NS, name="kid-c", cpu="8")
    gone["status"] = {"phase": "Succeeded"}
    store.put_agentrun(gone)
    usage = usage_of(admit.child_claims(store, RUN_NS))
    assert usage.pods == 3
    assert usage.taken("limits")["cpu"] == Decimal("1.5") and usage.taken("requests")["memory"] == 2 * 2**30
    assert admit.child_claims(store, "elsewhere") == []
