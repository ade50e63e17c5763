"""The policies, webhook configurations, certificates and records, without a cluster.

The CEL itself is evaluated by the real API server in e2e/test_admission.py; here: the shape the
API server and the chart rely on.
"""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from stockade.admission import certs, vap, webhook
from stockade.admission.pending import Pending
from stockade.admission.policy import Decision, Request
from stockade.admission.record import violation
from stockade.api.models import Violation
from stockade.grantcheck import Finding
from stockade.violations import merge

OPERATOR = ["system:serviceaccount:stockade-system:stockade"]


def by_name(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in objects}


def test_policies_come_before_their_bindings_and_every_binding_has_its_policy() -> None:
    objects = vap.manifests(OPERATOR)
    kinds = [o["kind"] for o in objects]
    assert kinds == sorted(kinds, key=lambda k: k == "ValidatingAdmissionPolicyBinding")
    policies = {o["metadata"]["name"] for o in objects if o["kind"] == "ValidatingAdmissionPolicy"}
    for binding in (o for o in objects if o["kind"] == "ValidatingAdmissionPolicyBinding"):
        assert binding["spec"]["policyName"] in policies


@pytest.mark.parametrize(("binding", "actions", "audit"), [
    ("stockade-baseline", ["Deny"], None),
    ("stockade-run-namespace", ["Deny"], None),
    ("stockade-grant", ["Deny"], "NotIn"),
    ("stockade-grant-audit", ["Warn", "Audit"], "In"),
])
def test_audit_mode_relaxes_only_what_a_grant_decides(binding: str, actions: list[str], audit: str | None) -> None:
    found = by_name(vap.manifests(OPERATOR))[f"ValidatingAdmissionPolicyBinding/{binding}"]["spec"]
    assert found["validationActions"] == actions
    expressions = (found.get("matchResources") or {}).get("namespaceSelector", {}).get("matchExpressions", [])
    enforcement = [e for e in expressions if e["key"] == vap.ENFORCEMENT]
    if audit is None:
        assert not enforcement
    else:
        assert enforcement == [{"key": vap.ENFORCEMENT, "operator": audit, "values": ["audit"]}]
        assert {"key": "stockade.io/agentrun", "operator": "Exists"} in expressions


CONFINEMENT = "stockade-operator-confinement"  # the one policy that holds the operator itself (below)


def test_policies_select_run_namespaces_only_and_never_the_control_plane() -> None:
    for obj in vap.manifests(OPERATOR, ["stockade-system"]):
        if obj["kind"] != "ValidatingAdmissionPolicy" or obj["metadata"]["name"] == CONFINEMENT:
            continue
        constraints = obj["spec"]["matchConstraints"]
        names = next(e for e in constraints["namespaceSelector"]["matchExpressions"]
                     if e["key"] == "kubernetes.io/metadata.name")
        assert names["operator"] == "NotIn"
        assert {"kube-system", "kube-public", "kube-node-lease", "stockade-system"} <= set(names["values"])
        selectors = [constraints["namespaceSelector"], constraints.get("objectSelector") or {}]
        assert any({"key": "stockade.io/agentrun", "operator": "Exists"} in s.get("matchExpressions", [])
                   for s in selectors)
        assert obj["spec"]["failurePolicy"] == "Fail"


@pytest.mark.parametrize("name", ["kwok-admin", "it's-me", "back\\slash"])
def test_operator_identity_is_a_quoted_cel_string(name: str) -> None:
    condition = vap.not_operator([name])
    assert condition["expression"] == f"!(request.userInfo.username in [{vap.cel_string(name)}])"
    literal = vap.cel_string(name)
    assert literal.startswith("'") and literal.endswith("'")
    inner = literal[1:-1]
    assert inner.replace("\\\\", "").replace("\\'", "").count("'") == 0


def test_break_glass_groups_pass_in_every_policy_and_webhook() -> None:
    condition = vap.not_operator(OPERATOR, ["platform:break-glass"])
    assert condition["expression"] == (f"!(request.userInfo.username in {vap.cel_list(OPERATOR)} || "
                                       "request.userInfo.groups.exists(g, g in ['platform:break-glass']))")
    policies = [o for o in vap.manifests(OPERATOR, (), ["platform:break-glass"]) if "validations" in o["spec"]
                and o["metadata"]["name"] != CONFINEMENT]
    configs = [webhook.validating(CLIENTS, OPERATOR, exempt_groups=["platform:break-glass"]),
               webhook.mutating(CLIENTS, OPERATOR, exempt_groups=["platform:break-glass"])]
    assert len(policies) == 3
    for obj in policies:
        assert condition in obj["spec"]["matchConditions"]
    for config in configs:
        for hook in config["webhooks"]:
            assert condition in hook["matchConditions"]


def test_every_policy_exempts_the_operator_and_every_check_explains_itself() -> None:
    for obj in vap.manifests(OPERATOR):
        if obj["kind"] != "ValidatingAdmissionPolicy":
            continue
        if obj["metadata"]["name"] != CONFINEMENT:
            assert vap.not_operator(OPERATOR) in obj["spec"]["matchConditions"]
        for check in obj["spec"]["validations"]:
            assert check["message"].startswith("Stockade: ")
            assert check["reason"] == "Forbidden"


