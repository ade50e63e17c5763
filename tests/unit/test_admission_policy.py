"""policy.decide, table-driven: what may exist in a run namespace, for whom, in which mode."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from stockade.admission import policy
from stockade.admission.policy import Request, Run, decide, mutate_pod, usage_of
from stockade.api.models import AgentRunSpec

NS = "team-rome"
AGENT = f"system:serviceaccount:{NS}:agent"
ADMIN = "alice"
OPERATOR = "system:serviceaccount:stockade-system:stockade"


def grant(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"cpu": "4", "memory": "8Gi", "ephemeralStorage": "10Gi", "pods": 3}
    base.update(changes)
    return base


def run(enforcement: str = "enforce", status: dict[str, Any] | None = None, pods: list[dict[str, Any]] | None = None,
        terminating: bool = False, workload: str = "Pod", **grant_changes: Any) -> Run:
    spec = AgentRunSpec.model_validate({
        "template": {"spec": {"containers": [{"name": "agent", "image": "agent:1"}]}},
        "grant": grant(**grant_changes), "enforcement": enforcement, "workload": workload})
    return Run("team", "rome", spec, status or {}, usage_of(pods or []), terminating)


HIDDEN = {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}


def container(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "c", "image": "agent:1", "env": [HIDDEN],
                            "resources": {"limits": {"cpu": "500m", "memory": "1Gi"}}}
    base.update(fields)
    return base


def pod(name: str = "p", labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
        containers: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NS}
    if labels:
        meta["labels"] = labels
    if annotations:
        meta["annotations"] = annotations
    body: dict[str, Any] = {"serviceAccountName": "agent", "containers": containers or [container()]}
    body.update(spec)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": body}


def template_of(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    template = {"metadata": {"labels": {"a": "b"}}, "spec": spec}
    if kind == "CronJob":
        return {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": template}}}
    return {"selector": {"matchLabels": {"a": "b"}}, "template": template}


def req(operation: str, group: str, resource: str, kind: str, obj: dict[str, Any] | None,  # noqa: PLR0917
        old: dict[str, Any] | None = None, user: str = AGENT, subresource: str = "", name: str = "") -> Request:
    body = obj if obj is not None else old or {}
    meta = body.get("metadata") or {}
    return Request(operation, group, resource, kind, meta.get("namespace", NS), name or meta.get("name", ""),
                   obj, old, user, subresource=subresource)


def create_pod(body: dict[str, Any], user: str = AGENT) -> Request:
    return req("CREATE", "", "pods", "Pod", body, user=user)


def obj(kind: str, name: str, spec: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": kind, "metadata": {"name": name, "namespace": NS}, **top}
    if spec is not None:
        out["spec"] = spec
    return out


GPU = {"gpu": 1, "gpuResource": "nvidia.com/gpu"}
CONFIGMAPS = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]


def TOKEN_VOLUME(audience: str | None = None) -> dict[str, Any]:
    token: dict[str, Any] = {"path": "token"}
    if audience:
        token["audience"] = audience
    return {"name": "token", "projected": {"sources": [{"serviceAccountToken": token}]}}


SERVICES = [{"apiGroups": [""], "resources": ["services"], "verbs": ["create"]}]
QUARANTINED = {"stockade.io/quarantined": "true"}
RAY = {"kind": "RayCluster", "metadata": {"name": "r", "namespace": NS}, "spec": {}}
GPU_LIMITS = {"limits": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"}}

# (case, request, run, refused finding kind or None when allowed, words the message must contain)
CASES: list[tuple[str, Request, Run, str | None, list[str]]] = [
    ("plain pod", create_pod(pod()), run(), None, []),
    ("cpu beyond what is left", create_pod(pod(containers=[container(resources={"limits": {"cpu": "3"}})])),
     run(pods=[pod("a", containers=[container(resources={"limits": {"cpu": "2"}})])]),
     "ResourceExceedsGrant", ["limits.cpu", "2 more", "spec.grant.cpu"]),
    ("cpu within what is left", create_pod(pod(containers=[container(resources={"limits": {"cpu": "2"}})])),
     run(pods=[pod("a", containers=[container(resources={"limits": {"cpu": "2"}})])]), None, []),
    ("terminated pods hold nothing", create_pod(pod(containers=[container(resources={"limits": {"cpu": "4"}})])),
     run(pods=[{**pod("a", containers=[container(resources={"limits": {"cpu": "4"}})]),
                "status": {"phase": "Succeeded"}}]), None, []),
    ("memory beyond the grant", create_pod(pod(containers=[container(resources={"limits": {"memory": "9Gi"}})])),
     run(), "ResourceExceedsGrant", ["memory", "spec.grant.memory"]),
    ("ephemeral storage beyond the grant",
     create_pod(pod(containers=[container(resources={"limits": {"ephemeral-storage": "11Gi"}})])),
     run(), "ResourceExceedsGrant", ["ephemeral-storage", "spec.grant.ephemeralStorage"]),
    ("more pods than granted", create_pod(pod()), run(pods=[pod("a"), pod("b"), pod("c")]),
     "PodsExceedGrant", ["3 pod(s)", "spec.grant.pods"]),
    ("gpu without a gpu grant", create_pod(pod(containers=[container(resources=GPU_LIMITS)])), run(),
     "GPUNotGranted", ["nvidia.com/gpu", "spec.grant.gpu"]),
    ("gpu within the grant", create_pod(pod(containers=[container(resources=GPU_LIMITS, env=[])])), run(**GPU),
     None, []),
    ("more gpus than left", create_pod(pod(containers=[container(resources=GPU_LIMITS, env=[])])),
     run(pods=[pod("a", containers=[container(resources=GPU_LIMITS, env=[])])], **GPU),
     "ResourceExceedsGrant", ["nvidia.com/gpu", "spec.grant.gpu"]),
    ("another gpu resource", create_pod(pod(containers=[container(
        resources={"limits": {"nvidia.com/mig-1g.10gb": "1"}}, env=[])])), run(**GPU),
     "GPUNotGranted", ["nvidia.com/mig-1g.10gb", "nvidia.com/gpu"]),
    ("visible devices without a gpu request", create_pod(pod(containers=[container(
        env=[{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}])])), run(**GPU),
     "GPUNotGranted", ["NVIDIA_VISIBLE_DEVICES", "void"]),
    ("driver capabilities without a gpu request", create_pod(pod(containers=[container(
        env=[HIDDEN, {"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "all"}])])), run(),
     "GPUNotGranted", ["NVIDIA_DRIVER_CAPABILITIES"]),
    ("visible devices from a configmap", create_pod(pod(containers=[container(
        env=[{"name": "NVIDIA_VISIBLE_DEVICES", "valueFrom": {"configMapKeyRef": {"name": "x", "key": "y"}}}])])),
     run(), "GPUNotGranted", ["a value from elsewhere"]),
    ("image default left visible (mutation skipped)", create_pod(pod(containers=[container(env=[])])), run(),
     "GPUNotGranted", ["NVIDIA_VISIBLE_DEVICES is not set", "CUDA"]),
    ("gpu container overriding the device plugin", create_pod(pod(containers=[container(
        resources=GPU_LIMITS, env=[{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}])])), run(**GPU),
     "GPUNotGranted", ["overrides the GPUs the device plugin allocated"]),
    ("gpu container with envFrom and no prefix", create_pod(pod(containers=[container(
        resources=GPU_LIMITS, env=[], envFrom=[{"configMapRef": {"name": "x"}}])])), run(**GPU),
     "GPUNotGranted", ["envFrom", "prefix"]),
    ("cdi device annotation", create_pod(pod(annotations={"cdi.k8s.io/gpu": "nvidia.com/gpu=all"})), run(),
     "GPUNotGranted", ["device annotation"]),
    ("dynamic resource claims", create_pod(pod(resourceClaims=[{"name": "gpu", "resourceClaimName": "x"}])), run(),
     "ResourceNotGranted", ["resourceClaims"]),
    ("runtime class not granted", create_pod(pod(runtimeClassName="nvidia")), run(),
     "RuntimeClassNotGranted", ["nvidia", "spec.grant.runtimeClassNames"]),
    ("runtime class granted", create_pod(pod(runtimeClassName="nvidia")), run(runtimeClassNames=["nvidia"]), None, []),
    ("host path device", create_pod(pod(volumes=[{"name": "dev", "hostPath": {"path": "/dev/nvidia0"}}])), run(),
     "VolumeNotAllowed", ["hostPath", "host paths are never granted"]),
    ("privileged", create_pod(pod(containers=[container(securityContext={"privileged": True})])), run(),
     "PrivilegeNotAllowed", ["securityContext.privileged"]),
    ("host network", create_pod(pod(hostNetwork=True)), run(), "HostAccess", ["hostNetwork"]),
    ("host pid", create_pod(pod(hostPID=True)), run(), "HostAccess", ["hostPID"]),
    ("host ipc", create_pod(pod(hostIPC=True)), run(), "HostAccess", ["hostIPC"]),
    ("added capabilities", create_pod(pod(containers=[container(
        securityContext={"capabilities": {"add": ["NET_ADMIN"]}})])),
     run(), "PrivilegeNotAllowed", ["capabilities.add"]),
    ("unconfined apparmor", create_pod(pod(securityContext={"appArmorProfile": {"type": "Unconfined"}})), run(),
     "PrivilegeNotAllowed", ["appArmorProfile"]),
    ("spc_t selinux", create_pod(pod(containers=[container(securityContext={"seLinuxOptions": {"type": "spc_t"}})])),
     run(), "PrivilegeNotAllowed", ["seLinuxOptions.type"]),
    ("another service account", create_pod(pod(serviceAccountName="default")), run(),
     "ServiceAccountNotAllowed", ["'agent'"]),
    ("ephemeral containers in the spec", create_pod(pod(ephemeralContainers=[{"name": "x", "image": "y"}])), run(),
     "FieldNotAllowed", ["ephemeralContainers"]),
    ("quarantine label on a new pod", create_pod(pod(labels={"stockade.io/quarantined": "true"})), run(),
     "QuarantineLabelChange", ["quarantine label"]),
    # pods created by the Job controller are judged like anyone's
    ("job controller pod beyond the grant", create_pod(pod(containers=[container(resources={"limits": {"cpu": "5"}})]),
                                                       user="system:serviceaccount:kube-system:job-controller"),
     run(), "ResourceExceedsGrant", ["limits.cpu"]),
    # other compute
    ("a job of the agent's", req("CREATE", "batch", "jobs", "Job", obj("Job", "j", template_of("Job", pod()["spec"]))),
     run(), "WorkloadNotGranted", ["Job", "spec.grant.pods"]),
    ("an admin's job", req("CREATE", "batch", "jobs", "Job", obj("Job", "j", template_of("Job", pod()["spec"])),
                           user=ADMIN), run(workload="Job"), "WorkloadNotGranted", ["only Stockade"]),
    ("relabelling a job", req("UPDATE", "batch", "jobs", "Job", obj("Job", "j", {"parallelism": 1}, status={}),
                              obj("Job", "j", {"parallelism": 1})), run(), None, []),
    ("widening a job", req("UPDATE", "batch", "jobs", "Job", obj("Job", "j", {"parallelism": 9}),
                           obj("Job", "j", {"parallelism": 1})), run(), "WorkloadNotGranted", []),
    *[(f"a {kind}", req("CREATE", group, plural, kind, obj(kind, "w", template_of(kind, pod()["spec"])), user=user),
       run(), "WorkloadNotGranted", [kind, "spec.grant.pods"])
      for (group, plural), kind in policy.WORKLOADS.items() for user in (AGENT, ADMIN)],
    # ways in and out
    ("a cluster ip service", req("CREATE", "", "services", "Service",
                                 obj("Service", "s", {"ports": [{"port": 80}]}), user=ADMIN),
     run(), "ServiceNotGranted", ["a way in", "spec.grant.kubernetesAPI"]),
    ("a cluster ip service by the agent without services granted",
     req("CREATE", "", "services", "Service", obj("Service", "s", {"ports": [{"port": 80}]})),
     run(kubernetesAPI=CONFIGMAPS), "ServiceNotGranted", ["a way in", "does not name services"]),
    # grant.kubernetesAPI names services: ClusterIP and headless ones are the agent's
    ("a cluster ip service with services granted", req("CREATE", "", "services", "Service",
                                                       obj("Service", "s", {"ports": [{"port": 80}]})),
     run(kubernetesAPI=SERVICES), None, []),
    ("an explicit ClusterIP service with services granted",
     req("CREATE", "", "services", "Service", obj("Service", "s", {"type": "ClusterIP", "ports": [{"port": 80}]})),
     run(kubernetesAPI=SERVICES), None, []),
    ("a headless service with services granted",
     req("CREATE", "", "services", "Service", obj("Service", "s", {"clusterIP": "None", "selector": {"a": "b"}})),
     run(kubernetesAPI=SERVICES), None, []),
    ("a cluster ip service's ports changed with services granted",
     req("UPDATE", "", "services", "Service", obj("Service", "s", {"ports": [{"port": 81}]}),
         obj("Service", "s", {"ports": [{"port": 80}]})),
     run(kubernetesAPI=SERVICES), None, []),
    ("a wildcard-free rule for other kinds does not grant services",
     req("CREATE", "", "services", "Service", obj("Service", "s", {})),
     run(kubernetesAPI=[{"apiGroups": ["apps"], "resources": ["services"], "verbs": ["create"]}]),
     "ServiceNotGranted", ["does not name services"]),
    ("load balancer", req("CREATE", "", "services", "Service", obj("Service", "s", {"type": "LoadBalancer"})),
     run(kubernetesAPI=SERVICES),
     "ServiceNotGranted", ["LoadBalancer", "outside traffic"]),
    ("node port", req("CREATE", "", "services", "Service", obj("Service", "s", {"type": "NodePort"}), user=ADMIN),
     run(kubernetesAPI=SERVICES),
     "ServiceNotGranted", ["NodePort"]),
    ("external name", req("CREATE", "", "services", "Service", obj("Service", "s", {"type": "ExternalName"})),
     run(kubernetesAPI=SERVICES),
     "ServiceNotGranted", ["ExternalName", "cluster DNS at a name outside"]),
    ("external ips", req("CREATE", "", "services", "Service", obj("Service", "s", {"externalIPs": ["1.2.3.4"]})),
     run(kubernetesAPI=SERVICES),
     "ServiceNotGranted", ["externalIPs"]),
    ("service turned into a load balancer", req("UPDATE", "", "services", "Service",
                                                obj("Service", "s", {"type": "LoadBalancer"}), obj("Service", "s", {})),
     run(), "ServiceNotGranted", ["LoadBalancer"]),
    # the fence
    *[(f"{verb} {kind} by {who}", req(verb, group, plural, kind, None if verb == "DELETE" else obj(kind, "stockade-x"),
                                      obj(kind, "stockade-x") if verb != "CREATE" else None, user=who),
       run(), "GuardrailChange", [kind, "only the Stockade operator", "spec.grant"])
      for (group, plural), kind in policy.GUARDRAILS.items() for verb in ("CREATE", "UPDATE", "DELETE")
      for who in (AGENT, ADMIN)],
    ("default service account from the control plane",
     req("CREATE", "", "serviceaccounts", "ServiceAccount", obj("ServiceAccount", "default"),
         user=policy.SERVICE_ACCOUNT_CONTROLLER), run(), None, []),
    ("another service account from the control plane",
     req("CREATE", "", "serviceaccounts", "ServiceAccount", obj("ServiceAccount", "sneaky"),
         user=policy.SERVICE_ACCOUNT_CONTROLLER), run(), "GuardrailChange", []),
    ("guardrails deleted with their namespace",
     req("DELETE", "networking.k8s.io", "networkpolicies", "NetworkPolicy", None, obj("NetworkPolicy", "x"),
         user=policy.NAMESPACE_CONTROLLER), run(terminating=True), None, []),
    ("relabelling the run namespace", req("UPDATE", "", "namespaces", "Namespace", {"metadata": {"name": NS}},
                                          {"metadata": {"name": NS}}, user=ADMIN, name=NS),
     run(), "RunNamespaceChange", ["AgentRun team/rome"]),
    ("deleting the run namespace", req("DELETE", "", "namespaces", "Namespace", None, {"metadata": {"name": NS}},
                                       user=ADMIN, name=NS), run(), "RunNamespaceChange", []),
    ("removing the quarantine label", req("UPDATE", "", "pods", "Pod", pod(), pod(labels=QUARANTINED), user=ADMIN),
     run(), "QuarantineLabelChange", ["stockade.io/quarantined"]),
    ("labelling a pod otherwise", req("UPDATE", "", "pods", "Pod", pod(labels={"x": "y"}), pod(), user=ADMIN), run(),
     None, []),
    ("an update keeps what the control plane set",
     req("UPDATE", "", "pods", "Pod", pod(nodeName="n1", labels={"x": "y"}), pod(nodeName="n1"), user="system:node:n1"),
     run(), None, []),
    ("a debug container", req("UPDATE", "", "pods", "Pod", pod(), pod(), user=ADMIN, subresource="ephemeralcontainers"),
     run(), "EphemeralContainerNotGranted", ["debug containers"]),
    ("an in-place resize beyond the grant", req("UPDATE", "", "pods", "Pod",
                                                pod(containers=[container(resources={"limits": {"cpu": "5"}})]), pod(),
                                                subresource="resize"), run(), "ResourceExceedsGrant", ["limits.cpu"]),
    # tokens (issue 14.5): no API grant, no token; with one, only for the API server's audience
    ("a projected token without an API grant", create_pod(pod(volumes=[TOKEN_VOLUME()])), run(),
     "APIAccessNotGranted", ["ServiceAccount token", "spec.grant.kubernetesAPI"]),
    ("a projected token for another audience", create_pod(pod(volumes=[TOKEN_VOLUME("https://vault.example")])),
     run(kubernetesAPI=CONFIGMAPS), "TokenNotGranted", ["https://vault.example", "audience"]),
    ("a projected token for the API server", create_pod(pod(volumes=[TOKEN_VOLUME()])),
     run(kubernetesAPI=CONFIGMAPS), None, []),
    # PodSecurity restricted, named before the API server refuses it
    ("runAsNonRoot false", create_pod(pod(securityContext={"runAsNonRoot": False})), run(),
     "PrivilegeNotAllowed", ["spec.securityContext.runAsNonRoot"]),
    ("capabilities kept",
     create_pod(pod(containers=[container(securityContext={"capabilities": {"drop": ["NET_RAW"]}})])),
     run(), "PrivilegeNotAllowed", ["capabilities.drop", "ALL"]),
    # a Role with never-grantable rules names them (issue 14.4), besides being the fence
    ("a role minting tokens", req("CREATE", "rbac.authorization.k8s.io", "roles", "Role", obj(
        "Role", "r", rules=[{"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]}])),
     run(), "APIRuleNotGrantable", ["rules[0].resources", "serviceaccounts/token"]),
    ("bindings through a grant stored before the CRD refused it", req("CREATE", "", "bindings", "Binding",
                                                                       obj("Binding", "b")),
     run(kubernetesAPI=[{"apiGroups": [""], "resources": ["bindings"], "verbs": ["create"]}]),
     "KindNotGranted", ["bindings"]),
    # everything else: an allowlist of kinds
    ("a configmap", req("CREATE", "", "configmaps", "ConfigMap", obj("ConfigMap", "c")), run(), None, []),
    ("a lease", req("CREATE", "coordination.k8s.io", "leases", "Lease", obj("Lease", "l")), run(), None, []),
    ("a token secret", req("CREATE", "", "secrets", "Secret",
                           obj("Secret", "t", type="kubernetes.io/service-account-token"), user=ADMIN),
     run(), "TokenNotGranted", ["long-lived"]),
    ("a persistent volume claim", req("CREATE", "", "persistentvolumeclaims", "PersistentVolumeClaim",
                                      obj("PersistentVolumeClaim", "v", {})),
     run(), "KindNotGranted", ["spec.grant.kubernetesAPI"]),
    ("another operator's custom resource", req("CREATE", "ray.io", "rayclusters", "RayCluster", RAY),
     run(), "KindNotGranted", ["rayclusters", "'ray.io'"]),
    ("a custom resource the grant names", req("CREATE", "ray.io", "rayclusters", "RayCluster", RAY),
     run(kubernetesAPI=[{"apiGroups": ["ray.io"], "resources": ["rayclusters"], "verbs": ["create"]}]), None, []),
    ("an ingress", req("CREATE", "networking.k8s.io", "ingresses", "Ingress", obj("Ingress", "i", {}), user=ADMIN),
     run(), "KindNotGranted", ["Ingress"]),
    # quarantine freeze
    ("anything while frozen", req("CREATE", "", "configmaps", "ConfigMap", obj("ConfigMap", "c")),
     run(status={"quarantine": {"active": True, "steps": ["isolate", "freeze"]}}), "Frozen", ["frozen", "release"]),
    ("isolated but not frozen", req("CREATE", "", "configmaps", "ConfigMap", obj("ConfigMap", "c")),
     run(status={"quarantine": {"active": True, "steps": ["isolate"]}}), None, []),
]


@pytest.mark.parametrize(("request_", "run_", "refused", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_enforce(request_: Request, run_: Run, refused: str | None, words: list[str]) -> None:
    decision = decide(request_, run_, is_operator=False)
    if refused is None:
        assert decision.allowed, decision.message
        assert decision.action == "none" and not decision.warnings
        return
    assert not decision.allowed
    assert decision.action == "denied"
    assert refused in {f.kind for f in decision.findings}, decision.message
    assert decision.message.startswith(f"Stockade refused {request_.operation} of ")
    assert f"AgentRun {run_.namespace}/{run_.name}" in decision.message
    for word in words:
        assert word in decision.message, (word, decision.message)


@pytest.mark.parametrize(("request_", "run_", "refused", "words"),
                         [c[1:] for c in CASES if c[3] is not None], ids=[c[0] for c in CASES if c[3] is not None])
def test_audit_warns_about_what_the_grant_decides(request_: Request, run_: Run, refused: str, words: list[str]) -> None:
    audit = Run(run_.namespace, run_.name, run_.spec.model_copy(update={"enforcement": "audit"}), run_.status,
                run_.usage, run_.namespace_terminating)
    decision = decide(request_, audit, is_operator=False)
    absolute = any(policy.is_absolute(f) for f in decision.findings)
    if absolute:
        assert not decision.allowed, "what no grant can allow is refused in audit mode too"
        return
    assert decision.allowed and decision.action == "warned"
    assert decision.warnings and all(w.startswith("stockade audit") and len(w) <= 250 for w in decision.warnings)
    assert refused in {f.kind for f in decision.findings}


@pytest.mark.parametrize(("request_", "run_"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_the_operator_is_never_refused(request_: Request, run_: Run) -> None:
    assert decide(request_, run_, is_operator=True).allowed


@pytest.mark.parametrize(("operation", "allowed"), [("CREATE", False), ("UPDATE", False), ("DELETE", True)])
def test_unknown_run_fails_closed_except_for_deletion(operation: str, allowed: bool) -> None:
    body = pod()
    decision = decide(req(operation, "", "pods", "Pod", None if operation == "DELETE" else body,
                          body if operation != "CREATE" else None), None, is_operator=False)
    assert decision.allowed is allowed
    if not allowed:
        assert "knows no AgentRun" in decision.message and decision.findings[0].kind == "UnknownRun"


def test_usage_counts_requests_and_limits_apart_and_skips_the_pod_itself() -> None:
    pods = [pod("a", containers=[container(resources={"requests": {"cpu": "1"}, "limits": {"cpu": "3"}})]),
            pod("b", containers=[container(resources={"requests": {"cpu": "500m"}, "limits": {"cpu": "500m"}})])]
    usage = usage_of(pods, exclude="b")
    assert usage.pods == 1
    assert usage.taken("requests")["cpu"] == 1 and usage.taken("limits")["cpu"] == 3
    both = policy.add_usage(usage, [pods[1]])
    assert both.pods == 2 and both.taken("limits")["cpu"] == 3.5


@pytest.mark.parametrize(("containers", "hidden"), [
    ([container(env=[])], [True]),
    ([container(env=[], resources=GPU_LIMITS), container(name="side", env=[])], [False, True]),
    ([container(env=[{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}])], [False]),  # explicit: refused instead
])
def test_mutation_hides_gpus_from_containers_without_a_gpu_request(containers: list[dict[str, Any]],
                                                                    hidden: list[bool]) -> None:
    body = pod(containers=copy.deepcopy(containers))
    mutate_pod(body, run(**GPU).spec.grant)
    for found, expected in zip(body["spec"]["containers"], hidden, strict=True):
        added = {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"} in found["env"]
        assert added is expected


def test_mutated_pods_pass_validation() -> None:
    body = pod(containers=[container(env=[]), container(name="gpu", env=[], resources=GPU_LIMITS)])
    mutate_pod(body, run(**GPU).spec.grant)
    assert decide(create_pod(body), run(**GPU), is_operator=False).allowed


def test_the_usage_tracker_agrees_with_a_full_count_as_pods_come_change_and_go() -> None:
    def versioned(body: dict[str, Any], uid: str, version: str, phase: str = "Running") -> dict[str, Any]:
        body = copy.deepcopy(body)
        body["metadata"].update(uid=uid, resourceVersion=version)
        body["status"] = {"phase": phase}
        return body

    a = versioned(pod("a", containers=[container(resources={"requests": {"cpu": "1"}, "limits": {"cpu": "2"}})]),
                  "1", "1")
    b = versioned(pod("b"), "2", "1")
    c = versioned(pod("c", containers=[container(resources={"limits": {"memory": "3Gi"}})]), "3", "1")
    steps = [[a], [a, b], [a, b, c], [versioned(a, "1", "2", "Succeeded"), b, c], [b, c], [], [c]]
    tracker = policy.UsageTracker()
    for pods in steps:
        for exclude in ("", "b", "zzz"):
            want, got = usage_of(pods, exclude=exclude), tracker.usage(pods, exclude=exclude)
            assert got.pods == want.pods
            for which in ("requests", "limits"):
                assert {k: v for k, v in got.taken(which).items() if v} == want.taken(which)


def test_the_usage_tracker_reads_a_pod_body_only_when_its_version_is_new() -> None:
    reads: list[str] = []
    body = pod("a", containers=[container(resources={"requests": {"cpu": "1"}})])

    def ref(name: str, version: str) -> tuple[str, str, Any]:
        def read() -> dict[str, Any]:
            reads.append(f"{name}@{version}")
            return {**body, "metadata": {**body["metadata"], "name": name}}
        return name, version, read

    tracker = policy.UsageTracker()
    assert tracker.usage_of_refs([ref("a", "1"), ref("b", "1")]).pods == 2
    assert tracker.usage_of_refs([ref("a", "1"), ref("b", "1")]).pods == 2  # nothing new: nothing read
    assert tracker.usage_of_refs([ref("a", "2")]).pods == 1  # a changed, b gone
    assert reads == ["a@1", "b@1", "a@2"]


@pytest.mark.parametrize("containers", [
    [container(env=[])],
    [{"name": "bare", "image": "x"}],
    [container(env=[{"name": "OTHER", "value": "1"}]), container(name="gpu", env=[], resources=GPU_LIMITS)],
    [container()],
])
def test_the_mutating_patch_does_what_mutate_pod_does(containers: list[dict[str, Any]]) -> None:
    import jsonpatch

    body = pod(containers=copy.deepcopy(containers), initContainers=[{"name": "init", "image": "x"}])
    grant = run(**GPU).spec.grant
    patched = jsonpatch.apply_patch(body, policy.gpu_patch(body, grant))
    expected = copy.deepcopy(body)
    mutate_pod(expected, grant)
    assert patched == expected


def test_a_pod_as_a_read_only_mapping_is_checked_like_a_dict() -> None:
    # kopf hands the webhook read-only views, not dicts: the shape check must not take them for non-objects.
    from types import MappingProxyType

    body = pod(volumes=[TOKEN_VOLUME("https://vault.example")])
    frozen = MappingProxyType({**body, "spec": MappingProxyType(body["spec"]),
                               "metadata": MappingProxyType(body["metadata"])})
    decision = decide(create_pod(frozen), run(kubernetesAPI=CONFIGMAPS), is_operator=False)  # type: ignore[arg-type]
    assert [f.kind for f in decision.findings] == ["TokenNotGranted"], decision.message
