"""Every condition reason and Event reason Stockade writes: one table, what each means and what to do (pure).

The reasons themselves are constants beside the API (:mod:`stockade.api.reasons`), which the code writes;
each row here names one, and this is the one place their meaning is said. ``docs/reasons.md`` is rendered
from the table (``make docs``: ``python -m stockade.reasons``; a unit test fails when the file differs), and
``stockade explain reasons`` prints it. Unit tests fail on a constant without a row (or a row without a
constant), and scan the source for the reasons the code writes (Events, conditions, "Reason: message"
problems, literal or constant) to fail on one not listed here.
"""

from __future__ import annotations

import typing
from dataclasses import asdict, dataclass
from typing import Any

from stockade.api import reasons as R
from stockade.api.models import Phase
from stockade.detect.rules import KINDS

EVENT_WARNING = "Event (Warning)"
EVENT_NORMAL = "Event (Normal)"
POLICY = "AgentPolicy "  # before a condition of the AgentPolicy, not of the AgentRun


@dataclass(frozen=True)
class Reason:
    name: str
    where: tuple[str, ...]  # "Ready=False" (a condition of the AgentRun), "AgentPolicy Ready=False", an Event
    meaning: str
    action: str  # what the user should do; "Nothing." when nothing is wrong

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "where": list(self.where)}


# A refusal that stalls the run until its spec changes (conditions.Observed.invalid).
_STALLS = ("Ready=False", "GuardrailsReady=False", "Stalled=True", EVENT_WARNING)
# Waiting for a budget, a quota or a policy: phase Queued, nothing built (grantpolicy.budget.Decision).
_QUEUES = ("Admitted=False", "Ready=False", "Reconciling=True")

