"""Admission end to end: nothing ungranted gets into a run namespace, whoever asks.

Every check acts through the real API server, as the agent's ServiceAccount (impersonated, with
RBAC for the kinds under test, so that it is admission and not RBAC that refuses) and as a
cluster admin who is not the operator (``alice`` in ``system:masters``), and asserts on the
message the API server returned: PodSecurity's, a ValidatingAdmissionPolicy's or the webhook's.
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from .conftest import (
    BIN,
    BREAK_GLASS,
    KUBECONFIG,
    Operator,
    agentrun,
    apply,
    get,
    kubectl,
    ready,
    simple_spec,
    wait_for,
)

ADMIN = ["--as=alice", "--as-group=system:masters"]
WEBHOOK = 'admission webhook "allowlist.stockade.io" denied the request'
BASELINE = "ValidatingAdmissionPolicy 'stockade-baseline'"
GRANT_POLICY = "ValidatingAdmissionPolicy 'stockade-grant'"
RUN_NAMESPACE_POLICY = "ValidatingAdmissionPolicy 'stockade-run-namespace'"
# RBAC for the agent over every kind under test: what refuses it below is admission, not RBAC.
AGENT_RBAC = [{
    "apiGroups": ["", "apps", "batch", "networking.k8s.io", "rbac.authorization.k8s.io"],
    "resources": ["pods", "pods/ephemeralcontainers", "replicationcontrollers", "deployments", "statefulsets",
                  "daemonsets", "replicasets", "jobs", "cronjobs", "networkpolicies", "resourcequotas",
                  "limitranges", "roles", "rolebindings", "serviceaccounts", "configmaps"],
    "verbs": ["get", "list", "create", "update", "patch", "delete"],
}]
NOT_GRANTABLE = {"pods/ephemeralcontainers", "networkpolicies", "resourcequotas", "limitranges", "roles",
                 "rolebindings", "serviceaccounts"}
# RBAC for Services too: admission refuses them all the same.
SERVICES_AND_PDBS = [{"apiGroups": ["", "policy"], "resources": ["pods", "services", "poddisruptionbudgets"],
                      "verbs": ["get", "create", "update", "patch"]}]


def agent(namespace: str) -> list[str]:
    return [f"--as=system:serviceaccount:{namespace}:agent"]


def sh(*args: str, who: list[str] | None = None, stdin: Any = None) -> subprocess.CompletedProcess[str]:
    """kubectl with stdout and stderr (warnings come on stderr, also on success)."""
    text = stdin if stdin is None or isinstance(stdin, str) else yaml.safe_dump(stdin)
    return subprocess.run([str(BIN / "kubectl"), "--kubeconfig", KUBECONFIG, *args, *(who or [])], input=text,
                          capture_output=True, text=True, timeout=60, check=False)


def refused(result: subprocess.CompletedProcess[str], *words: str) -> str:
    assert result.returncode != 0, f"expected a refusal of {result.args[3:]}, got: {result.stdout}{result.stderr}"
    for word in words:
        assert word in result.stderr, (word, result.args[3:], result.stderr)
    return result.stderr


def created(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stderr


# Objects --------------------------------------------------------------------------------------------------
def container(name: str = "c", **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": name, "image": "registry.example/agent:1",
                            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                            "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}}}
    base.update(fields)
    return base


def pod_spec(containers: list[dict[str, Any]] | None = None, **fields: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"serviceAccountName": "agent", "restartPolicy": "Never",
                            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                            "containers": containers or [container()]}
    spec.update(fields)
    return spec


def pod(namespace: str, name: str = "", annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name or f"p-{uuid.uuid4().hex[:6]}", "namespace": namespace}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec(**spec)}


WORKLOADS = {"Deployment": "apps/v1", "StatefulSet": "apps/v1", "DaemonSet": "apps/v1", "ReplicaSet": "apps/v1",
             "ReplicationController": "v1", "CronJob": "batch/v1", "Job": "batch/v1"}


def workload(kind: str, namespace: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = dict(spec or pod_spec())
    spec["restartPolicy"] = "Never" if kind in ("Job", "CronJob") else "Always"
    template = {"metadata": {"labels": {"app": "w"}}, "spec": spec}
    if kind == "Job":
        body: dict[str, Any] = {"template": template}
    elif kind == "CronJob":
        body = {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": template}}}
    elif kind == "ReplicationController":
        body = {"selector": {"app": "w"}, "template": template}
    else:
        body = {"selector": {"matchLabels": {"app": "w"}}, "template": template}
        if kind == "StatefulSet":
            body["serviceName"] = "w"
    return {"apiVersion": WORKLOADS[kind], "kind": kind, "metadata": {"name": f"w-{kind.lower()}",
                                                                     "namespace": namespace}, "spec": body}


def service(namespace: str, kind: str = "ClusterIP", name: str = "") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name or f"s-{kind.lower()}", "namespace": namespace},
            "spec": {"type": kind, "selector": {"app": "w"}, "ports": [{"port": 8080}]}}


# Fixtures --------------------------------------------------------------------------------------------------
def webhook_answers(namespace: str) -> bool:
    probe = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "probe", "namespace": namespace}}
    return sh("create", "--dry-run=server", "-f", "-", who=ADMIN, stdin=probe).returncode == 0


def start_run(team: str, name: str, spec: dict[str, Any]) -> str:
    apply(agentrun(name, team, spec))
    wait_for(lambda: ready(team, name), timeout=60, what=f"AgentRun {team}/{name} to be Ready")
    namespace = f"{team}-{name}"
    wait_for(lambda: webhook_answers(namespace), timeout=60, what="the webhook to answer")
    return namespace


@pytest.fixture(scope="module")
def team(operator: Operator) -> Iterator[str]:
    name = f"adm-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    apply({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "nvidia"}, "handler": "nvidia"})
    yield name
    kubectl("delete", "agentruns", "--all", "-n", name, "--timeout=60s", check=False)
    kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def fenced(team: str) -> str:
    """cpu 2, memory 4Gi, 3 pods; the agent holds RBAC for every kind under test."""
    # What no grant may name (ephemeral containers, writes to the fence: stockade.apirules) a platform admin
    # binds by hand (break-glass), so that it is still admission, not RBAC, that refuses the agent below.
    # Each kind in its own group: the AgentPolicy webhook counts (and checks) every group x resource x verb.
    verbs = AGENT_RBAC[0]["verbs"]
    grantable = [{"apiGroups": [""], "resources": ["pods", "replicationcontrollers", "configmaps"], "verbs": verbs},
                 {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets", "daemonsets", "replicasets"],
                  "verbs": verbs},
                 {"apiGroups": ["batch"], "resources": ["jobs", "cronjobs"], "verbs": verbs}]
    namespace = start_run(team, "fenced", simple_spec(cpu="2", memory="4Gi", pods=3, kubernetesAPI=grantable))
    by_hand = {**AGENT_RBAC[0], "resources": sorted(NOT_GRANTABLE)}
    apply([{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "e2e-by-hand", "namespace": namespace}, "rules": [by_hand]},
           {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "e2e-by-hand", "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "e2e-by-hand"},
            "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": namespace}]},
           {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "other", "namespace": namespace}}],
          as_user=BREAK_GLASS)
    return namespace


@pytest.fixture(scope="module")
def generous(team: str) -> str:
    """A GPU, the nvidia runtime class, PodDisruptionBudgets, and a Job as the workload."""
    spec = simple_spec(cpu="8", memory="16Gi", pods=4, gpu=1, gpuResource="nvidia.com/gpu",
                       runtimeClassNames=["nvidia"], kubernetesAPI=SERVICES_AND_PDBS)
    spec["workload"] = "Job"
    return start_run(team, "generous", spec)


@pytest.fixture(scope="module")
def single(team: str) -> str:
    return start_run(team, "single", simple_spec(pods=1, kubernetesAPI=SERVICES_AND_PDBS))


# What must be refused ------------------------------------------------------------------------------------
BEYOND_THE_GRANT = [
    # (case, pod spec fields, words the refusal must contain)
    ("cpu", {"containers": [container(resources={"limits": {"cpu": "1500m"}})]}, ["limits.cpu", "spec.grant.cpu"]),
    ("memory", {"containers": [container(resources={"limits": {"memory": "3584Mi"}})]},
     ["limits.memory", "spec.grant.memory"]),
    ("ephemeral storage", {"containers": [container(resources={"limits": {"ephemeral-storage": "9728Mi"}})]},
     ["ephemeral-storage", "spec.grant.ephemeralStorage"]),
    ("a gpu", {"containers": [container(resources={"limits": {"nvidia.com/gpu": "1"}})]},
     ["nvidia.com/gpu", "spec.grant.gpu"]),
    ("another gpu resource", {"containers": [container(resources={"limits": {"nvidia.com/mig-1g.10gb": "1"}})]},
     ["nvidia.com/mig-1g.10gb", "spec.grant.gpu"]),
    ("gpu visibility", {"containers": [container(env=[{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}])]},
     ["NVIDIA_VISIBLE_DEVICES='all'", "without a GPU request", "NVIDIA_VISIBLE_DEVICES=void"]),
    ("driver capabilities", {"containers": [container(env=[{"name": "NVIDIA_DRIVER_CAPABILITIES",
                                                            "value": "compute,utility"}])]},
     ["NVIDIA_DRIVER_CAPABILITIES"]),
    ("a runtime class", {"runtimeClassName": "nvidia"}, ["runtime class 'nvidia' is not granted",
                                                         "spec.grant.runtimeClassNames"]),
    ("a device annotation", {"annotations": {"cdi.k8s.io/gpu": "nvidia.com/gpu=all"}}, ["device annotation"]),
    # ("default" is what the API server fills in for none: the mutating webhook makes it the agent's,
    # e2e/test_grant_allows.py; "other" exists, made by break-glass in the fixture.)
    ("another service account", {"serviceAccountName": "other"},
     ["serviceAccountName", "'other' is not the agent's ServiceAccount", "'agent'"]),
]


@pytest.mark.parametrize(("case", "fields", "words"), BEYOND_THE_GRANT, ids=[c[0] for c in BEYOND_THE_GRANT])
@pytest.mark.parametrize("who", ["agent", "admin"])
def test_pods_beyond_the_grant_are_refused(fenced: str, who: str, case: str, fields: dict[str, Any],
                                           words: list[str]) -> None:
    identity = agent(fenced) if who == "agent" else ADMIN
    message = refused(sh("create", "-f", "-", who=identity, stdin=pod(fenced, **fields)), WEBHOOK, *words)
    assert "the grant allows" in message and f"AgentRun {fenced.rsplit('-', 1)[0]}/fenced" in message


def test_more_pods_than_granted_are_refused(single: str) -> None:
    # The run's own pod is its one granted pod.
    refused(sh("create", "-f", "-", who=agent(single), stdin=pod(single)), WEBHOOK, "already has 1 pod(s)",
            "1 pod(s)", "spec.grant.pods")


def test_the_run_workload_job_is_allowed(generous: str) -> None:
    job = get("job", "generous", generous)
    assert job is not None, "the operator's Job for a run with spec.workload: Job"
    wait_for(lambda: get("pods", namespace=generous, selector="job-name=generous")["items"], timeout=30,
             what="the Job controller's pod, admitted")


def test_the_same_pods_are_allowed_when_the_grant_allows_them(generous: str) -> None:
    gpu = container("gpu", resources={"limits": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"}})
    body = pod(generous, "granted", runtimeClassName="nvidia", containers=[gpu, container("sidecar")],
               tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    created(sh("create", "-f", "-", who=agent(generous), stdin=body))
    live = get("pod", "granted", generous)
    gpu_env, sidecar_env = ({e["name"]: e.get("value") for e in c.get("env") or []} for c in live["spec"]["containers"])
    assert sidecar_env == {"NVIDIA_VISIBLE_DEVICES": "void"}, "the mutating webhook hid the GPUs from the sidecar"
    assert "NVIDIA_VISIBLE_DEVICES" not in gpu_env, "the device plugin decides for the GPU container"
    created(sh("create", "-f", "-", who=ADMIN,
               stdin=pod(generous, containers=[container(resources={"limits": {"cpu": "1500m"}})])))
    pdb = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "b", "namespace": generous},
           "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "w"}}}}
    created(sh("create", "-f", "-", who=agent(generous), stdin=pdb))


HOST_ACCESS = [
    ("privileged", {"containers": [container(securityContext={"privileged": True})]}, "privileged"),
    ("host network", {"hostNetwork": True}, "hostNetwork"),
    ("host pid", {"hostPID": True}, "hostPID"),
    ("host ipc", {"hostIPC": True}, "hostIPC"),
    ("host path", {"volumes": [{"name": "dev", "hostPath": {"path": "/dev/nvidia0"}}]}, "hostPath"),
    ("added capabilities", {"containers": [container(securityContext={
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]}})]},
     "capabilities"),
    ("host port", {"containers": [container(ports=[{"containerPort": 22, "hostPort": 2222}])]}, "hostPort"),
]


@pytest.mark.parametrize(("case", "fields", "word"), HOST_ACCESS, ids=[c[0] for c in HOST_ACCESS])
def test_host_access_and_privilege_are_refused_by_every_layer(fenced: str, case: str, fields: dict[str, Any],
                                                              word: str) -> None:
    # PodSecurity answers first for pods...
    for identity in (agent(fenced), ADMIN):
        refused(sh("create", "-f", "-", who=identity, stdin=pod(fenced, **fields)), "PodSecurity", word)
    # ...only warns about pod templates, where the ValidatingAdmissionPolicy refuses...
    refused(sh("create", "-f", "-", who=ADMIN, stdin=workload("Job", fenced, pod_spec(**fields))), BASELINE,
            word.replace("capabilities", "capabilities.add"))
    # ...and the webhook refuses on its own too, without relying on either.
    review = admission_review(fenced, pod(fenced, **fields))
    assert review["allowed"] is False and word in review["status"]["message"], review


def admission_review(namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
    """Ask the live webhook directly, as the API server would (a dry run: nothing is recorded)."""
    config = get("validatingwebhookconfiguration", "stockade")["webhooks"][0]["clientConfig"]
    context = ssl.create_default_context(cadata=base64.b64decode(config["caBundle"]).decode())
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": str(uuid.uuid4()), "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"}, "namespace": namespace,
        "name": obj["metadata"]["name"], "operation": "CREATE", "dryRun": True,
        "userInfo": {"username": "alice", "groups": ["system:masters", "system:authenticated"]}, "object": obj}}
    request = urllib.request.Request(config["url"], data=json.dumps(review).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, context=context, timeout=10) as resp:
        answer: dict[str, Any] = json.loads(resp.read())["response"]
    return answer


@pytest.mark.parametrize("kind", list(WORKLOADS))
@pytest.mark.parametrize("who", ["agent", "admin"])
def test_new_compute_is_refused(fenced: str, kind: str, who: str) -> None:
    identity = agent(fenced) if who == "agent" else ADMIN
    result = sh("create", "-f", "-", who=identity, stdin=workload(kind, fenced))
    if kind == "Job":
        refused(result, WEBHOOK, "the run's own workload", "spec.workload: Job", "spec.grant.pods")
    else:
        refused(result, GRANT_POLICY, "a grant never names this kind", kind, "spec.grant.pods")


@pytest.mark.parametrize("who", ["agent", "admin"])
def test_new_ways_in_and_out_are_refused(fenced: str, generous: str, who: str) -> None:
    # Services: never LoadBalancer or NodePort, even where the grant names Services.
    identity = agent(generous) if who == "agent" else ADMIN
    for kind in ("LoadBalancer", "NodePort"):
        refused(sh("create", "-f", "-", who=identity, stdin=service(generous, kind)), GRANT_POLICY,
                "only ClusterIP Services", kind)
    # ClusterIP too where the grant does not name services (e2e/test_grant_allows.py: where it does).
    refused(sh("create", "-f", "-", who=ADMIN, stdin=service(fenced)), WEBHOOK, "a Service is a way in",
            "does not name services")
    # The fence itself: policies, quota, limits, roles, the agent's identity.
    identity = agent(fenced) if who == "agent" else ADMIN
    open_egress = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                   "metadata": {"name": "let-me-out", "namespace": fenced},
                   "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}}
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "more", "namespace": fenced},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "more", "namespace": fenced},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "stockade-agent"},
               "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": fenced}]}
    attempts = [
        sh("create", "-f", "-", who=identity, stdin=open_egress),
        sh("create", "-f", "-", who=identity, stdin=role),
        sh("create", "-f", "-", who=identity, stdin=binding),
        sh("patch", "resourcequota", "stockade-grant", "-n", fenced, "--type=merge",
           "-p", '{"spec":{"hard":{"limits.cpu":"64"}}}', who=identity),
        sh("patch", "networkpolicy", "stockade-egress", "-n", fenced, "--type=merge",
           "-p", '{"spec":{"egress":[{"to":[{"ipBlock":{"cidr":"0.0.0.0/0"}}]}]}}', who=identity),
        sh("delete", "networkpolicy", "stockade-deny-all", "-n", fenced, who=identity),
        sh("delete", "limitrange", "stockade-limits", "-n", fenced, who=identity),
        sh("delete", "rolebinding", "stockade-agent", "-n", fenced, who=identity),
        sh("delete", "serviceaccount", "agent", "-n", fenced, who=identity),
    ]
    for result in attempts:
        refused(result, BASELINE, "guardrails are part of its fence", "only the Stockade operator", "spec.grant")
    assert get("networkpolicy", "stockade-deny-all", fenced) and get("limitrange", "stockade-limits", fenced)
    assert get("resourcequota", "stockade-grant", fenced)["spec"]["hard"]["limits.cpu"] == "2"


def test_the_run_namespace_is_changed_by_the_operator_only(fenced: str) -> None:
    for args in (("label", "namespace", fenced, "stockade.io/agentrun-"),
                 ("label", "namespace", fenced, "pod-security.kubernetes.io/enforce=privileged", "--overwrite"),
                 ("delete", "namespace", fenced, "--wait=false")):
        refused(sh(*args, who=ADMIN), RUN_NAMESPACE_POLICY, "change or delete its AgentRun instead")
    assert get("namespace", fenced)["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_nobody_but_the_operator_makes_a_namespace_with_a_runs_labels(fenced: str) -> None:
    """A squatter made in advance with a run's labels (its uid too) is refused, not only later changes."""
    run_labels = get("namespace", fenced)["metadata"]["labels"]
    forged = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"{fenced}-x", "labels": {
        k: v for k, v in run_labels.items() if k.startswith("stockade.io/")}}}
    refused(sh("create", "-f", "-", who=ADMIN, stdin=json.dumps(forged)), RUN_NAMESPACE_POLICY,
            "change or delete its AgentRun instead")
    assert get("namespace", f"{fenced}-x") is None


