"""Evidence kept with a violation: bounded, so a noisy signal cannot bloat the AgentRun.

Pure helpers: the responder passes in the pod and its events as the watches and the API hold them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

MAX_STRING = 512
MAX_ITEMS = 16
MAX_DEPTH = 8
MAX_EVIDENCE_BYTES = 6 * 1024
EVENTS_KEPT = 5
FULL_KEPT = 5  # the newest violations keep everything; older ones a compact form
BULKY = ("signal", "pod", "events")


def bounded(value: Any, depth: int = 0) -> Any:
    """A JSON-safe copy with long strings cut, long lists and maps shortened and deep nesting elided."""
    if depth >= MAX_DEPTH:
        return "…"
    if isinstance(value, Mapping):
        items = list(value.items())
        out = {str(k)[:128]: bounded(v, depth + 1) for k, v in items[:MAX_ITEMS * 2]}
        if len(items) > MAX_ITEMS * 2:
            out["…"] = f"{len(items) - MAX_ITEMS * 2} more keys"
        return out
    if isinstance(value, list | tuple):
        out_list = [bounded(v, depth + 1) for v in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            out_list.append(f"… {len(value) - MAX_ITEMS} more")
        return out_list
    if isinstance(value, str):
        return value if len(value) <= MAX_STRING else value[:MAX_STRING] + "…"
    if value is None or isinstance(value, bool | int | float):
        return value
    return bounded(str(value), depth)


def pod_summary(pod: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The parts of a pod an investigator needs: who, where, what it ran and with what."""
    if not pod:
        return None
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    containers = [
        {k: c[k] for k in ("name", "image", "command", "args", "resources", "securityContext", "ports") if k in c}
        for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    ]
    out = {
        "uid": meta.get("uid"),
        "labels": meta.get("labels"),
        "ownerReferences": [f"{o.get('kind')}/{o.get('name')}" for o in meta.get("ownerReferences") or []],
        "nodeName": spec.get("nodeName"),
        "serviceAccountName": spec.get("serviceAccountName"),
        "runtimeClassName": spec.get("runtimeClassName"),
        "securityContext": spec.get("securityContext"),
        "volumes": [{"name": v.get("name"), "type": next((k for k in v if k != "name"), None)}
                    for v in spec.get("volumes") or []],
        "containers": containers,
        "phase": status.get("phase"),
        "podIPs": [ip.get("ip") for ip in status.get("podIPs") or []] or status.get("podIP"),
    }
    kept: dict[str, Any] = bounded({k: v for k, v in out.items() if v not in (None, [], {})})
    return kept


def event_summary(events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The pod's last few Events, newest last."""
    def when(event: Mapping[str, Any]) -> str:
        return str(event.get("lastTimestamp") or event.get("eventTime") or
                   (event.get("metadata") or {}).get("creationTimestamp") or "")

    ordered = sorted(events, key=when)[-EVENTS_KEPT:]
    return [bounded({"time": when(e), "type": e.get("type"), "reason": e.get("reason"),
                     "message": e.get("message"), "count": e.get("count")}) for e in ordered]


def size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), default=str))


def kept_signal(signal: Any) -> Any:
    """What is kept of a signal while its violation waits for the responder: the bounded copy the
    evidence would hold anyway, so a queue of them costs kilobytes each, never the bodies received."""
    kept = bounded(signal)
    found = size(kept)
    return kept if found <= MAX_EVIDENCE_BYTES else {"truncated": True, "bytes": found}


def assemble(base: Mapping[str, Any] | None, signal: Any, pod: Mapping[str, Any] | None,
             events: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Evidence for one violation; if it is still too big, the bulkiest parts go first."""
    out: dict[str, Any] = dict(bounded(base or {}))
    if signal is not None:
        out["signal"] = bounded(signal)
    summary = pod_summary(pod)
    if summary:
        out["pod"] = summary
    event_list = event_summary(events)
    if event_list:
        out["events"] = event_list
    for key in ("signal", "events", "pod"):
        if size(out) <= MAX_EVIDENCE_BYTES:
            break
        if key in out:
            out[key] = {"truncated": True, "bytes": size(out[key])}
    return out


def compact(found: Mapping[str, Any]) -> dict[str, Any]:
    """An older violation's evidence: the rule's findings stay, the bulky copies go (the pod's uid stays)."""
    out = {k: v for k, v in found.items() if k not in BULKY}
    pod = found.get("pod")
    if isinstance(pod, Mapping) and pod.get("uid"):
        out["pod"] = {"uid": pod["uid"]}
    if any(k in found for k in BULKY):
        out["compacted"] = True
    return out