REASONS: tuple[Reason, ...] = (
    # The run's progress --------------------------------------------------------------------------------------
    Reason(R.RUNNING, ("Ready=True",), "The agent runs inside its complete fence.", "Nothing."),
    Reason(R.SUCCEEDED, ("Ready=True",), "The agent's workload completed.",
           "Nothing; delete the AgentRun to remove its run namespace."),
    Reason(R.GUARDRAILS_PENDING, ("Ready=False", "GuardrailsReady=False"),
           "The fence is being built; the message names what it waits for (the ResourceQuota, a NetworkPolicy, "
           "the run namespace being deleted and re-created).",
           "Wait a few seconds. If it stays, `stockade status NAME` and the operator's log say which object "
           "could not be made."),
    Reason(R.GUARDRAILS_APPLIED, ("GuardrailsReady=True",), "Every guardrail of the fence is in place.", "Nothing."),
    Reason(R.WORKLOAD_PENDING, ("Ready=False",),
           "The fence is complete; the agent's pod is not running yet (scheduling, image pull).",
           "`kubectl get pods -n RUN_NAMESPACE` and `kubectl describe pod` show why it waits."),
    Reason(R.WORKLOAD_FAILED, ("Ready=False", "Stalled=True"), "The agent's Pod or Job failed; the message says how.",
           "Read its logs (`kubectl logs -n RUN_NAMESPACE POD`), fix the template or the program, and create the "
           "AgentRun again."),
    Reason(R.EXPIRED, ("Ready=False",), "grant.duration has passed since startTime; the agent's pods were deleted.",
           "Nothing to undo; create a new AgentRun to run again (a longer grant.duration if the policy allows)."),
    # Refusals: the spec asks for what no fence can give -----------------------------------------------------
    Reason(R.TEMPLATE_EXCEEDS_GRANT, ("Ready=False", "Stalled=True", EVENT_WARNING),
           "spec.template asks for what spec.grant does not give; the message names each field, what the grant "
           "allows and which grant field would allow it. Nothing runs.",
           "Change the template or the grant as the message says (`stockade status NAME` lists each refusal)."),
    Reason(R.INVALID_SPEC, _STALLS,
           "The spec does not fit the API model the operator runs (usually a CRD older than the operator).",
           "Fix the field the message names; if the spec is right, install the CRDs of the operator's version "
           "(crds/ or the stockade-crds chart)."),
    Reason(R.INVALID_TEMPLATE, _STALLS, "A field of spec.template has the wrong Kubernetes type (volumes: 5).",
           "Fix the field the message names (`kubectl explain pod.spec...` has its type)."),
    Reason(R.API_RULE_NOT_GRANTABLE, _STALLS,
           "A rule of grant.kubernetesAPI is a way out of the fence (pods/exec, serviceaccounts/token, "
           "wildcards, writes to the fence...).",
           "Remove or narrow the rule the message names; `stockade explain grant.kubernetesAPI` lists what is "
           "refused."),
    Reason(R.REFUSED_BY_API_SERVER, _STALLS,
           "The API server refused an object Stockade built from the spec as invalid (422); the message quotes it.",
           "Change the spec as the message says; the run stays refused until its generation changes."),
    Reason(R.POD_SECURITY_REFUSED, _STALLS,
           "PodSecurity (the run namespace's restricted level) refused the agent's pod.",
           "Make the template comply with the restricted profile (the message names the field), or leave the "
           "securityContext unset for Stockade to fill in."),
    Reason(R.ADMISSION_REFUSED, ("Ready=False", "GuardrailsReady=False", "Reconciling=True", EVENT_WARNING),
           "As a condition: a webhook or ValidatingAdmissionPolicy of the platform (not Stockade's) denied an "
           "object of the fence; it is asked again after 2 s, doubling to 60 s. As an Event only: Stockade's "
           "webhook refused a request of the agent (recorded as a violation with source admission).",
           "Condition: ask the owner of the policy the message names to exempt the operator's ServiceAccount; "
           "the run continues by itself once it passes. Event: nothing, the fence held; look at what the agent "
           "tried."),
    Reason(R.ADMISSION_AUDIT, (EVENT_WARNING,),
           "In enforcement: audit, a request of the agent that Stockade's webhook would refuse was let through.",
           "Review the violation; switch spec.enforcement to enforce to refuse such requests."),
    Reason(R.NAMESPACE_CONFLICT, ("Ready=False", "GuardrailsReady=False", "Stalled=True"),
           "Every name the run namespace may have is taken by a namespace that does not belong to this AgentRun.",
           "Delete those namespaces (the message names one) or rename the AgentRun."),
    # Admission against budgets, quotas and policies ----------------------------------------------------------
    Reason(R.ADMITTED, ("Admitted=True", EVENT_NORMAL),
           "Within every budget and team quota; the message and status.policies name the AgentPolicies.",
           "Nothing."),
    Reason(R.BUDGET_EXHAUSTED, _QUEUES,
           "phase Queued: an AgentPolicy budget (budgets.perNamespace or budgets.total) has no room for the grant; "
           "the message gives used, asked and limit.",
           "Wait: it starts by itself when a run ends. Or ask the platform admin to raise the budget "
           "(`kubectl get agentpolicies` shows the use)."),
    Reason(R.TEAM_QUOTA_EXCEEDED, _QUEUES,
           "phase Queued: a ResourceQuota of the team namespace has no room for the grant.",
           "Wait for other runs or pods of the namespace to end, or raise the quota the message names."),
    Reason(R.NO_POLICY, _QUEUES, "phase Queued: no AgentPolicy selects the AgentRun's namespace.",
           "Ask the platform admin for an AgentPolicy whose namespaceSelector selects the namespace."),
    Reason(R.POLICY_INVALID, _QUEUES,
           "phase Queued: an AgentPolicy selecting the namespace cannot be evaluated, so it admits nothing.",
           "The platform admin fixes the policy (its Ready=False Invalid condition says why)."),
    Reason(R.QUEUED, ("GuardrailsReady=False", EVENT_NORMAL),
           "The run waits for admission; the Event's message starts with the reason (BudgetExhausted, ...).",
           "As for the reason the message starts with."),
    Reason(R.WITHIN_POLICY, ("PolicyCompliant=True",), "The grant is within every AgentPolicy bounding the run now.",
           "Nothing."),
    Reason(R.NARROWED_BELOW_GRANT, ("PolicyCompliant=False", EVENT_WARNING, "Ready=False", "Stalled=True"),
           "A policy was narrowed (or removed) below what this running run holds; the message names the field, "
           "the policy and its new limit. With the policy's onNarrowed: Stop the run is also stopped (phase "
           "Failed, Ready=False, Stalled=True).",
           "Create the run again within the new policy, or ask the admin to restore the limit."),
    # Defaults of the kstatus conditions ------------------------------------------------------------------------
    Reason(R.AS_EXPECTED, ("Stalled=False",), "Nothing keeps the run from progressing.", "Nothing."),
    Reason(R.NOT_QUARANTINED, ("Quarantined=False",), "The run is not quarantined.", "Nothing."),
    # Quarantine and detection --------------------------------------------------------------------------------
    Reason(R.VIOLATION, ("Quarantined=True", "Ready=False", EVENT_WARNING),
           "A detector reported something the grant does not allow. As a condition reason: a quarantine whose "
           "violation kind is unknown (otherwise the reason is the violation's kind, listed below).",
           "`stockade status NAME` shows the violations; after looking, `stockade release NAME` lifts the "
           "quarantine."),
    Reason(R.QUARANTINED, (EVENT_WARNING,), "The response ladder (spec.response: isolate, freeze, evict) was "
           "applied to the pods named in the message.",
           "Investigate (`stockade status NAME`, the pod's logs), then `stockade release NAME`."),
    Reason(R.RELEASED, (EVENT_NORMAL,), "A quarantine was released (by the user named), or there was none to release.",
           "Nothing."),
    Reason(R.GUARDRAIL_RESTORED, (EVENT_WARNING,),
           "Someone changed or deleted a guardrail of a complete fence (the message names the object); Stockade "
           "put it back from the grant.",
           "Find who did it (the API server's audit log, the object's managedFields) and stop it."),
    Reason(R.FENCE_COMPLETE, (EVENT_NORMAL,), "Every guardrail of this generation's fence is in place.", "Nothing."),
    Reason(R.CLEANUP, (EVENT_NORMAL,), "The AgentRun is being deleted; its run namespace is being deleted.",
           "Nothing; the AgentRun goes once the namespace is gone."),
    # Egress hosts --------------------------------------------------------------------------------------------
    Reason(R.HOST_UNRESOLVED, ("EgressResolved=False", EVENT_WARNING),
           "A host of grant.egress resolves to no address, so the agent cannot reach it; the fence holds and "
           "Ready stays True.",
           "Check the host's spelling and DNS (status.resolvedEgress shows what each host resolved to)."),
    Reason(R.ALL_HOSTS_RESOLVED, ("EgressResolved=True", EVENT_NORMAL),
           "Every host of grant.egress resolved to an address (the Event: they resolve again after HostUnresolved).",
           "Nothing."),
    Reason(R.LAST_KNOWN_ADDRESSES, ("EgressResolved=True", EVENT_NORMAL),
           "The last lookup of a host failed (a timeout, SERVFAIL); the addresses of an earlier answer are "
           "enforced.",
           "Nothing at once; if it stays, check the cluster's DNS (`stockade doctor`)."),
    Reason(R.NO_HOSTS_GRANTED, ("EgressResolved=True",), "grant.egress names no host (CIDRs need no lookup).",
           "Nothing."),
    # Stockade's own admission --------------------------------------------------------------------------------
    Reason(R.ADMISSION_IN_PLACE, ("AdmissionReady=True",),
           "Every webhook configuration and ValidatingAdmissionPolicy of the operator is present and as it applied "
           "them (under the chart: as the chart ships them).", "Nothing."),
    Reason(R.ADMISSION_MISSING, ("AdmissionReady=False", "Ready=False", "Reconciling=True", EVENT_WARNING),
           "A webhook configuration or ValidatingAdmissionPolicy (or binding) of the operator was deleted, so "
           "requests in run namespaces may pass unchecked (a Role, a privileged pod); the message names each. The "
           "local operator re-creates it at once; under the chart the operator never re-creates a configuration "
           "(no fail-closed webhook may outlive helm uninstall) and only reports the policies the chart ships. "
           "Ready=False only while the run is running; its phase stays Running.",
           "Under the chart: `helm upgrade` makes them again. Then find who removed them (an uninstall of another "
           "Stockade release?) and check the run namespaces for objects created meanwhile."),
    Reason(R.ADMISSION_CHANGED, ("AdmissionReady=False", "Ready=False", "Reconciling=True", EVENT_WARNING),
           "A field the operator set in one of its webhook configurations or admission policies was changed (a "
           "failurePolicy turned to Ignore, a namespaceSelector widened); the message names the fields. The "
           "operator applies it again at once, except the policies the chart ships (reported only).",
           "Find who changed it (its managedFields, the audit log); under the chart `helm upgrade` restores a "
           "shipped policy."),
    Reason(R.ADMISSION_RESTORED, (EVENT_NORMAL,),
           "The operator's webhook configurations and admission policies are whole again (the message names what "
           "came back).",
           "Find who removed or changed them; check the run namespaces for objects created meanwhile."),
    # The AgentPolicy -----------------------------------------------------------------------------------------
    Reason(R.EVALUABLE, (POLICY + "Ready=True",), "The policy bounds the AgentRuns of the namespaces it selects.",
           "Nothing."),
    Reason(R.INVALID, (POLICY + "Ready=False",), "The policy cannot be evaluated and admits nothing; the message "
           "says why.", "Fix the policy as the message says."),
    *(Reason(R.phase_reason(phase), (EVENT_NORMAL,), f"The run's phase changed to {phase}.", "Nothing.")
      for phase in typing.get_args(Phase)),
)
BY_NAME = {reason.name: reason for reason in REASONS}


