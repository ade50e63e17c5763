"""Is this pod within the grant? One pure check, ``check_pod``, for the planner and the admission webhook.

The rule is an allowlist: a pod may set only the fields listed here, only the volume types listed
here, and only the resources the grant names, up to what the grant has left. Anything else is a
finding with the field, what the grant allows and how to change the grant. The operator checks the
workload it is about to create with the same function, metadata included, that the webhook applies
to a pod an agent creates: the two can never disagree about what a pod may be.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from stockade import labels, podshape
from stockade.api.models import Grant
from stockade.findings import Finding, grant_hint
from stockade.gpucheck import GPU_HIDDEN, check_gpu_env, check_gpus_hidden, has_gpu_request
from stockade.quantity import parse_quantity

__all__ = ["GPU_HIDDEN", "Finding", "Usage", "check_pod", "check_pod_metadata", "check_pod_spec", "granted_amounts",
           "has_gpu_request", "pod_amounts"]

# Fields of a PodSpec an agent pod may set. Values the API server defaults on create (dnsPolicy,
# schedulerName, priority, ...) are allowed with their default values only.
POD_FIELDS = {
    "containers", "initContainers", "restartPolicy", "terminationGracePeriodSeconds",
    "activeDeadlineSeconds", "dnsPolicy", "nodeSelector", "serviceAccountName", "serviceAccount",
    "automountServiceAccountToken", "securityContext", "affinity", "tolerations", "schedulerName",
    "volumes", "enableServiceLinks", "runtimeClassName", "hostname", "subdomain", "priority",
    "preemptionPolicy", "topologySpreadConstraints", "dnsConfig", "readinessGates", "os",
    "imagePullSecrets", "setHostnameAsFQDN", "resourceClaims", "hostUsers", "schedulingGates",
    # Set by the RuntimeClass admission plugin from a (granted) runtime class, which refuses any other value.
    "overhead",
}
CONTAINER_FIELDS = {
    "name", "image", "command", "args", "workingDir", "ports", "env", "envFrom", "resources",
    "volumeMounts", "livenessProbe", "readinessProbe", "startupProbe", "lifecycle",
    "terminationMessagePath", "terminationMessagePolicy", "imagePullPolicy", "securityContext",
    "stdin", "stdinOnce", "tty", "resizePolicy", "restartPolicy",
}
VOLUME_TYPES = {"emptyDir", "configMap", "secret", "projected", "downwardAPI"}
BASE_RESOURCES = ("cpu", "memory", "ephemeral-storage")
# Pod annotations that container runtimes read as device requests (CDI in containerd and CRI-O,
# CRI-O's device annotation) or as a relaxed confinement: they bypass the resource model entirely.
DEVICE_ANNOTATION_PREFIXES = ("cdi.k8s.io/", "io.kubernetes.cri-o.devices", "io.kubernetes.cri-o.Devices")
APPARMOR_ANNOTATION_PREFIX = "container.apparmor.security.beta.kubernetes.io/"
# SELinux types a container may run as (PodSecurity "baseline" allows the same ones).
SELINUX_TYPES = {"container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
# Audiences a projected ServiceAccount token may name with an API grant: none (the API server's own,
# the default) or the API server's usual ones. A platform allows more through ``token_audiences``.
API_SERVER_AUDIENCES = ("https://kubernetes.default.svc.cluster.local", "https://kubernetes.default.svc",
                        "kubernetes.default.svc", "kubernetes.default.svc.cluster.local")
DEFAULTED: dict[str, set[Any]] = {
    "dnsPolicy": {"ClusterFirst"},
    "schedulerName": {"default-scheduler"},
    "priority": {0},
    "preemptionPolicy": {"PreemptLowerPriority", "Never"},
    "hostUsers": {False},
}


@dataclass
class Usage:
    """Resources already taken by the run's other pods (admission passes it; the planner does not).

    ``requests`` and ``limits`` are compared separately, as the ResourceQuota does; ``amounts``
    stands for both where the caller does not tell them apart.
    """

    amounts: dict[str, Decimal] = field(default_factory=dict)
    pods: int = 0
    requests: dict[str, Decimal] | None = None
    limits: dict[str, Decimal] | None = None

    def taken(self, which: str) -> dict[str, Decimal]:
        split = self.requests if which == "requests" else self.limits
        return split if split is not None else self.amounts


def granted_amounts(grant: Grant) -> dict[str, Decimal]:
    amounts = {
        "cpu": parse_quantity(grant.cpu),
        "memory": parse_quantity(grant.memory),
        "ephemeral-storage": parse_quantity(grant.ephemeralStorage),
    }
    if grant.gpu and grant.gpuResource:
        amounts[grant.gpuResource] = Decimal(grant.gpu)
    return amounts


def _quantity(value: Any) -> Decimal | None:
    try:
        return parse_quantity(value)
    except ValueError:
        return None


def pod_amounts(spec: Mapping[str, Any], which: str) -> dict[str, Decimal]:
    """Effective pod requests or limits: max(sum of containers, largest init container)."""
    totals: dict[str, Decimal] = {}
    for container in spec.get("containers") or []:
        for name, value in ((container.get("resources") or {}).get(which) or {}).items():
            amount = _quantity(value)
            if amount is not None:
                totals[name] = totals.get(name, Decimal(0)) + amount
    for container in spec.get("initContainers") or []:
        for name, value in ((container.get("resources") or {}).get(which) or {}).items():
            amount = _quantity(value)
            if amount is not None and amount > totals.get(name, Decimal(0)):
                totals[name] = amount
    return totals


def _all_containers(spec: Mapping[str, Any], path: str) -> Iterable[tuple[str, dict[str, Any]]]:
    for key in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(key) or []):
            yield f"{path}.{key}[{index}]", container


def check_pod(
    pod: Mapping[str, Any],
    grant: Grant,
    *,
    path: str = "",
    usage: Usage | None = None,
    require_hidden_gpus: bool = True,
    token_audiences: Collection[str] = API_SERVER_AUDIENCES,
) -> list[Finding]:
    """Everything in a pod or pod template (``{metadata, spec}``) that the grant does not allow.

    ``path`` is where the object sits ("" for a Pod, "spec.template" for a Job or an AgentRun). A value
    of the wrong type (``volumes: 5``) is a finding too, and then the only ones: the other checks read
    the fields as the Kubernetes types they are.
    """
    prefix = f"{path}." if path else ""
    shape = podshape.pod_findings(pod, path)
    if shape:
        return [Finding("InvalidField", field, message, "the Kubernetes type of the field",
                        "fix the template: it is not a valid pod") for field, message in shape]
    return check_pod_metadata(pod.get("metadata") or {}, path=f"{prefix}metadata") + check_pod_spec(
        pod.get("spec") or {}, grant, path=f"{prefix}spec", usage=usage, require_hidden_gpus=require_hidden_gpus,
        token_audiences=token_audiences)


def check_pod_spec(
    spec: Mapping[str, Any],
    grant: Grant,
    *,
    path: str = "spec",
    usage: Usage | None = None,
    require_hidden_gpus: bool = False,
    token_audiences: Collection[str] = API_SERVER_AUDIENCES,
) -> list[Finding]:
    """Everything in the pod spec that the grant does not allow (empty: allowed).

    ``require_hidden_gpus``: a container without a GPU request must say NVIDIA_VISIBLE_DEVICES=void
    itself (admission: the mutating webhook adds it, and this holds even when that step was skipped).
    """
    findings: list[Finding] = []
    findings += _check_fields(spec, path)
    findings += _check_host_access(spec, path)
    findings += _check_volumes(spec, path)
    findings += _check_tokens(spec, grant, path, token_audiences)
    findings += _check_identity(spec, grant, path)
    for cpath, container in _all_containers(spec, path):
        findings += _check_container(container, grant, cpath)
        if require_hidden_gpus and not has_gpu_request(container, grant):
            findings += check_gpus_hidden(container, cpath)
    findings += _check_totals(spec, grant, path, usage or Usage())
    return findings


def check_pod_metadata(meta: Mapping[str, Any], *, path: str = "metadata") -> list[Finding]:
    """Annotations that runtimes turn into devices or weaker confinement, outside the resource model."""
    out = []
    for key, value in sorted((meta.get("annotations") or {}).items()):
        if key.startswith(DEVICE_ANNOTATION_PREFIXES):
            out.append(Finding("GPUNotGranted", f"{path}.annotations[{key}]",
                               "a device annotation asks the container runtime for devices outside the grant",
                               "devices only as granted resources", grant_hint("gpu and spec.grant.gpuResource")))
        elif key.startswith(APPARMOR_ANNOTATION_PREFIX) and str(value) == "unconfined":
            out.append(Finding("PrivilegeNotAllowed", f"{path}.annotations[{key}]",
                               "an unconfined AppArmor profile is never granted", "runtime/default or localhost/*"))
    return out


def _check_fields(spec: Mapping[str, Any], path: str) -> list[Finding]:
    out = []
    for key in sorted(set(spec) - POD_FIELDS):
        out.append(
            Finding("FieldNotAllowed", f"{path}.{key}", "is not a field an agent pod may set",
                    "only ordinary pod fields", "remove the field from the template")
        )
    for key, allowed in DEFAULTED.items():
        if key in spec and spec[key] not in allowed:
            out.append(
                Finding("FieldNotAllowed", f"{path}.{key}", f"{spec[key]!r} is not allowed",
                        " or ".join(repr(v) for v in sorted(allowed, key=str)), "leave the field unset")
            )
    if spec.get("priorityClassName"):
        out.append(Finding("FieldNotAllowed", f"{path}.priorityClassName",
                           "a priority class could preempt other workloads", "none", "leave it unset"))
    if spec.get("nodeName"):
        out.append(Finding("FieldNotAllowed", f"{path}.nodeName", "bypasses the scheduler", "none",
                           "use nodeSelector or affinity instead"))
    return out


def _check_host_access(spec: Mapping[str, Any], path: str) -> list[Finding]:
    out = []
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            out.append(Finding("HostAccess", f"{path}.{key}", "host namespaces are never granted", "false"))
    for cpath, container in _all_containers(spec, path):
        for index, port in enumerate(container.get("ports") or []):
            if port.get("hostPort"):
                out.append(Finding("HostAccess", f"{cpath}.ports[{index}].hostPort",
                                   "host ports are never granted", "none"))
    return out


def _check_volumes(spec: Mapping[str, Any], path: str) -> list[Finding]:
    out = []
    for index, volume in enumerate(spec.get("volumes") or []):
        kinds = set(volume) - {"name"}
        for kind in sorted(kinds - VOLUME_TYPES):
            what = "host paths are never granted" if kind == "hostPath" else "this volume type is not granted"
            out.append(Finding("VolumeNotAllowed", f"{path}.volumes[{index}].{kind}", what,
                               ", ".join(sorted(VOLUME_TYPES))))
    return out


def _check_tokens(spec: Mapping[str, Any], grant: Grant, path: str, audiences: Collection[str]) -> list[Finding]:
    """Projected ServiceAccount tokens: an API credential (or, for another audience, a credential for
    whatever trusts the cluster's tokens, such as Vault), so only with an API grant, and then only for
    the API server unless a platform allows more audiences."""
    out = []
    for index, volume in enumerate(spec.get("volumes") or []):
        for number, source in enumerate(((volume.get("projected") or {}).get("sources")) or []):
            token = source.get("serviceAccountToken")
            if token is None:
                continue
            where = f"{path}.volumes[{index}].projected.sources[{number}].serviceAccountToken"
            audience = token.get("audience") or ""
            if not grant.kubernetesAPI:
                out.append(Finding("APIAccessNotGranted", where, "mounts a ServiceAccount token but no Kubernetes "
                                   "API access is granted", "no token of any kind", grant_hint("kubernetesAPI")))
            elif audience and audience not in audiences:
                out.append(Finding("TokenNotGranted", f"{where}.audience", f"a token for audience {audience!r} is a "
                                   "credential outside the cluster's API", "the API server's audience (leave "
                                   "audience unset)", "a platform policy must allow other audiences"))
    return out


def _check_identity(spec: Mapping[str, Any], grant: Grant, path: str) -> list[Finding]:
    out = []
    account = spec.get("serviceAccountName") or spec.get("serviceAccount")
    if account not in (None, "", labels.SERVICE_ACCOUNT):
        out.append(Finding("ServiceAccountNotAllowed", f"{path}.serviceAccountName",
                           f"{account!r} is not the agent's ServiceAccount", repr(labels.SERVICE_ACCOUNT),
                           "leave it unset: pods in a run namespace get the agent's"))
    if spec.get("automountServiceAccountToken") and not grant.kubernetesAPI:
        out.append(Finding("APIAccessNotGranted", f"{path}.automountServiceAccountToken",
                           "mounts an API token but no Kubernetes API access is granted", "false",
                           grant_hint("kubernetesAPI")))
    runtime = spec.get("runtimeClassName")
    if runtime and runtime not in grant.runtimeClassNames:
        out.append(Finding("RuntimeClassNotGranted", f"{path}.runtimeClassName",
                           f"runtime class {runtime!r} is not granted",
                           ", ".join(grant.runtimeClassNames) or "none", grant_hint("runtimeClassNames")))
    security = spec.get("securityContext") or {}
    if (security.get("seccompProfile") or {}).get("type") == "Unconfined":
        out.append(Finding("PrivilegeNotAllowed", f"{path}.securityContext.seccompProfile.type",
                           "unconfined seccomp is never granted", "RuntimeDefault or Localhost"))
    if security.get("runAsUser") == 0:
        out.append(Finding("PrivilegeNotAllowed", f"{path}.securityContext.runAsUser",
                           "root is never granted", "a non-zero user"))
    out += _check_non_root(security, f"{path}.securityContext")
    if security.get("sysctls"):
        out.append(Finding("PrivilegeNotAllowed", f"{path}.securityContext.sysctls",
                           "sysctls are never granted", "none"))
    out += _check_confinement(security, f"{path}.securityContext")
    if spec.get("resourceClaims"):
        out.append(Finding("ResourceNotGranted", f"{path}.resourceClaims",
                           "dynamic resource claims (devices through DRA) are not granted",
                           "cpu, memory, ephemeral-storage and the granted GPU resource",
                           grant_hint("gpu and spec.grant.gpuResource")))
    return out


def _check_non_root(security: Mapping[str, Any], path: str) -> list[Finding]:
    # PodSecurity "restricted" (the run namespace's level) refuses the pod later, with a message the
    # AgentRun's owner never sees; here it is a finding that names the field.
    if security.get("runAsNonRoot") is False:
        return [Finding("PrivilegeNotAllowed", f"{path}.runAsNonRoot", "running as root is never granted "
                        "(PodSecurity restricted)", "true", "leave it unset: Stockade sets true")]
    return []


def _check_confinement(security: Mapping[str, Any], path: str) -> list[Finding]:
    """AppArmor, SELinux and Windows host-process settings shared by pods and containers."""
    out = []
    if (security.get("appArmorProfile") or {}).get("type") == "Unconfined":
        out.append(Finding("PrivilegeNotAllowed", f"{path}.appArmorProfile.type",
                           "an unconfined AppArmor profile is never granted", "RuntimeDefault or Localhost"))
    selinux = security.get("seLinuxOptions") or {}
    if selinux.get("type") and selinux["type"] not in SELINUX_TYPES:
        out.append(Finding("PrivilegeNotAllowed", f"{path}.seLinuxOptions.type",
                           f"SELinux type {selinux['type']!r} is not granted", ", ".join(sorted(SELINUX_TYPES))))
    for key in ("user", "role"):
        if selinux.get(key):
            out.append(Finding("PrivilegeNotAllowed", f"{path}.seLinuxOptions.{key}",
                               "a custom SELinux user or role is never granted", "none"))
    if (security.get("windowsOptions") or {}).get("hostProcess"):
        out.append(Finding("HostAccess", f"{path}.windowsOptions.hostProcess",
                           "host processes are never granted", "false"))
    return out


def _check_container(container: Mapping[str, Any], grant: Grant, path: str) -> list[Finding]:
    out = []
    for key in sorted(set(container) - CONTAINER_FIELDS):
        out.append(Finding("FieldNotAllowed", f"{path}.{key}", "is not a field an agent container may set",
                           "ordinary container fields", "remove the field from the template"))
    security = container.get("securityContext") or {}
    if security.get("privileged"):
        out.append(Finding("PrivilegeNotAllowed", f"{path}.securityContext.privileged",
                           "privileged containers are never granted", "false"))
    if security.get("allowPrivilegeEscalation"):
        out.append(Finding("PrivilegeNotAllowed", f"{path}.securityContext.allowPrivilegeEscalation",
                           "privilege escalation is never granted", "false"))
    if (security.get("capabilities") or {}).get("add"):
        out.append(Finding("PrivilegeNotAllowed", f"{path}.securityContext.capabilities.add",
                           "added capabilities are never granted", "none (drop ALL)"))
    if security.get("runAsUser") == 0:
        out.append(Finding("PrivilegeNotAllowed", f"{path}.securityContext.runAsUser",
                           "root is never granted", "a non-zero user"))
    out += _check_non_root(security, f"{path}.securityContext")
    drop = (security.get("capabilities") or {}).get("drop")
    if drop is not None and "ALL" not in drop:
        out.append(Finding("PrivilegeNotAllowed", f"{path}.securityContext.capabilities.drop",
                           "must drop ALL capabilities (PodSecurity restricted)", "drop: [ALL]",
                           "add ALL to the list, or leave it unset for Stockade to fill in"))
    if security.get("procMount") not in (None, "Default"):
        out.append(Finding("PrivilegeNotAllowed", f"{path}.securityContext.procMount",
                           "an unmasked /proc is never granted", "Default"))
    if (security.get("seccompProfile") or {}).get("type") == "Unconfined":
        out.append(Finding("PrivilegeNotAllowed", f"{path}.securityContext.seccompProfile.type",
                           "unconfined seccomp is never granted", "RuntimeDefault or Localhost"))
    out += _check_confinement(security, f"{path}.securityContext")
    resources = container.get("resources") or {}
    if resources.get("claims"):
        out.append(Finding("ResourceNotGranted", f"{path}.resources.claims",
                           "dynamic resource claims (devices through DRA) are not granted",
                           "cpu, memory, ephemeral-storage and the granted GPU resource",
                           grant_hint("gpu and spec.grant.gpuResource")))
    allowed = set(BASE_RESOURCES) | ({grant.gpuResource} if grant.gpu and grant.gpuResource else set())
    for which in ("requests", "limits"):
        for name in sorted(set(resources.get(which) or {}) - allowed):
            is_gpu = "gpu" in name or "mig-" in name
            hint = (grant_hint("gpu and spec.grant.gpuResource") if is_gpu
                    else "only cpu, memory, ephemeral-storage and the granted GPU resource can be granted")
            out.append(Finding("GPUNotGranted" if is_gpu else "ResourceNotGranted",
                               f"{path}.resources.{which}.{name}", f"resource {name!r} is not granted",
                               ", ".join(sorted(allowed)), hint))
    out += check_gpu_env(container, grant, path)
    return out


def _check_totals(spec: Mapping[str, Any], grant: Grant, path: str, usage: Usage) -> list[Finding]:
    out = []
    granted = granted_amounts(grant)
    if usage.pods + 1 > grant.pods:
        out.append(Finding("PodsExceedGrant", path, f"the run already has {usage.pods} pod(s)",
                           f"{grant.pods} pod(s)", grant_hint("pods")))
    for which in ("requests", "limits"):
        for name, amount in sorted(pod_amounts(spec, which).items()):
            if name not in granted:
                continue  # reported per container above
            left = granted[name] - usage.taken(which).get(name, Decimal(0))
            if amount > left:
                field_name = {"cpu": "cpu", "memory": "memory", "ephemeral-storage": "ephemeralStorage"}.get(
                    name, "gpu")
                out.append(Finding(
                    "ResourceExceedsGrant", f"{path}.containers[*].resources.{which}.{name}",
                    f"asks for {amount.normalize():f} {name} in total",
                    f"{left.normalize():f} more ({granted[name].normalize():f} granted)",
                    grant_hint(field_name)))
    return out
