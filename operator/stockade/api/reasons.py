"""Every reason Stockade writes, as constants beside the API: condition reasons (AgentRun and AgentPolicy
status) and Event reasons (pure, no imports).

What each means and what to do is said once, in the table of :mod:`stockade.reasons` (``docs/reasons.md``,
``stockade explain reasons``), whose rows name these constants; a unit test fails when a constant here has
no row there, or a row no constant. A quarantined run's ``Quarantined`` and ``Ready`` conditions carry the
violation's kind instead (:data:`stockade.detect.rules.KINDS`).
"""

from __future__ import annotations

from typing import Final

# The run's progress (Ready, GuardrailsReady) ---------------------------------------------------------------
RUNNING: Final = "Running"
SUCCEEDED: Final = "Succeeded"
GUARDRAILS_PENDING: Final = "GuardrailsPending"
GUARDRAILS_APPLIED: Final = "GuardrailsApplied"
WORKLOAD_PENDING: Final = "WorkloadPending"
WORKLOAD_FAILED: Final = "WorkloadFailed"
EXPIRED: Final = "Expired"

# Refusals: the spec asks for what no fence can give -------------------------------------------------------
TEMPLATE_EXCEEDS_GRANT: Final = "TemplateExceedsGrant"
INVALID_SPEC: Final = "InvalidSpec"
INVALID_TEMPLATE: Final = "InvalidTemplate"
API_RULE_NOT_GRANTABLE: Final = "APIRuleNotGrantable"
REFUSED_BY_API_SERVER: Final = "RefusedByAPIServer"
POD_SECURITY_REFUSED: Final = "PodSecurityRefused"
ADMISSION_REFUSED: Final = "AdmissionRefused"
ADMISSION_AUDIT: Final = "AdmissionAudit"
NAMESPACE_CONFLICT: Final = "NamespaceConflict"

# Admission against budgets, quotas and policies (Admitted, PolicyCompliant) --------------------------------
ADMITTED: Final = "Admitted"
BUDGET_EXHAUSTED: Final = "BudgetExhausted"
TEAM_QUOTA_EXCEEDED: Final = "TeamQuotaExceeded"
NO_POLICY: Final = "NoPolicy"
POLICY_INVALID: Final = "PolicyInvalid"
QUEUED: Final = "Queued"
WITHIN_POLICY: Final = "WithinPolicy"
NARROWED_BELOW_GRANT: Final = "NarrowedBelowGrant"

# Defaults of the kstatus conditions (Stalled, Quarantined) -------------------------------------------------
AS_EXPECTED: Final = "AsExpected"
NOT_QUARANTINED: Final = "NotQuarantined"

# Quarantine and detection, the fence kept -----------------------------------------------------------------
VIOLATION: Final = "Violation"
QUARANTINED: Final = "Quarantined"
RELEASED: Final = "Released"
GUARDRAIL_RESTORED: Final = "GuardrailRestored"
FENCE_COMPLETE: Final = "FenceComplete"
CLEANUP: Final = "Cleanup"

# Egress hosts (EgressResolved) -----------------------------------------------------------------------------
HOST_UNRESOLVED: Final = "HostUnresolved"
ALL_HOSTS_RESOLVED: Final = "AllHostsResolved"
LAST_KNOWN_ADDRESSES: Final = "LastKnownAddresses"
NO_HOSTS_GRANTED: Final = "NoHostsGranted"

# Stockade's own admission (AdmissionReady) -----------------------------------------------------------------
ADMISSION_IN_PLACE: Final = "AdmissionInPlace"
ADMISSION_MISSING: Final = "AdmissionMissing"
ADMISSION_CHANGED: Final = "AdmissionChanged"
ADMISSION_RESTORED: Final = "AdmissionRestored"

# The AgentPolicy's Ready condition -------------------------------------------------------------------------
EVALUABLE: Final = "Evaluable"
INVALID: Final = "Invalid"


def phase_reason(phase: str) -> str:
    """The Normal Event's reason when a run's phase changes: PhaseRunning, PhaseQueued, ..."""
    return f"Phase{phase}"


def problem(reason: str, message: str) -> str:
    """A "Reason: message" problem (conditions.Observed.invalid): a reason and why, in one string."""
    return f"{reason}: {message}"