def as_json() -> dict[str, Any]:
    return {"reasons": [reason.as_dict() for reason in REASONS], "violationKinds": dict(KINDS)}


def render_text() -> str:
    """For a terminal: one block per reason, easy to grep."""
    out = []
    for reason in REASONS:
        out.append(f"{reason.name}  ({', '.join(reason.where)})\n  means: {reason.meaning}\n"
                   f"  do:    {reason.action}\n")
    out.append("Quarantined=True and Ready=False carry the violation's kind as their reason: "
               + ", ".join(KINDS) + " (or a detector's own kind).\n")
    return "\n".join(out)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown() -> str:
    lines = [
        "# Condition and Event reasons",
        "",
        "<!-- Generated from operator/stockade/reasons.py by `make docs`. Do not edit by hand. -->",
        "",
        "Every reason Stockade writes on an AgentRun (its conditions and Events) or an AgentPolicy. "
        "`stockade explain reasons` prints the same table. `Reconciling` repeats `Ready`'s reason; `Stalled=True` "
        "carries the reason that stalled the run.",
        "",
        "| Reason | Where | Meaning | What to do |",
        "|---|---|---|---|",
    ]
    lines += [f"| `{r.name}` | {', '.join(r.where)} | {_cell(r.meaning)} | {_cell(r.action)} |" for r in REASONS]
    lines += [
        "",
        "## Violation kinds",
        "",
        "A quarantined run's `Quarantined=True` and `Ready=False` carry the kind of the violation that started it "
        "(docs/detection.md says what raises each); a detector posting to `/signal` may use its own kind.",
        "",
        "| Kind | Severity |",
        "|---|---|",
        *(f"| `{kind}` | {severity} |" for kind, severity in KINDS.items()),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    sys.stdout.write(render_markdown())