def test_quarantine_label_and_debug_containers_are_refused(fenced: str) -> None:
    name = fenced.rsplit("-", 1)[1]
    refused(sh("label", "pod", name, "-n", fenced, "stockade.io/quarantined=true", who=ADMIN), WEBHOOK,
            "quarantine label is set and removed by the Stockade operator only")
    refused(sh("debug", name, "-n", fenced, "--image=registry.example/debug:1", "--profile=restricted", who=ADMIN),
            WEBHOOK, "debug containers")
    assert not get("pod", name, fenced)["spec"].get("ephemeralContainers")


def test_kinds_the_grant_does_not_name_are_refused(fenced: str) -> None:
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "v", "namespace": fenced},
             "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}
    ingress = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "i", "namespace": fenced},
               "spec": {"defaultBackend": {"service": {"name": "s", "port": {"number": 80}}}}}
    pdb = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "b", "namespace": fenced},
           "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "w"}}}}
    token = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
             "metadata": {"name": "t", "namespace": fenced,
                          "annotations": {"kubernetes.io/service-account.name": "agent"}}}
    for obj in (claim, ingress, pdb):
        refused(sh("create", "-f", "-", who=ADMIN, stdin=obj), WEBHOOK, "is not something the grant names",
                "spec.grant.kubernetesAPI")
    refused(sh("create", "-f", "-", who=ADMIN, stdin=token), WEBHOOK, "long-lived API credential")
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "notes", "namespace": fenced}}
    created(sh("create", "-f", "-", who=agent(fenced), stdin=config))


