"""GPU visibility: a container sees GPUs only through a granted GPU request (pure).

The NVIDIA container runtime exposes GPUs by environment (NVIDIA_VISIBLE_DEVICES) as well as through
the device plugin, so a container without a GPU request must hide them, and one with a request must
not widen what the device plugin allocated.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from stockade.api.models import Grant
from stockade.findings import Finding
from stockade.quantity import parse_quantity

# Environment that exposes GPUs through the NVIDIA container runtime without a GPU request.
GPU_VISIBILITY_ENV = ("NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES")
GPU_HIDDEN = "void"
GPU_HIDDEN_VALUES = ("", GPU_HIDDEN, "none")


def _quantity(value: Any) -> Decimal | None:
    try:
        return parse_quantity(value)
    except ValueError:
        return None


def has_gpu_request(container: Mapping[str, Any], grant: Grant) -> bool:
    """Does this container ask for the granted GPU resource (and so get GPUs from the device plugin)?"""
    resources = container.get("resources") or {}
    for which in ("limits", "requests"):
        for name, value in (resources.get(which) or {}).items():
            if name == grant.gpuResource and (_quantity(value) or 0) > 0:
                return True
    return False


def check_gpu_env(container: Mapping[str, Any], grant: Grant, path: str) -> list[Finding]:
    """GPU visibility through the NVIDIA runtime's environment instead of the device plugin.

    Without a GPU request any visibility setting exposes GPUs. With one, the device plugin sets
    NVIDIA_VISIBLE_DEVICES to the allocated devices, and a value of the container's own (env, or
    envFrom without a prefix) comes later and wins: "all" would expose every GPU on the node.
    """
    out = []
    has_gpu = has_gpu_request(container, grant)
    names = ("NVIDIA_VISIBLE_DEVICES",) if has_gpu else GPU_VISIBILITY_ENV
    for index, env in enumerate(container.get("env") or []):
        if env.get("name") not in names:
            continue
        if "valueFrom" in env or env.get("value", "") not in GPU_HIDDEN_VALUES:
            shown = "a value from elsewhere" if "valueFrom" in env else repr(env.get("value", ""))
            what = ("overrides the GPUs the device plugin allocated" if has_gpu
                    else "exposes GPUs to a container without a GPU request")
            out.append(Finding("GPUNotGranted", f"{path}.env[{index}]", f"{env['name']}={shown} {what}",
                               f"{env['name']}={GPU_HIDDEN} or unset",
                               "request the GPU resource in this container's limits instead"))
    if has_gpu:
        for index, source in enumerate(container.get("envFrom") or []):
            if "NVIDIA_VISIBLE_DEVICES".startswith(source.get("prefix") or ""):
                out.append(Finding("GPUNotGranted", f"{path}.envFrom[{index}]",
                                   "could set NVIDIA_VISIBLE_DEVICES and override the GPUs the device plugin "
                                   "allocated", "envFrom with a prefix", "add a prefix such as APP_"))
    return out


def check_gpus_hidden(container: Mapping[str, Any], path: str) -> list[Finding]:
    for env in container.get("env") or []:
        if env.get("name") == "NVIDIA_VISIBLE_DEVICES" and "valueFrom" not in env \
                and env.get("value", "") in GPU_HIDDEN_VALUES:
            return []
    return [Finding("GPUNotGranted", f"{path}.env", "NVIDIA_VISIBLE_DEVICES is not set: an image built on a CUDA "
                    "base exposes every GPU on a node whose default runtime is nvidia",
                    f"NVIDIA_VISIBLE_DEVICES={GPU_HIDDEN} (Stockade's mutating webhook adds it)",
                    "set it in the container, or request the GPU resource in its limits")]
