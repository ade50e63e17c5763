"""Which Services a run namespace may hold: one table for the webhook and for detection.

Pure. A Service only names pods; the NetworkPolicies decide who reaches them. ClusterIP and headless
Services reach the run's pods from inside the cluster only, so they are the agent's to create when
``grant.kubernetesAPI`` lets it create services (an agent and its sandbox, pods that find each other:
``grant.podToPod`` lets the traffic through). Every other shape opens the run to traffic no grant
covers and stays refused whatever RBAC says. ``services/status`` (a LoadBalancer's addresses) is
never grantable at all (stockade.apirules: every ``*/status`` write).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stockade import apirules
from stockade.api.models import Grant

# Shapes no grant allows: (field, why); the ValidatingAdmissionPolicy stockade-grant holds the same.
WAYS_OUT = {
    "NodePort": "a NodePort Service opens a port on every node to outside traffic",
    "LoadBalancer": "a LoadBalancer Service opens the run to outside traffic",
    "ExternalName": "an ExternalName Service points cluster DNS at a name outside the fence",
}
EXTERNAL_IPS = "external IPs take over the cluster's traffic to those addresses"


def exposure(spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, why) for each way the Service reaches past the cluster; empty for ClusterIP and headless."""
    out = []
    kind = spec.get("type") or "ClusterIP"
    if kind != "ClusterIP":
        out.append(("spec.type", WAYS_OUT.get(kind, f"a {kind} Service is not a ClusterIP one")))
    if spec.get("externalIPs"):
        out.append(("spec.externalIPs", EXTERNAL_IPS))
    return out


def allows_create(grant: Grant, group: str, resource: str) -> bool:
    """Whether grant.kubernetesAPI lets the agent create this kind (the admission webhook's test too)."""
    for rule in grant.kubernetesAPI:
        if apirules.never_grantable(rule.model_dump(exclude_none=True)):
            continue  # the CRD refuses such a rule; one stored before that grants nothing either
        if ("create" in rule.verbs and (group in rule.apiGroups or "*" in rule.apiGroups)
                and (resource in rule.resources or "*" in rule.resources)):
            return True
    return False


def granted(grant: Grant) -> bool:
    return allows_create(grant, "", "services")
