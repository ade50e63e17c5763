"""What the grant allows must work (issue 11 section 1): a pod without a ServiceAccount gets the agent's,
ClusterIP and headless Services when the grant names services, and grant.podToPod in the NetworkPolicies,
in detection and in the policies that bound a grant."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import pytest

from stockade import labels, plan, services
from stockade.admission.podidentity import identity_patch
from stockade.admission.policy import Request, Run, decide, gpu_patch
from stockade.api.models import AgentRunSpec, Grant
from stockade.detect import peers, rules
from stockade.detect.falco import parse
from stockade.grantpolicy.carve import Parent
from stockade.grantpolicy.carve import check as carve
from stockade.grantpolicy.ceilings import Bound, check_policy

AT = "2026-12-02T07:00:00Z"
NS = "team-rome"
API = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]
SERVICES = [{"apiGroups": [""], "resources": ["services"], "verbs": ["create", "get"]}]


def grant(**fields: Any) -> Grant:
    return Grant.model_validate({"cpu": "2", "memory": "4Gi", "pods": 3, **fields})


def spec(**fields: Any) -> AgentRunSpec:
    return AgentRunSpec.model_validate({"template": {"spec": {"containers": [{"name": "a", "image": "a:1"}]}},
                                        "grant": {"cpu": "2", "memory": "4Gi", "pods": 3, **fields}})


# The agent's ServiceAccount -----------------------------------------------------------------------------
TOKEN_VOLUME = {"name": "kube-api-access-x7k2q", "projected": {"defaultMode": 420, "sources": [
    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1",
                                                                   "fieldPath": "metadata.namespace"}}]}}]}}
TOKEN_MOUNT = {"name": "kube-api-access-x7k2q", "readOnly": True,
               "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}


def as_admitted(**spec_fields: Any) -> dict[str, Any]:
    """A pod that named no ServiceAccount, as the API server's ServiceAccount plugin hands it on."""
    container = {"name": "c", "image": "a:1", "volumeMounts": [{"name": "data", "mountPath": "/d"}, TOKEN_MOUNT]}
    body = {"serviceAccountName": "default", "serviceAccount": "default", "containers": [container],
            "initContainers": [{"name": "i", "image": "a:1", "volumeMounts": [TOKEN_MOUNT]}],
            "volumes": [{"name": "data", "emptyDir": {}}, TOKEN_VOLUME], **spec_fields}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "helper", "namespace": NS}, "spec": body}


def patched(pod: dict[str, Any], g: Grant) -> dict[str, Any]:
    return jsonpatch.apply_patch(copy.deepcopy(pod), identity_patch(pod, g))


def test_a_pod_without_a_service_account_gets_the_agents_and_no_token_without_an_api_grant() -> None:
    out = patched(as_admitted(), grant())["spec"]
    assert out["serviceAccountName"] == out["serviceAccount"] == labels.SERVICE_ACCOUNT
    assert [v["name"] for v in out["volumes"]] == ["data"]
    assert out["containers"][0]["volumeMounts"] == [{"name": "data", "mountPath": "/d"}]
    assert out["initContainers"][0]["volumeMounts"] == []


def test_with_an_api_grant_the_token_stays_and_is_the_agents() -> None:
    out = patched(as_admitted(), grant(kubernetesAPI=API))["spec"]
    assert out["serviceAccountName"] == labels.SERVICE_ACCOUNT
    assert TOKEN_VOLUME in out["volumes"] and TOKEN_MOUNT in out["containers"][0]["volumeMounts"]


def test_a_pod_that_asks_for_a_token_keeps_it_and_is_refused_as_before() -> None:
    pod = patched(as_admitted(automountServiceAccountToken=True), grant())
    assert TOKEN_VOLUME in pod["spec"]["volumes"]
    decision = decide(Request("CREATE", "", "pods", "Pod", NS, "helper", pod, None, "system:serviceaccount:x:agent"),
                      Run("team", "rome", spec()), is_operator=False)
    assert not decision.allowed and "APIAccessNotGranted" in {f.kind for f in decision.findings}


@pytest.mark.parametrize("account", ["agent", "other", "builder"])
def test_a_named_service_account_is_left_alone(account: str) -> None:
    pod = as_admitted(serviceAccountName=account, serviceAccount=account)
    assert identity_patch(pod, grant()) == []