def test_no_operator_identity_refuses_to_render() -> None:
    with pytest.raises(ValueError, match="username"):
        vap.manifests([])


def test_render_is_yaml_the_chart_can_ship() -> None:
    docs = list(yaml.safe_load_all(vap.render(["system:serviceaccount:{{ .Release.Namespace }}:stockade"])))
    assert len(docs) == 9  # with the operator's confinement and its binding
    assert "{{ .Release.Namespace }}" in docs[0]["spec"]["matchConditions"][0]["expression"]


def test_the_operators_service_account_is_confined_to_run_namespaces() -> None:
    """RBAC cannot select namespaces by label: the API server refuses the operator's ServiceAccount every
    write of the kinds it manages outside run namespaces (kube-system and its own included)."""
    found = by_name(vap.manifests(OPERATOR, ["stockade-system"]))
    policy = found[f"ValidatingAdmissionPolicy/{CONFINEMENT}"]["spec"]
    assert policy["failurePolicy"] == "Fail"
    assert policy["matchConstraints"]["namespaceSelector"] == {
        "matchExpressions": [{"key": "stockade.io/agentrun", "operator": "DoesNotExist"}]}
    assert policy["matchConditions"] == [{"name": "the-stockade-operator", "expression": (
        "request.userInfo.username in ['system:serviceaccount:stockade-system:stockade']")}]
    rules = {(r["apiGroups"][0], res): r["operations"] for r in policy["matchConstraints"]["resourceRules"]
             for res in r["resources"]}
    for kind in [("", "pods"), ("", "pods/*"), ("batch", "jobs"), ("networking.k8s.io", "networkpolicies"),
                 ("rbac.authorization.k8s.io", "rolebindings"), ("", "serviceaccounts")]:
        assert rules[kind] == ["CREATE", "UPDATE", "DELETE"], kind
    assert ("", "events") not in rules, "Events on AgentRuns are posted in team namespaces"
    assert [c["expression"] for c in policy["validations"]] == ["false"]
    assert found[f"ValidatingAdmissionPolicyBinding/{CONFINEMENT}"]["spec"] == {
        "policyName": CONFINEMENT, "validationActions": ["Deny"]}
    # A person running the operator with their own credentials (make run) is not confined.
    assert f"ValidatingAdmissionPolicy/{CONFINEMENT}" not in by_name(vap.manifests(["kwok-admin"]))


CLIENTS = {hid: webhook.client_config(b"CA", hid, url="https://127.0.0.1:9443")
           for hid in (webhook.VALIDATE_ID, webhook.MUTATE_ID, webhook.AGENTRUN_MUTATE_ID, webhook.POLICY_ID,
                       webhook.POLICY_DEFAULTS_ID)}


def test_validating_webhook_is_fail_closed_short_and_scoped_to_run_namespaces() -> None:
    config = webhook.validating(CLIENTS, OPERATOR, ["stockade-system"])
    assert config["metadata"]["name"] == "stockade"
    allowlist, namespace, _agentrun_policy = config["webhooks"]  # the last: tests/unit/test_grantpolicy_webhook.py
    for hook in (allowlist, namespace):
        assert hook["failurePolicy"] == "Fail"
        assert hook["timeoutSeconds"] == 5
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["sideEffects"] == "NoneOnDryRun"
        assert vap.not_operator(OPERATOR) in hook["matchConditions"]
        assert hook["clientConfig"]["url"] == "https://127.0.0.1:9443/allowlist"
    assert allowlist["namespaceSelector"] == vap.run_namespaces(["stockade-system"])
    creates = [r for r in allowlist["rules"] if r["operations"] == ["CREATE"]]
    assert creates == [{"apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"], "operations": ["CREATE"],
                        "scope": "Namespaced"}], "every kind is judged on creation: an allowlist"
    updates = {res for r in allowlist["rules"] if r["operations"] == ["UPDATE"] for res in r["resources"]}
    assert {"pods", "pods/ephemeralcontainers", "pods/resize", "services", "jobs", "networkpolicies",
            "resourcequotas", "limitranges", "roles", "rolebindings", "serviceaccounts", "deployments",
            "statefulsets", "daemonsets", "replicasets", "cronjobs"} <= updates
    assert namespace["objectSelector"] == {"matchExpressions": [{"key": "stockade.io/agentrun", "operator": "Exists"}]}
    assert namespace["rules"][0]["resources"] == ["namespaces"]


def test_mutating_webhook_hides_gpus_on_pod_creation_and_may_be_skipped() -> None:
    hook = webhook.mutating(CLIENTS, OPERATOR)["webhooks"][0]
    assert hook["rules"] == [{"apiGroups": [""], "apiVersions": ["*"], "resources": ["pods"],
                              "operations": ["CREATE"], "scope": "Namespaced"}]
    assert hook["failurePolicy"] == "Ignore", "the validating webhook refuses what a skipped mutation left"
    assert hook["clientConfig"]["url"].endswith("/gpu-visibility")


