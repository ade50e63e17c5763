"""grant.podToPod in detection: the addresses of the run's own pods that one of its pods may reach.

Pure. The NetworkPolicy ``stockade-pod-to-pod`` (stockade.plan) selects the run's pods that are not
quarantined, as sources and as destinations; detection counts the same connections as granted and no
others: a quarantined pod reaches no peer and no pod reaches a quarantined one. A pod that has finished
holds no address (the network may give it to a pod of another namespace), so it is no peer either.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from stockade import labels
from stockade.api.models import Grant
from stockade.detect.falco import normalise_ip

TERMINAL_PHASES = ("Succeeded", "Failed")


def quarantined(pod: Mapping[str, Any]) -> bool:
    # Any value counts: the NetworkPolicies select on the key (DoesNotExist), not on "true".
    return labels.QUARANTINED in ((pod.get("metadata") or {}).get("labels") or {})


def addresses(pod: Mapping[str, Any]) -> list[str]:
    status = pod.get("status") or {}
    found = [str(ip.get("ip")) for ip in status.get("podIPs") or [] if ip.get("ip")]
    return found or ([str(status["podIP"])] if status.get("podIP") else [])


def peer_addresses(grant: Grant, source: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """What ``source`` may reach among ``pods`` (its run namespace's pods) under grant.podToPod."""
    if not grant.podToPod or quarantined(source):
        return frozenset()
    own = (source.get("metadata") or {}).get("uid")
    found: set[str] = set()
    for pod in pods:
        if (pod.get("metadata") or {}).get("uid") == own and own is not None:
            continue  # its own address is loopback's business, not a peer's
        if quarantined(pod) or (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
            continue
        found.update(ip for ip in (normalise_ip(a) for a in addresses(pod)) if ip is not None)
    return frozenset(found)