def test_refusals_are_recorded_as_violations_events_and_metrics(operator: Operator, team: str, fenced: str) -> None:
    marker = f"w-{uuid.uuid4().hex[:6]}"
    body = pod(fenced, marker, containers=[container(resources={"limits": {"nvidia.com/gpu": "1"}})])
    refused(sh("create", "-f", "-", who=agent(fenced), stdin=body), WEBHOOK)

    def recorded() -> dict[str, Any] | None:
        found = [v for v in (get("agentrun", "fenced", team).get("status") or {}).get("violations") or []
                 if v.get("pod") == marker and v["source"] == "admission"]
        return found[0] if found else None

    entry = wait_for(recorded, timeout=15, what="the refusal on the AgentRun")
    assert entry["source"] == "admission" and entry["action"] == "denied" and entry["kind"] == "GPUNotGranted"
    assert entry["evidence"]["user"] == f"system:serviceaccount:{fenced}:agent"
    assert "nvidia.com/gpu" in entry["detail"] and "spec.grant.gpu" in entry["detail"]
    events = wait_for(lambda: [e for e in get("events", namespace=team)["items"]
                               if e["reason"] == "AdmissionRefused" and marker in e["message"]],
                      timeout=15, what="a Warning Event")
    assert events[0]["type"] == "Warning" and events[0]["involvedObject"]["name"] == "fenced"
    counted = [line for line in operator.metrics().splitlines() if line.startswith("stockade_violations_total{")
               and all(pair in line for pair in ('kind="GPUNotGranted"', 'source="admission"', 'action="denied"'))]
    assert counted and float(counted[0].rsplit(" ", 1)[1]) >= 1, counted
    dry = pod(fenced, f"dry-{marker}", containers=[container(resources={"limits": {"nvidia.com/gpu": "1"}})])
    refused(sh("create", "--dry-run=server", "-f", "-", who=agent(fenced), stdin=dry), WEBHOOK)
    time.sleep(1)
    violations = get("agentrun", "fenced", team)["status"]["violations"]
    assert not [v for v in violations if v.get("pod") == f"dry-{marker}"], "a dry run records nothing"


