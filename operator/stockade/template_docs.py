"""What ``kubectl explain agentrun.spec.template`` says: a description for every node of podshape's schema.

The template is a Kubernetes PodTemplateSpec, so most fields mean what they mean in a Pod and the
description says where to read more (``kubectl explain pod.<path>``). Where Stockade checks or fills in a
field, NOTES says what it allows, so a user knows before applying what a refusal would be about.
"""

from __future__ import annotations

from typing import Any

# Pod paths ("spec.containers[]" for each container) -> what Stockade does with the field.
NOTES: dict[str, str] = {
    "": "A PodTemplateSpec (metadata and spec) for the agent's pod, which Stockade creates in the run namespace "
        "(as a Pod, or as the pod of a Job with spec.workload: Job). Fields are those of a Kubernetes Pod; unknown "
        "ones are kept and then refused by name. Anything the grant does not allow leaves the run Ready=False "
        "with reason TemplateExceedsGrant naming the field and the grant to change.",
    "metadata": "Labels and annotations for the agent's pod; its name and namespace are chosen by Stockade.",
    "metadata.labels": "Labels for the agent's pod; Stockade adds its own (stockade.io/...), which it keeps.",
    "metadata.labels{}": "A label value (at most 63 characters).",
    "metadata.annotations": "Annotations for the agent's pod. Device annotations (cdi.k8s.io/..., CRI-O devices) "
                            "and an unconfined AppArmor annotation are refused: devices come only as granted "
                            "resources.",
    "metadata.annotations{}": "An annotation value.",
    "spec": "The agent's PodSpec. Only ordinary pod fields may be set: host namespaces, nodeName, "
            "priorityClassName, privileged or root containers, added capabilities and host paths are refused. "
            "All containers' requests and limits together must fit grant.cpu, grant.memory, "
            "grant.ephemeralStorage and grant.gpu.",
    "spec.containers": "The agent's containers (1 to 32). Their resources count against the grant; Stockade fills "
                       "in a restricted securityContext where it is left unset.",
    "spec.containers[]": "One container of the agent's pod (kubectl explain pod.spec.containers).",
    "spec.initContainers": "Containers run before the agent's (at most 32); the largest of them counts against the "
                           "grant as the containers do.",
    "spec.initContainers[]": "One init container (kubectl explain pod.spec.initContainers).",
    "spec.containers[].resources": "Requests and limits of the container. With the other containers' they must "
                                   "fit the grant (the run namespace's ResourceQuota enforces the same totals).",
    "spec.containers[].resources.limits{}": "An amount of one resource, such as cpu: 500m, memory: 1Gi, or the "
                                            "granted GPU resource (grant.gpuResource: 1).",
    "spec.containers[].resources.requests{}": "An amount of one resource, such as cpu: 250m or memory: 512Mi.",
    "spec.containers[].resources.claims": "Names of the pod's resourceClaims this container uses; the pod may "
                                          "have none (dynamic resource claims are not granted).",
    "spec.containers[].ports[].hostPort": "Refused when set: host ports are never granted.",
    "spec.containers[].securityContext": "Privileged containers, allowPrivilegeEscalation: true, added "
                                         "capabilities, runAsUser: 0, runAsNonRoot: false and unconfined "
                                         "seccomp, AppArmor or SELinux are refused; unset fields are filled in "
                                         "as PodSecurity restricted asks.",
    "spec.containers[].securityContext.privileged": "Must be false or unset: privileged containers are never "
                                                    "granted.",
    "spec.containers[].securityContext.allowPrivilegeEscalation": "Must be false or unset (Stockade sets false).",
    "spec.containers[].securityContext.capabilities.add": "Must be empty: added capabilities are never granted.",
    "spec.containers[].securityContext.capabilities.add[]": "A Linux capability (refused: none may be added).",
    "spec.containers[].securityContext.capabilities.drop": "Capabilities to drop; when set it must contain ALL "
                                                           "(leave it unset for Stockade to fill in [ALL]).",
    "spec.containers[].securityContext.capabilities.drop[]": "A Linux capability to drop, such as ALL.",
    "spec.containers[].volumeMounts": "Where the pod's volumes are mounted in the container.",
    "spec.volumes": "The pod's volumes: only emptyDir, configMap, secret, projected and downwardAPI are granted; "
                    "hostPath and every other type are refused.",
    "spec.volumes[]": "One volume (kubectl explain pod.spec.volumes).",
    "spec.volumes[].projected.sources[].serviceAccountToken": "A ServiceAccount token: allowed only when "
                                                              "grant.kubernetesAPI is not empty, and only for the "
                                                              "API server's audience unless a platform allows more.",
    "spec.serviceAccountName": "Leave unset: the agent runs as the run's own ServiceAccount (agent), whose RBAC is "
                               "grant.kubernetesAPI. Any other name is refused.",
    "spec.serviceAccount": "Deprecated alias of serviceAccountName; the same rule applies.",
    "spec.automountServiceAccountToken": "true is refused unless grant.kubernetesAPI is not empty; without an API "
                                         "grant no token is mounted.",
    "spec.runtimeClassName": "Must be one of grant.runtimeClassNames (an AgentPolicy may require one, such as "
                             "gvisor).",
    "spec.hostNetwork": "Must be false or unset: host namespaces are never granted.",
    "spec.hostPID": "Must be false or unset: host namespaces are never granted.",
    "spec.hostIPC": "Must be false or unset: host namespaces are never granted.",
    "spec.hostUsers": "Only false may be set (a user namespace); leave it unset otherwise.",
    "spec.nodeName": "Refused: it bypasses the scheduler; use nodeSelector or affinity instead.",
    "spec.priorityClassName": "Refused: a priority class could preempt other workloads.",
    "spec.priority": "Only 0 (the default) is allowed; leave it unset.",
    "spec.preemptionPolicy": "PreemptLowerPriority (the default) or Never.",
    "spec.dnsPolicy": "Only ClusterFirst (the default) is allowed; DNS itself is reached only with grant.dns.",
    "spec.schedulerName": "Only default-scheduler (the default) is allowed.",
    "spec.securityContext": "runAsUser: 0, runAsNonRoot: false, sysctls and unconfined seccomp, AppArmor or SELinux "
                            "are refused; unset fields are filled in as PodSecurity restricted asks.",
    "spec.securityContext.sysctls": "Must be empty: sysctls are never granted.",
    "spec.securityContext.sysctls[]": "A sysctl (refused: none may be set).",
    "spec.securityContext.windowsOptions.hostProcess": "Must be false or unset: host processes are never granted.",
    "spec.resourceClaims": "Must be empty: dynamic resource claims (devices through DRA) are not granted; GPUs come "
                           "through grant.gpu and grant.gpuResource.",
    "spec.resourceClaims[]": "A resource claim (refused: none are granted).",
    "spec.activeDeadlineSeconds": "Capped by Stockade at grant.duration (and set from it when unset).",
    "spec.tolerations": "Taints the pod tolerates, as in a Pod.",
    "spec.tolerations[]": "One toleration (kubectl explain pod.spec.tolerations).",
}
_KIND = {"string": "a string", "integer": "an integer", "boolean": "true or false", "object": "an object",
         "array": "a list"}


