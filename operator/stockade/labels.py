"""Label, annotation and name constants shared by the planner, admission and detection."""

from __future__ import annotations

FIELD_MANAGER = "stockade"
FINALIZER = "stockade.io/cleanup"

AGENTRUN = "stockade.io/agentrun"
AGENTRUN_NAMESPACE = "stockade.io/agentrun-namespace"
# On the run namespace: the AgentRun's uid. Names can be reused and taken by others; the uid is what makes
# a namespace this run's (and lets an orphan be recognised once its AgentRun is gone).
AGENTRUN_UID = "stockade.io/agentrun-uid"
QUARANTINED = "stockade.io/quarantined"
COMPONENT = "stockade.io/component"
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "stockade"
RELEASE_ANNOTATION = "stockade.io/release"
# On the run namespace: "enforce" or "audit", so API-server policies can tell the two apart.
ENFORCEMENT = "stockade.io/enforcement"

# PodSecurity admission, built into the API server.
POD_SECURITY = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
    "pod-security.kubernetes.io/audit": "restricted",
    "pod-security.kubernetes.io/warn": "restricted",
}

SERVICE_ACCOUNT = "agent"
POLICY_DENY_ALL = "stockade-deny-all"
POLICY_EGRESS = "stockade-egress"
POLICY_DNS = "stockade-dns"
POLICY_POD_TO_POD = "stockade-pod-to-pod"
POLICY_QUARANTINE = "stockade-quarantine"
QUOTA = "stockade-grant"
LIMIT_RANGE = "stockade-limits"
ROLE = "stockade-agent"
ROLE_BINDING = "stockade-agent"