def test_agentrun_mutation_is_fail_closed_for_agentruns_only_and_never_in_system_namespaces() -> None:
    gpu, agentruns, _policy_defaults = webhook.mutating(CLIENTS, OPERATOR, ["stockade-system"])["webhooks"]
    assert gpu["name"] == "gpu-visibility.stockade.io"
    assert agentruns["rules"] == [{"apiGroups": ["stockade.io"], "apiVersions": ["*"], "resources": ["agentruns"],
                                   "operations": ["CREATE", "UPDATE"], "scope": "Namespaced"}]
    assert agentruns["failurePolicy"] == "Fail", "a release must not skip its permission check"
    assert agentruns["namespaceSelector"] == {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
         "values": ["kube-node-lease", "kube-public", "kube-system", "stockade-system"]}]}
    assert vap.not_operator(OPERATOR) in agentruns["matchConditions"]
    assert agentruns["clientConfig"]["url"].endswith("/agentrun-defaults")


def test_in_cluster_client_config_names_the_service() -> None:
    config = webhook.client_config(b"CA", "allowlist", service=("stockade-system", "stockade-webhook"),
                                   service_port=443)
    assert config["service"] == {"namespace": "stockade-system", "name": "stockade-webhook", "path": "/allowlist",
                                 "port": 443}
    assert "url" not in config
    with pytest.raises(ValueError, match="URL or a Service"):
        webhook.client_config(b"CA", "allowlist")


def test_certificates_cover_the_names_and_are_reused(tmp_path: Path) -> None:
    names = certs.service_names("stockade-system", "stockade-webhook")
    first = certs.ensure(tmp_path, [*names, "localhost"], ["127.0.0.1"])
    cert = x509.load_pem_x509_certificate(first.cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "stockade-webhook.stockade-system.svc" in sans.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert cert.not_valid_after_utc > datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=300)
    context = ssl.create_default_context(cafile=str(first.ca))
    context.load_verify_locations(cafile=str(first.ca))  # the CA parses as a CA
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(first.cert), str(first.key))
    before = first.cert.read_bytes()
    assert certs.ensure(tmp_path, ["localhost"], ["127.0.0.1"]).cert.read_bytes() == before, "reused"
    assert certs.ensure(tmp_path, ["elsewhere"], []).cert.read_bytes() != before, "renewed for a new name"
    assert oct(first.key.stat().st_mode)[-3:] == "600"


def test_pending_pods_count_until_the_store_sees_them_or_they_expire() -> None:
    pending = Pending()
    pending.add("ns", "a", {"metadata": {"name": "a"}}, now=0)
    pending.add("ns", "b", {"metadata": {"name": "b"}}, now=0)
    pending.add("ns", "", {"metadata": {}}, now=0)  # no name yet: nothing to match it with later
    assert len(pending.unseen("ns", set(), now=1)) == 2
    assert [p["metadata"]["name"] for p in pending.unseen("ns", {"a"}, now=1)] == ["b"]
    assert pending.unseen("ns", set(), now=1, exclude="b") == []
    assert pending.unseen("ns", set(), now=100) == []
    assert pending.unseen("other", set(), now=0) == []


def test_a_violation_names_who_did_what_and_how_it_ended() -> None:
    request = Request("CREATE", "", "pods", "Pod", "ns", "p", {}, None, "alice", ("system:masters",))
    finding = Finding("HostAccess", "spec.hostNetwork", "host namespaces are never granted", "false")
    decision = Decision(False, "Stockade refused CREATE of Pod p", findings=(finding,), action="denied")
    entry = violation(request, decision, datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC))
    assert entry["time"] == "2026-01-02T03:04:05Z"
    assert entry["source"] == "admission" and entry["action"] == "denied" and entry["kind"] == "HostAccess"
    assert entry["severity"] == "critical" and entry["pod"] == "p"
    assert entry["evidence"]["user"] == "alice" and entry["evidence"]["groups"] == ["system:masters"]
    assert entry["evidence"]["findings"] == [{"kind": "HostAccess", "field": "spec.hostNetwork"}]
    Violation.model_validate(entry)  # what the CRD's status schema accepts


def test_repeated_refusals_fold_into_a_count_and_the_list_stays_short() -> None:
    def entry(detail: str, time: str = "t1") -> dict[str, Any]:
        return {"time": time, "kind": "KindNotGranted", "detail": detail, "source": "admission", "action": "denied"}

    detected = {"time": "t0", "kind": "PodExceedsGrant", "detail": "x", "source": "api", "action": "isolate"}
    merged = merge([detected, entry("a")], [entry("a", "t2"), entry("b"), entry("a", "t3")], keep=20)
    assert [(v["detail"], v.get("count")) for v in merged] == [("x", None), ("a", 3), ("b", None)]
    assert merged[1]["lastTime"] == "t3" and merged[0] == detected
    assert len(merge([], [entry(str(i)) for i in range(30)], keep=20)) == 20