def _pod_path(path: str) -> str:
    """The path for `kubectl explain pod.<path>`: init containers read as containers, no item markers."""
    return path.replace("[]", "").replace("{}", "")


def _generic(path: str, node: dict[str, Any]) -> str:
    if path.endswith("{}"):
        return f"One value of {_pod_path(path)}, as in a Pod."
    if path.endswith("[]"):
        kind = _KIND.get(str(node.get("type")), "an item")
        return f"One item of {_pod_path(path)} ({kind}), as in a Pod."
    return f"As in a Pod: kubectl explain pod.{_pod_path(path)} has the full text."


def _note(path: str) -> str | None:
    # A note on a container field holds for init containers too.
    return NOTES.get(path) or NOTES.get(path.replace("spec.initContainers[]", "spec.containers[]", 1))


def describe(node: dict[str, Any], path: str = "") -> dict[str, Any]:
    """A copy of the schema ``node`` (at pod path ``path``) with a description on every node."""
    out = dict(node)
    out["description"] = _note(path) or node.get("description") or _generic(path, node)
    if "properties" in node:
        out["properties"] = {name: describe(prop, f"{path}.{name}" if path else name)
                             for name, prop in node["properties"].items()}
    if isinstance(node.get("items"), dict):
        out["items"] = describe(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = describe(node["additionalProperties"], f"{path}{{}}")
    return out