def test_audit_mode_warns_and_records_instead_of_refusing(team: str) -> None:
    spec = simple_spec(pods=3, kubernetesAPI=SERVICES_AND_PDBS)
    spec["enforcement"] = "audit"
    audited = start_run(team, "audited", spec)
    body = pod(audited, "visible", containers=[container(env=[{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}])])
    warning = created(sh("create", "-f", "-", who=agent(audited), stdin=body))
    assert "Warning: stockade audit (would be refused)" in warning and "NVIDIA_VISIBLE_DEVICES" in warning
    warning = created(sh("create", "-f", "-", who=agent(audited), stdin=pod(audited, runtimeClassName="nvidia")))
    assert "runtime class 'nvidia' is not granted" in warning

    # (Detection may report the same pod from the API side: source "api".)
    entry = wait_for(lambda: next((v for v in (get("agentrun", "audited", team).get("status") or {})
                                   .get("violations") or [] if v.get("pod") == "visible"
                                   and v["source"] == "admission"), None),
                     timeout=15, what="the warning on the AgentRun")
    assert entry["action"] == "warned" and entry["kind"] == "GPUNotGranted"
    # What no grant can allow stays refused in audit mode.
    refused(sh("label", "pod", "visible", "-n", audited, "stockade.io/quarantined=true", who=ADMIN), WEBHOOK)
    # The static policies warn too where the namespace says audit (the reconciler's label; set
    # here as the operator would, if this version of the reconciler does not set it yet).
    labels = get("namespace", audited)["metadata"]["labels"]
    if labels.get("stockade.io/enforcement") != "audit":
        kubectl("label", "namespace", audited, "stockade.io/enforcement=audit")
    # Audit relaxes admission, not the ResourceQuota (services.loadbalancers: 0), which refuses last.
    result = sh("create", "-f", "-", who=agent(audited), stdin=service(audited, "LoadBalancer"))
    warning = refused(result, "exceeded quota", "services.loadbalancers")
    assert "stockade-grant-audit" in warning and "only ClusterIP Services" in warning