def test_an_explicit_other_account_is_still_refused_with_a_hint() -> None:
    pod = as_admitted(serviceAccountName="other", volumes=[], automountServiceAccountToken=False)
    pod["spec"]["containers"][0].pop("volumeMounts")
    pod["spec"].pop("initContainers")
    decision = decide(Request("CREATE", "", "pods", "Pod", NS, "helper", pod, None, "system:serviceaccount:x:agent"),
                      Run("team", "rome", spec()), is_operator=False)
    assert not decision.allowed
    assert "'other' is not the agent's ServiceAccount" in decision.message and "leave it unset" in decision.message


def test_the_patched_pod_passes_the_validating_webhook() -> None:
    pod = as_admitted()  # both of the mutating webhook's patches, as its handler answers them
    pod = jsonpatch.apply_patch(pod, gpu_patch(pod, grant()) + identity_patch(pod, grant()))
    decision = decide(Request("CREATE", "", "pods", "Pod", NS, "helper", pod, None, "system:serviceaccount:x:agent"),
                      Run("team", "rome", spec()), is_operator=False)
    assert decision.allowed, decision.message


def test_a_user_volume_named_like_the_plugins_is_not_taken_away() -> None:
    mine = {"name": "kube-api-access-mine", "emptyDir": {}}
    pod = as_admitted(volumes=[mine])
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "kube-api-access-mine", "mountPath": "/m"}]
    pod["spec"].pop("initContainers")
    out = patched(pod, grant())["spec"]
    assert out["volumes"] == [mine] and out["containers"][0]["volumeMounts"][0]["name"] == "kube-api-access-mine"


def test_the_patch_is_idempotent_on_reinvocation() -> None:
    once = patched(as_admitted(), grant())
    assert identity_patch(once, grant()) == []


# Services ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "ways"), [
    ({}, []), ({"type": "ClusterIP"}, []), ({"clusterIP": "None"}, []),
    ({"type": "NodePort"}, ["spec.type"]), ({"type": "LoadBalancer"}, ["spec.type"]),
    ({"type": "ExternalName", "externalName": "x.example.com"}, ["spec.type"]),
    ({"externalIPs": ["192.0.2.1"]}, ["spec.externalIPs"]),
])
def test_service_shapes(body: dict[str, Any], ways: list[str]) -> None:
    assert [field for field, _ in services.exposure(body)] == ways


def test_only_a_create_rule_for_core_services_grants_them() -> None:
    assert services.granted(grant(kubernetesAPI=SERVICES))
    assert not services.granted(grant(kubernetesAPI=[{"apiGroups": [""], "resources": ["services"],
                                                      "verbs": ["get", "list"]}]))
    assert not services.granted(grant(kubernetesAPI=API))


def _service(body: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "Service", "metadata": {"name": "s", "namespace": NS, "uid": "u"}, "spec": body}


def test_detection_follows_the_webhook_for_services() -> None:
    granted, plain = spec(kubernetesAPI=SERVICES), spec()
    for body in ({"ports": [{"port": 80}]}, {"clusterIP": "None"}):
        assert rules.judge_object(_service(body), granted, "rome", AT) is None
        found = rules.judge_object(_service(body), plain, "rome", AT)
        assert found is not None and found.kind == "ServiceNotGranted"
    for body in ({"type": "NodePort"}, {"type": "LoadBalancer"}, {"externalIPs": ["192.0.2.1"]}):
        found = rules.judge_object(_service(body), granted, "rome", AT)
        assert found is not None and found.kind == "ServiceNotGranted" and found.severity == "high"
    found = rules.judge_object(_service({"type": "ExternalName"}), granted, "rome", AT)
    assert found is not None and found.kind == "ServiceNotGranted"


# Pod to pod -------------------------------------------------------------------------------------------
def test_pod_to_pod_is_off_by_default_and_then_has_no_policy() -> None:
    assert grant().podToPod is False
    built = plan.build(plan.RunRef("team", "rome", "uid"), spec(), {}, plan.PlanSettings())
    assert labels.POLICY_POD_TO_POD not in {o["metadata"]["name"] for o in built.guardrails}


