"""A run namespace's pods in numbers (what the grant has left) and the GPU-hiding patch for new pods.

Pure, like stockade.admission.policy, which re-exports these names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any

from stockade.api.models import Grant
from stockade.grantcheck import GPU_HIDDEN, Usage, has_gpu_request, pod_amounts
from stockade.harden import hide_gpus

TERMINAL_PHASES = ("Succeeded", "Failed")


Amounts = tuple[dict[str, Decimal], dict[str, Decimal]]  # a pod's (requests, limits)
# A pod as the store holds it: (name, resourceVersion, read the body). The body is read only when the
# version is new to the tracker, so a request does not decode every pod of the namespace.
PodRef = tuple[str, Any, Callable[[], Mapping[str, Any]]]


def amounts_of(pod: Mapping[str, Any]) -> Amounts:
    spec = pod.get("spec") or {}
    return pod_amounts(spec, "requests"), pod_amounts(spec, "limits")


def usage_of(pods: Iterable[Mapping[str, Any]], *, exclude: str = "") -> Usage:
    """What the run's live pods hold, as the ResourceQuota counts it (terminal pods hold nothing)."""
    requests: dict[str, Decimal] = {}
    limits: dict[str, Decimal] = {}
    count = 0
    for pod in pods:
        meta = pod.get("metadata") or {}
        if (exclude and meta.get("name") == exclude) or (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
            continue
        count += 1
        for totals, taken in zip((requests, limits), amounts_of(pod), strict=True):
            for name, amount in taken.items():
                totals[name] = totals.get(name, Decimal(0)) + amount
    return Usage(pods=count, requests=requests, limits=limits)


class UsageTracker:
    """``usage_of`` for one namespace, kept as running totals: a request re-reads only pods that changed.

    Summing every pod's quantities on every request costs more than the rest of a decision once a
    run has many pods; here each request compares (name, resourceVersion), and decodes and adds up only
    the pods added, changed or gone since the last one.
    """

    def __init__(self) -> None:
        self._pods: dict[str, tuple[Any, str, bool, Amounts]] = {}  # name -> (version, name, counted, amounts)
        self._requests: dict[str, Decimal] = {}
        self._limits: dict[str, Decimal] = {}
        self._count = 0

    def usage(self, pods: Iterable[Mapping[str, Any]], *, exclude: str = "") -> Usage:
        refs = (_ref(pod) for pod in pods)
        return self.usage_of_refs(refs, exclude=exclude)

    def usage_of_refs(self, pods: Iterable[PodRef], *, exclude: str = "") -> Usage:
        # Keyed by name: a pod made again under the same name has a new resourceVersion, so it is read again.
        seen: set[str] = set()
        excluded: Amounts | None = None
        for uid, version, read in pods:
            seen.add(uid)
            known = self._pods.get(uid)
            if known is None or known[0] != version:
                if known is not None:
                    self._account(known, -1)
                pod = read()
                counted = (pod.get("status") or {}).get("phase") not in TERMINAL_PHASES
                known = (version, uid, counted, amounts_of(pod))
                self._pods[uid] = known
                self._account(known, 1)
            if exclude and known[1] == exclude and known[2]:
                excluded = known[3]
        for uid in [u for u in self._pods if u not in seen]:
            self._account(self._pods.pop(uid), -1)
        requests, limits, count = dict(self._requests), dict(self._limits), self._count
        if excluded is not None:
            count -= 1
            for totals, taken in zip((requests, limits), excluded, strict=True):
                for name, amount in taken.items():
                    totals[name] -= amount
        return Usage(pods=count, requests=requests, limits=limits)

    def _account(self, entry: tuple[Any, str, bool, Amounts], sign: int) -> None:
        if not entry[2]:
            return
        self._count += sign
        for totals, taken in zip((self._requests, self._limits), entry[3], strict=True):
            for name, amount in taken.items():
                totals[name] = totals.get(name, Decimal(0)) + sign * amount


def _ref(pod: Mapping[str, Any]) -> PodRef:
    meta = pod.get("metadata") or {}
    return str(meta.get("name") or ""), meta.get("resourceVersion"), lambda: pod


def add_usage(usage: Usage, pods: Iterable[Mapping[str, Any]]) -> Usage:
    """``usage`` plus pods admitted a moment ago that the store has not seen yet."""
    extra = usage_of(pods)
    requests = dict(usage.taken("requests"))
    limits = dict(usage.taken("limits"))
    for mine, theirs in ((requests, extra.taken("requests")), (limits, extra.taken("limits"))):
        for name, amount in theirs.items():
            mine[name] = mine.get(name, Decimal(0)) + amount
    return Usage(pods=usage.pods + extra.pods, requests=requests, limits=limits)


def gpu_patch(pod: Mapping[str, Any], grant: Grant | None) -> list[dict[str, Any]]:
    """``mutate_pod`` as JSON-patch operations: what the mutating webhook answers with."""
    spec = pod.get("spec") or {}
    ops: list[dict[str, Any]] = []
    hidden = {"name": "NVIDIA_VISIBLE_DEVICES", "value": GPU_HIDDEN}
    for key in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(key) or []):
            if grant is not None and has_gpu_request(container, grant):
                continue
            env = container.get("env")
            if env is None:
                ops.append({"op": "add", "path": f"/spec/{key}/{index}/env", "value": [hidden]})
            elif not any(item.get("name") == "NVIDIA_VISIBLE_DEVICES" for item in env):
                ops.append({"op": "add", "path": f"/spec/{key}/{index}/env/-", "value": hidden})
    return ops


def mutate_pod(pod: dict[str, Any], grant: Grant | None) -> bool:
    """Make a pod safe rather than refuse it: hide GPUs from every container without a GPU request.

    Images built on CUDA bases set NVIDIA_VISIBLE_DEVICES=all, which alone exposes every GPU on a
    node whose default runtime is nvidia. True if anything changed.
    """
    spec = pod.get("spec") or {}
    changed = False
    for key in ("initContainers", "containers"):
        for container in spec.get(key) or []:
            if grant is None or not has_gpu_request(container, grant):
                changed = hide_gpus(container) or changed
    return changed