def test_ordinary_namespaces_are_untouched(team: str) -> None:
    plain = f"plain-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", plain)
    try:
        for namespace in (plain, team):
            privileged = pod(namespace, containers=[container(securityContext={"privileged": True})], hostNetwork=True,
                             serviceAccountName="default")
            deployment = workload("Deployment", namespace)
            deployment["spec"]["template"]["spec"]["serviceAccountName"] = "default"
            for obj in (privileged, deployment, service(namespace, "LoadBalancer"),
                        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                         "metadata": {"name": "anything", "namespace": namespace}, "spec": {"podSelector": {}}}):
                created(sh("create", "-f", "-", who=ADMIN, stdin=obj))
    finally:
        kubectl("delete", "namespace", plain, "--wait=false", check=False)


def test_with_the_operator_stopped_the_static_rules_hold_and_kube_system_works(operator: Operator,
                                                                                 fenced: str) -> None:
    operator.stop()
    try:
        # Grant-aware checks fail closed in run namespaces: the webhook does not answer.
        refused(sh("create", "-f", "-", who=ADMIN, stdin=pod(fenced)), "failed calling webhook",
                "allowlist.stockade.io")
        # The static rules answer on their own, from inside the API server.
        privileged = pod_spec(containers=[container(securityContext={"privileged": True})])
        refused(sh("create", "-f", "-", who=ADMIN, stdin=workload("Job", fenced, privileged)), BASELINE, "privileged")
        refused(sh("create", "-f", "-", who=ADMIN, stdin=workload("Deployment", fenced)), GRANT_POLICY)
        refused(sh("create", "-f", "-", who=ADMIN, stdin=service(fenced, "LoadBalancer")), GRANT_POLICY)
        refused(sh("delete", "networkpolicy", "stockade-deny-all", "-n", fenced, who=ADMIN), BASELINE, "guardrails")
        refused(sh("label", "namespace", fenced, "stockade.io/agentrun-", who=ADMIN), RUN_NAMESPACE_POLICY)
        # Nothing outside run namespaces waits for the missing webhook.
        for namespace in ("kube-system", "default"):
            started = time.monotonic()
            name = f"while-down-{uuid.uuid4().hex[:6]}"
            created(sh("create", "-f", "-", who=ADMIN, stdin={
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
                "spec": {"containers": [{"name": "c", "image": "registry.example/x:1"}]}}))
            created(sh("create", "configmap", name, "-n", namespace, who=ADMIN))
            assert time.monotonic() - started < 4, "no webhook call (a dead webhook would take its 5 s timeout)"
            kubectl("delete", "pod,configmap", name, "-n", namespace, "--wait=false", check=False)
    finally:
        operator.start()
        wait_for(lambda: webhook_answers(fenced), timeout=60, what="the webhook to answer again")