def test_the_pod_to_pod_policy_selects_the_runs_non_quarantined_pods_both_ways() -> None:
    built = plan.build(plan.RunRef("team", "rome", "uid"), spec(podToPod=True), {}, plan.PlanSettings())
    (policy,) = [o for o in built.guardrails if o["metadata"]["name"] == labels.POLICY_POD_TO_POD]
    not_quarantined = {"matchExpressions": [{"key": labels.QUARANTINED, "operator": "DoesNotExist"}]}
    assert policy["metadata"]["namespace"] == built.namespace["metadata"]["name"]
    assert policy["spec"] == {"podSelector": not_quarantined, "policyTypes": ["Ingress", "Egress"],
                              "ingress": [{"from": [{"podSelector": not_quarantined}]}],
                              "egress": [{"to": [{"podSelector": not_quarantined}]}]}


def pod(name: str, ip: str, *, quarantined: bool = False, phase: str = "Running") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NS, "uid": f"uid-{name}", "labels": {}}
    if quarantined:
        meta["labels"][labels.QUARANTINED] = "true"
    return {"metadata": meta, "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]}}


PODS = [pod("agent", "10.244.0.2"), pod("sandbox", "10.244.0.3"), pod("bad", "10.244.0.4", quarantined=True),
        pod("done", "10.244.0.5", phase="Succeeded")]


def test_peers_are_the_runs_other_live_unquarantined_pods() -> None:
    assert peers.peer_addresses(grant(podToPod=True), PODS[0], PODS) == {"10.244.0.3"}
    assert peers.peer_addresses(grant(), PODS[0], PODS) == frozenset()
    assert peers.peer_addresses(grant(podToPod=True), PODS[2], PODS) == frozenset(), "a quarantined source"


def connection(dest: str, port: int = 8080) -> dict[str, Any]:
    fields = {"k8s.ns.name": NS, "k8s.pod.name": "agent", "fd.name": f"10.244.0.2:40112->{dest}:{port}",
              "fd.type": "ipv4", "fd.l4proto": "tcp", "evt.type": "connect", "proc.name": "python"}
    return {"rule": "Unexpected outbound connection destination", "priority": "Notice", "time": AT,
            "output": "x", "output_fields": fields}


@pytest.mark.parametrize(("podtopod", "dest", "violation"), [
    (True, "10.244.0.3", None), (False, "10.244.0.3", "UngrantedEgress"),
    (True, "10.244.0.4", "UngrantedEgress"), (True, "10.244.0.5", "UngrantedEgress"),
    (True, "10.244.9.9", "UngrantedEgress"),
])
def test_falco_connections_among_the_runs_pods(podtopod: bool, dest: str, violation: str | None) -> None:
    g = grant(podToPod=podtopod)
    found = rules.judge_runtime(parse(connection(dest)), g, {}, ["10.244.0.2"], AT,
                                peers=peers.peer_addresses(g, PODS[0], PODS))
    assert (found.kind if found else None) == violation


def test_a_generic_connection_signal_follows_pod_to_pod() -> None:
    from stockade.detect.schema import Signal
    signal = Signal.model_validate({"detector": "cilium", "kind": "Connection", "namespace": NS, "pod": "agent",
                                    "detail": "flow", "destination": {"ip": "10.244.0.3", "port": 8080}})
    on = grant(podToPod=True)
    assert rules.judge_signal(signal, on, {}, AT, peers=peers.peer_addresses(on, PODS[0], PODS)) is None
    off = rules.judge_signal(signal, grant(), {}, AT, peers=peers.peer_addresses(grant(), PODS[0], PODS))
    assert off is not None and off.kind == "UngrantedEgress"


def test_a_policy_refuses_pod_to_pod_unless_it_allows_it() -> None:
    closed = Bound.of("modest", {"namespaceSelector": {}, "egress": {"dns": True}})
    found = check_policy(spec(podToPod=True), closed)
    assert [f.field for f in found] == ["spec.grant.podToPod"] and "allowPodToPod is false" in found[0].text()
    assert check_policy(spec(), closed) == []
    opened = Bound.of("open", {"namespaceSelector": {}, "ceilings": {"allowPodToPod": True}})
    assert check_policy(spec(podToPod=True), opened) == []


def test_a_child_run_gets_pod_to_pod_only_if_its_parent_has_it() -> None:
    import datetime
    now = datetime.datetime(2026, 12, 2, 7, 0, tzinfo=datetime.UTC)
    child = spec(podToPod=True, pods=1, cpu="1", memory="1Gi")
    for has, expected in ((False, ["spec.grant.podToPod"]), (True, [])):
        parent = Parent("ml", "rome", spec(delegation=True, podToPod=has), {"phase": "Running"})
        assert [f.field for f in carve(child, parent, now=now, asked_by="x")] == expected
