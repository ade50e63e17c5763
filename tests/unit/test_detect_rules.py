"""(grant, observation) -> Violation: the pure rules, table-driven."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from stockade.api.models import Grant
from stockade.detect import falco, rules
from stockade.detect.schema import Signal

from .fixtures import spec
from .test_detect_falco import (
    CUSTOM_SSH,
    INBOUND,
    IPV6_BRACKETS,
    MINER_POOL,
    OTHER,
    REVERSE,
    SHELL,
    SSH_22,
    SSH_NONSTD,
    STRATUM,
    event,
)

AT = "2025-06-01T12:00:01Z"
GRANT = Grant.model_validate({
    "cpu": "2", "memory": "4Gi", "pods": 2, "dns": True,
    "egress": [{"cidr": "10.42.0.0/16", "ports": [443]}, {"cidr": "2001:db8:beef::/48", "ports": [443]},
               {"host": "api.example.com", "ports": [443, 8443]}, {"cidr": "192.0.2.0/24", "ports": [53],
                                                                   "protocol": "UDP"}],
})
RESOLVED = {"api.example.com": ["203.0.113.10", "2001:db8:cafe::10"]}
POD_IPS = ["10.244.1.5", "2001:db8::5"]


# Egress ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("address", "port", "protocol", "granted"), [
    ("10.42.3.4", 443, "TCP", True),
    ("10.42.3.4", 22, "TCP", False),  # granted address, port not granted
    ("10.42.3.4", 443, "UDP", False),  # granted address and port, not the protocol
    ("10.43.0.1", 443, "TCP", False),
    ("2001:db8:beef:1::9", 443, "TCP", True),
    ("2001:db8:bee0::9", 443, "TCP", False),
    ("203.0.113.10", 8443, "TCP", True),  # a granted host's resolved address
    ("2001:db8:cafe::10", 443, None, True),
    ("203.0.113.11", 443, "TCP", False),
    ("::ffff:10.42.0.1", 443, "TCP", True),  # IPv4-mapped IPv6 is the IPv4 address
    ("192.0.2.8", 53, "UDP", True),
    ("10.96.0.10", 53, "UDP", True),  # the cluster resolver (grant.dns), no addresses configured
    ("8.8.8.8", 53, "UDP", False),  # DNS elsewhere is egress like any other
    ("127.0.0.1", 22, "TCP", True),
    ("10.42.3.4", None, None, True),  # port unknown: the address decides
    ("bogus", 443, "TCP", False),
])
def test_judge_egress(address: str, port: int | None, protocol: str | None, granted: bool) -> None:
    assert rules.judge_egress(GRANT, RESOLVED, address, port, protocol).granted is granted


def test_dns_goes_only_to_the_configured_resolver() -> None:
    verdict = rules.judge_egress(GRANT, {}, "10.96.0.11", 53, "UDP", dns_addresses=["10.96.0.10"])
    assert not verdict.granted
    assert rules.judge_egress(GRANT, {}, "10.96.0.10", 53, "UDP", dns_addresses=["10.96.0.10"]).granted


def test_no_dns_grant_means_no_dns() -> None:
    narrow = GRANT.model_copy(update={"dns": False, "egress": []})
    assert not rules.judge_egress(narrow, {}, "10.96.0.10", 53, "UDP").granted


# Runtime events ------------------------------------------------------------------------------------
def _at(payload: dict[str, Any], **fields: Any) -> dict[str, Any]:
    out = copy.deepcopy(payload)
    out["output_fields"].update(fields)
    return out


@pytest.mark.parametrize(("payload", "kind", "severity", "in_detail"), [
    (SSH_NONSTD, "SSHConnection", "high", "203.0.113.7:443 (203.0.113.7:443/TCP is not in the egress grant)"),
    (SSH_22, "SSHConnection", "high", "198.51.100.9:22"),
    # SSH is a violation even to a granted address: a tunnel there is still a way out.
    (_at(SSH_NONSTD, **{"fd.name": "10.244.1.5:40112->10.42.0.9:443"}), "SSHConnection", "high",
     "grant.egress[0] allows 10.42.0.0/16"),
    (STRATUM, "CryptoMiner", "critical", "stratum+tcp://pool.example:3333"),
    (MINER_POOL, "CryptoMiner", "critical", "192.0.2.44:3333"),
    (SHELL, "ShellInContainer", "medium", "bash -i"),
    (REVERSE, "ReverseShell", "critical", "203.0.113.50:4444"),
    (IPV6_BRACKETS, None, None, None),  # an outbound connection the grant allows
    (_at(IPV6_BRACKETS, **{"fd.name": "[2001:db8::5]:50000->[2001:db8:dead::1]:443"}), "UngrantedEgress", "high",
     "[2001:db8:dead::1]:443"),
    (INBOUND, None, None, None),  # inbound to the pod: not egress
    (CUSTOM_SSH, "SSHConnection", "high", "203.0.113.1:22"),
    (OTHER, "RuntimeAlert", "medium", "Read sensitive file untrusted"),
    # Whatever rule reported it, an outbound connection to an ungranted destination is a violation.
    (_at(OTHER, **{"fd.name": "10.244.1.5:3000->198.51.100.77:8080", "evt.type": "connect"}), "UngrantedEgress",
     "high", "198.51.100.77:8080"),
    (event("Contact K8S API Server From Container", **{"fd.name": "10.244.1.5:3000->10.96.0.1:443"}),
     "UngrantedEgress", "high", "10.96.0.1:443"),
])
def test_judge_runtime(payload: dict[str, Any], kind: str | None, severity: str | None, in_detail: str | None) -> None:
    found = rules.judge_runtime(falco.parse(payload), GRANT, RESOLVED, POD_IPS, AT)
    if kind is None:
        assert found is None
        return
    assert found is not None
    assert (found.kind, found.severity, found.source, found.pod, found.time) == (kind, severity, "runtime", "rome", AT)
    assert in_detail is not None and in_detail in found.detail
    assert (found.evidence or {})["rule"] == payload["rule"]


def test_runtime_connection_to_the_pods_own_address_is_inbound() -> None:
    payload = event("Unexpected outbound connection destination",
                    **{"fd.name": "203.0.113.9:5000->10.244.1.5:8080", "fd.sip": "10.244.1.5"})
    parsed = falco.parse(payload)
    assert rules.judge_runtime(parsed, GRANT, RESOLVED, POD_IPS, AT) is None


# Generic signals -------------------------------------------------------------------------------------
def _signal(**fields: Any) -> Signal:
    base: dict[str, Any] = {"detector": "hubble", "namespace": "ns", "pod": "rome", "kind": "Connection",
                            "detail": "flow"}
    base.update(fields)
    return Signal.model_validate(base)


@pytest.mark.parametrize(("signal", "kind", "severity"), [
    (_signal(destination={"ip": "10.42.0.1", "port": 443, "protocol": "TCP"}), None, None),
    (_signal(destination={"ip": "10.42.0.1", "port": 22, "protocol": "TCP"}), "UngrantedEgress", "high"),
    (_signal(kind="UngrantedEgress", severity="critical", destination={"ip": "198.51.100.1"}), "UngrantedEgress",
     "critical"),
    (_signal(kind="TetragonPrivilegeEscalation", severity="critical"), "TetragonPrivilegeEscalation", "critical"),
    (_signal(kind="CryptoMiner", destination={"ip": "10.42.0.1", "port": 443}), "CryptoMiner", "high"),
])
def test_judge_signal(signal: Signal, kind: str | None, severity: str | None) -> None:
    found = rules.judge_signal(signal, GRANT, RESOLVED, AT)
    if kind is None:
        assert found is None
        return
    assert found is not None
    assert (found.kind, found.severity, found.source, found.pod) == (kind, severity, "signal", "rome")
    assert found.detail.startswith("hubble: flow")


# API: pods -------------------------------------------------------------------------------------------
def pod(name: str, created: str, *, cpu: str = "1", gpu: int = 0, phase: str = "Running", **spec_fields: Any
        ) -> dict[str, Any]:
    limits: dict[str, str] = {"cpu": cpu, "memory": "1Gi"}
    if gpu:
        limits["nvidia.com/gpu"] = str(gpu)
    body: dict[str, Any] = {"containers": [{"name": "agent", "image": "a:1", "resources": {"limits": limits}}],
                            "nodeName": "gpu-0", "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler",
                            "serviceAccount": "agent", "serviceAccountName": "agent", "priority": 0}
    body.update(spec_fields)
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "creationTimestamp": created},
            "spec": body, "status": {"phase": phase, "podIP": "10.244.1.5"}}


@pytest.mark.parametrize(("pods", "grant", "expected"), [
    ([pod("a", "1")], {}, []),
    ([pod("a", "1"), pod("b", "2")], {"pods": 2}, []),
    ([pod("a", "1"), pod("b", "2"), pod("c", "3")], {"pods": 2}, [("PodsBeyondGrant", "c")]),
    ([pod("b", "2"), pod("a", "1", cpu="1.5")], {"cpu": "2", "pods": 2}, [("PodExceedsGrant", "b")]),  # oldest first
    ([pod("a", "1", cpu="4")], {"cpu": "2"}, [("PodExceedsGrant", "a")]),  # the grant was narrowed under it
    ([pod("a", "1", gpu=1)], {}, [("PodExceedsGrant", "a")]),
    ([pod("a", "1", gpu=1)], {"gpu": 1, "gpuResource": "nvidia.com/gpu"}, []),
    ([pod("a", "1", hostNetwork=True)], {}, [("PodExceedsGrant", "a")]),
    ([pod("a", "1", ephemeralContainers=[{"name": "debugger", "image": "busybox"}])], {},
     [("PodExceedsGrant", "a")]),
    ([pod("a", "1"), pod("b", "2", phase="Succeeded"), pod("c", "3")], {"pods": 2}, []),
])
def test_judge_pods(pods: list[dict[str, Any]], grant: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    granted = Grant.model_validate({"cpu": "8", "memory": "32Gi", "pods": 1, **grant})
    found = rules.judge_pods(pods, granted, AT)
    assert [(v.kind, v.pod) for v in found] == expected
    for v in found:
        assert v.source == "api" and (v.evidence or {})["uid"] == f"uid-{v.pod}"


def test_pod_detail_names_the_field_and_the_grant() -> None:
    [found] = rules.judge_pods([pod("a", "1", cpu="4")], Grant(cpu="2", memory="4Gi"), AT)
    assert "limits.cpu" in found.detail and "spec.grant.cpu" in found.detail


# API: other objects -----------------------------------------------------------------------------------
def obj(kind: str, name: str = "x", ours: bool = False, spec_body: dict[str, Any] | None = None,
        **meta: Any) -> dict[str, Any]:
    found: dict[str, Any] = {"name": name, "namespace": "ns", "uid": f"uid-{name}", **meta}
    if ours:
        found["labels"] = {"app.kubernetes.io/managed-by": "stockade", "stockade.io/agentrun": "rome"}
    return {"kind": kind, "metadata": found, "spec": spec_body or {}}


EDITED = [{"manager": "stockade", "operation": "Apply", "time": "2025-06-01T11:00:00Z"},
          {"manager": "kubectl-patch", "operation": "Update", "time": "2025-06-01T11:30:00Z"}]
STATUS_ONLY = [{"manager": "stockade", "operation": "Apply", "time": "2025-06-01T11:00:00Z"},
               {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status",
                "time": "2025-06-01T11:00:01Z"}]


@pytest.mark.parametrize(("body", "workload", "kind", "severity"), [
    (obj("Service", spec_body={"type": "ClusterIP", "ports": [{"port": 80}]}), "Pod", "ServiceNotGranted", "medium"),
    (obj("Service", spec_body={"type": "NodePort"}), "Pod", "ServiceNotGranted", "high"),
    (obj("Service", spec_body={"externalIPs": ["198.51.100.1"]}), "Pod", "ServiceNotGranted", "high"),
    (obj("Deployment"), "Pod", "WorkloadNotGranted", "high"),
    (obj("ReplicaSet", ownerReferences=[{"kind": "Deployment", "name": "x"}]), "Pod", None, None),
    (obj("ReplicaSet"), "Pod", "WorkloadNotGranted", "high"),
    (obj("CronJob"), "Pod", "WorkloadNotGranted", "high"),
    (obj("Job", "rome", ours=True), "Job", None, None),  # the run's own workload
    (obj("Job", "rome", ours=True), "Pod", "WorkloadNotGranted", "high"),
    (obj("Job", "other"), "Job", "WorkloadNotGranted", "high"),
    (obj("Job", ownerReferences=[{"kind": "CronJob", "name": "x"}]), "Pod", None, None),
    (obj("NetworkPolicy", "allow-all"), "Pod", "NetworkPolicyNotGranted", "high"),
    (obj("RoleBinding", "admin"), "Pod", "RBACNotGranted", "high"),
    (obj("NetworkPolicy", "stockade-egress", ours=True), "Pod", None, None),
    (obj("NetworkPolicy", "stockade-egress", ours=True, managedFields=EDITED), "Pod", "GuardrailEdited", "medium"),
    (obj("ResourceQuota", "stockade-grant", ours=True, managedFields=STATUS_ONLY), "Pod", None, None),
    (obj("ResourceQuota", "stockade-grant", ours=True, managedFields=EDITED), "Pod", "GuardrailEdited", "medium"),
    (obj("ResourceQuota", "someone-elses"), "Pod", None, None),  # another quota can only narrow
    (obj("Service", deletionTimestamp="2025-01-01T00:00:00Z"), "Pod", None, None),
    (obj("ConfigMap"), "Pod", None, None),
])
def test_judge_object(body: dict[str, Any], workload: str, kind: str | None, severity: str | None) -> None:
    found = rules.judge_object(body, spec(workload=workload), "rome", AT)
    if kind is None:
        assert found is None
        return
    assert found is not None
    assert (found.kind, found.severity, found.source, found.pod) == (kind, severity, "api", None)
    assert found.evidence and found.evidence["object"]["name"] == body["metadata"]["name"]


def test_guardrail_edit_names_the_manager() -> None:
    found = rules.guardrail_edit(obj("NetworkPolicy", "stockade-egress", ours=True, managedFields=EDITED), AT)
    assert found is not None and "kubectl-patch" in found.detail and found.evidence
    assert found.evidence["editedAt"] == "2025-06-01T11:30:00Z"


@pytest.mark.parametrize(("api", "kind", "allowed"), [
    ([], "Service", False),
    ([{"apiGroups": [""], "resources": ["services"], "verbs": ["create"]}], "Service", True),
    ([{"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list"]}], "Service", False),
    ([{"apiGroups": ["apps"], "resources": ["*"], "verbs": ["patch"]}], "Deployment", True),
    ([{"apiGroups": ["apps"], "resources": ["*"], "verbs": ["patch"]}], "Service", False),
    ([{"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["delete"]}], "NetworkPolicy",
     True),
])
def test_agent_may(api: list[dict[str, Any]], kind: str, allowed: bool) -> None:
    granted = Grant.model_validate({"cpu": "1", "memory": "1Gi", "kubernetesAPI": api})
    assert rules.agent_may(granted, kind) is allowed


def test_pod_violations_are_always_attributable_objects_only_with_rbac() -> None:
    [pod_level] = rules.judge_pods([pod("a", "1", cpu="4")], Grant(cpu="2", memory="4Gi"), AT)
    assert rules.attributable(pod_level, "Pod", Grant(cpu="2", memory="4Gi"))
    service = rules.judge_object(obj("Service"), spec(), "rome", AT)
    assert service is not None and not rules.attributable(service, "Service", Grant(cpu="2", memory="4Gi"))


# Usage metrics ---------------------------------------------------------------------------------------
GPU_GRANT = Grant.model_validate({"cpu": "8", "memory": "32Gi", "gpu": 2, "gpuResource": "nvidia.com/gpu"})
NO_GPU = Grant.model_validate({"cpu": "8", "memory": "32Gi"})
S = rules.GpuSample


@pytest.mark.parametrize(("the_pod", "samples", "grant", "kind"), [
    (pod("a", "1"), [S("0", util=87.0)], NO_GPU, "GPUNotGranted"),
    (pod("a", "1"), [S("0", memory_mib=2048.0)], NO_GPU, "GPUNotGranted"),
    (pod("a", "1"), [S("0", util=0.0, memory_mib=0.0)], NO_GPU, None),  # a device seen, idle
    (pod("a", "1"), [S("0", util=50.0)], GPU_GRANT, "GPUNotGranted"),  # the run has GPUs, this pod did not ask
    (pod("a", "1", gpu=1), [S("0", util=90.0)], GPU_GRANT, None),
    (pod("a", "1", gpu=1), [S("0", util=90.0), S("1", util=40.0)], GPU_GRANT, "GPUsBeyondGrant"),
    (pod("a", "1", gpu=2), [S("0", util=90.0), S("1", memory_mib=10.0)], GPU_GRANT, None),
    (pod("a", "1", gpu=1), [S("0", util=90.0), S("0", memory_mib=100.0), S("1", util=0.0)], GPU_GRANT, None),
])
def test_judge_gpu(the_pod: dict[str, Any], samples: list[rules.GpuSample], grant: Grant, kind: str | None) -> None:
    found = rules.judge_gpu(the_pod, samples, grant, AT)
    assert (found.kind if found else None) == kind
    if found:
        assert found.source == "metrics" and found.pod == "a" and found.evidence


def test_judge_gpu_thresholds() -> None:
    samples = [S("0", util=3.0, memory_mib=200.0)]
    assert rules.judge_gpu(pod("a", "1"), samples, NO_GPU, AT, util_threshold=5, memory_threshold_mib=256) is None
    assert rules.judge_gpu(pod("a", "1"), samples, NO_GPU, AT, util_threshold=2, memory_threshold_mib=256)


@pytest.mark.parametrize(("rate", "limit", "kind"), [
    (1_000.0, 0.0, None), (1_000.0, 10_000.0, None), (20_000.0, 10_000.0, "EgressRateExceeded"),
])
def test_judge_egress_rate(rate: float, limit: float, kind: str | None) -> None:
    found = rules.judge_egress_rate("a", rate, limit, "1m", AT)
    assert (found.kind if found else None) == kind


@pytest.mark.parametrize(("severity", "minimum", "expected"), [
    ("low", "low", True), ("low", "medium", False), ("critical", "high", True), ("medium", "high", False),
])
def test_at_least(severity: str, minimum: str, expected: bool) -> None:
    assert rules.at_least(severity, minimum) is expected


def test_every_kind_has_a_known_severity() -> None:
    assert set(rules.KINDS.values()) <= set(rules.SEVERITIES)
