"""Safe defaults for the agent's pod (pure): what the operator fills in where the template is silent.

Explicit unsafe settings stay as written, for ``grantcheck.check_pod`` to refuse by name.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from stockade import labels
from stockade.api.models import Grant
from stockade.gpucheck import GPU_HIDDEN, has_gpu_request

# Taints that the nodes of a GPU resource carry, by the resource's vendor prefix: the NVIDIA GPU
# operator (and GKE/EKS GPU node pools) taint every GPU node nvidia.com/gpu, MIG-partitioned ones
# included, so a pod asking for nvidia.com/mig-1g.10gb must tolerate nvidia.com/gpu to land there.
NODE_TAINTS_BY_VENDOR = {"nvidia.com/": ("nvidia.com/gpu",), "amd.com/": ("amd.com/gpu",)}


def gpu_tolerations(resource: str) -> list[dict[str, Any]]:
    """Tolerations a pod needs to reach the nodes that offer ``resource``."""
    keys = [resource]
    for prefix, taints in NODE_TAINTS_BY_VENDOR.items():
        if resource.startswith(prefix):
            keys += [key for key in taints if key not in keys]
    return [{"key": key, "operator": "Exists", "effect": "NoSchedule"} for key in keys]


def harden_pod_spec(spec: Mapping[str, Any], grant: Grant) -> dict[str, Any]:
    """Safe defaults where the template is silent; explicit unsafe settings stay (and are refused).

    PodSecurity ``restricted`` would reject a pod that merely omits these fields, so the operator
    fills them in rather than make every user spell them out. ``spec`` must have the shape
    ``podshape`` describes (the planner checks that first).
    """
    out = copy.deepcopy(dict(spec))
    out.setdefault("restartPolicy", "Never")
    out["serviceAccountName"] = out.get("serviceAccountName") or labels.SERVICE_ACCOUNT
    out.pop("serviceAccount", None)
    if not grant.kubernetesAPI:
        out.setdefault("automountServiceAccountToken", False)
    security = out.get("securityContext") or {}
    out["securityContext"] = security
    security.setdefault("runAsNonRoot", True)
    security.setdefault("seccompProfile", {"type": "RuntimeDefault"})
    for key in ("initContainers", "containers"):
        for container in out.get(key) or []:
            csec = container.get("securityContext") or {}
            container["securityContext"] = csec
            csec.setdefault("allowPrivilegeEscalation", False)
            capabilities = csec.get("capabilities") or {}
            csec["capabilities"] = capabilities
            capabilities.setdefault("drop", ["ALL"])
            if not has_gpu_request(container, grant):
                hide_gpus(container)
    if grant.gpu and grant.gpuResource:
        tolerations = out.get("tolerations") or []
        out["tolerations"] = tolerations
        for wanted in gpu_tolerations(grant.gpuResource):
            if not any(t.get("key") == wanted["key"] for t in tolerations):
                tolerations.append(wanted)
    return out


def hide_gpus(container: dict[str, Any]) -> bool:
    """Make the NVIDIA runtime expose no GPU to this container; True if anything changed.

    Images built on CUDA bases set NVIDIA_VISIBLE_DEVICES=all, and on a node whose default runtime
    is nvidia that alone exposes every GPU. An explicit env entry wins over the image and envFrom.
    """
    env = container.get("env") or []
    container["env"] = env
    present = {item.get("name") for item in env}
    changed = False
    if "NVIDIA_VISIBLE_DEVICES" not in present:
        env.append({"name": "NVIDIA_VISIBLE_DEVICES", "value": GPU_HIDDEN})
        changed = True
    return changed
