"""Status from observations: pure functions, one status write per change.

Conditions follow the Kubernetes conventions (and kstatus, so Flux and Argo CD read health):
``Ready``, ``GuardrailsReady``, ``Reconciling``, ``Stalled`` and ``Quarantined``, each with the
generation it was computed for; ``Admitted``, ``PolicyCompliant``, ``EgressResolved`` and ``AdmissionReady``
once known. A condition keeps its ``lastTransitionTime`` until its status flips.

``AdmissionReady`` says whether the operator's webhook configurations and admission policies are whole
(:mod:`stockade.admission.health`). While they are not, a running run is ``Ready=False`` with the same
reason (``AdmissionMissing`` or ``AdmissionChanged``): its fence holds, but what admission refuses in its
run namespace (a Role, a privileged pod) gets in until they are back. The phase stays ``Running``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from stockade.api.models import AgentRunStatus, Condition
from stockade.api.policy import PolicyCondition
from stockade.api.reasons import (
    AS_EXPECTED,
    EXPIRED,
    GUARDRAILS_APPLIED,
    GUARDRAILS_PENDING,
    NOT_QUARANTINED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TEMPLATE_EXCEEDS_GRANT,
    WORKLOAD_FAILED,
    WORKLOAD_PENDING,
)

WorkloadPhase = str  # Pending | Running | Succeeded | Failed
AnyCondition = TypeVar("AnyCondition", Condition, PolicyCondition)  # an AgentRun's or an AgentPolicy's


@dataclass(frozen=True)
class Observed:
    """What the reconciler saw and did this round."""

    generation: int
    run_namespace: str | None
    invalid: str | None = None  # the spec cannot be used at all (reason: message)
    blocked: tuple[str, str] | None = None  # (reason, message): the fence cannot be built yet
    held: tuple[str, str] | None = None  # (reason, message): a platform admission control refused an object
    refusals: Sequence[str] = ()  # the template asks for more than the grant
    guardrails_ready: bool = False
    guardrails_message: str = ""
    workload_phase: WorkloadPhase | None = None
    workload_message: str = ""
    expired: bool = False
    quarantined: tuple[str, str] | None = None  # (reason, message)
    terminal_phase: str | None = None  # a phase reached earlier that the run keeps
    admission: tuple[bool, str, str] | None = None  # Admitted (ok, reason, message); not admitted: Queued
    compliance: tuple[bool, str, str] | None = None  # PolicyCompliant (ok, reason, message)
    stopped: tuple[str, str] | None = None  # (reason, message): ended by the operator (a narrowed policy)
    egress: tuple[bool, str, str] | None = None  # EgressResolved (ok, reason, message); see egress_status.py
    admission_ready: tuple[bool, str, str] | None = None  # AdmissionReady (ok, reason, message); None: not known
    extra: Mapping[str, Any] = field(default_factory=dict)


def condition_status(ok: bool | None) -> Literal["True", "False", "Unknown"]:
    return "Unknown" if ok is None else ("True" if ok else "False")


def _cond(kind: str, ok: bool | None, reason: str, message: str, generation: int) -> Condition:
    return Condition(type=kind, status=condition_status(ok), reason=reason, message=message,
                     observedGeneration=generation)


def _queued(obs: Observed) -> bool:
    return obs.admission is not None and not obs.admission[0]


def compute_phase(obs: Observed) -> str:
    if obs.expired:
        return "Expired"
    if obs.stopped:
        return "Failed"
    if obs.quarantined:
        return "Quarantined"
    if obs.terminal_phase in ("Succeeded", "Failed"):
        return obs.terminal_phase
    if _queued(obs):
        return "Queued"
    if obs.invalid or obs.refusals or obs.blocked or obs.held:
        return "Pending"
    if obs.workload_phase in ("Running", "Succeeded", "Failed"):
        return obs.workload_phase
    return "Pending"


def _policy_conditions(obs: Observed) -> list[Condition]:
    found = []
    if obs.admission is not None:
        found.append(_cond("Admitted", *obs.admission, obs.generation))
    if obs.compliance is not None:
        found.append(_cond("PolicyCompliant", *obs.compliance, obs.generation))
    if obs.admission_ready is not None:
        found.append(_cond("AdmissionReady", *obs.admission_ready, obs.generation))
    return found


def compute_conditions(obs: Observed) -> list[Condition]:
    # EgressResolved never changes Ready: an unresolved host allows nothing, so the fence still holds.
    egress = [_cond("EgressResolved", *obs.egress, obs.generation)] if obs.egress is not None else []
    return [*_run_conditions(obs), *_policy_conditions(obs), *egress]


def _run_conditions(obs: Observed) -> list[Condition]:
    gen = obs.generation
    phase = compute_phase(obs)
    if phase == "Queued" and obs.admission is not None:
        # Waiting for a budget or team quota: progressing (kstatus InProgress), not stalled; nothing is built.
        _, reason, message = obs.admission
        return [
            _cond("Ready", False, reason, message, gen),
            _cond("GuardrailsReady", False, QUEUED, "nothing is built until the run is admitted", gen),
            _cond("Reconciling", True, reason, message, gen),
            _cond("Stalled", False, AS_EXPECTED, "", gen),
            _cond("Quarantined", False, NOT_QUARANTINED, "", gen),
        ]
    if obs.invalid:
        reason, _, message = obs.invalid.partition(": ")
        return [
            _cond("Ready", False, reason, message, gen),
            _cond("GuardrailsReady", False, reason, message, gen),
            _cond("Reconciling", False, reason, message, gen),
            _cond("Stalled", True, reason, message, gen),
        ]
    if obs.blocked:
        reason, message = obs.blocked
        return [
            _cond("Ready", False, reason, message, gen),
            _cond("GuardrailsReady", False, reason, message, gen),
            _cond("Reconciling", False, reason, message, gen),
            _cond("Stalled", True, reason, message, gen),
        ]
    if obs.held:  # asked again with a growing delay: progressing, not stalled
        reason, message = obs.held
        return [
            _cond("Ready", False, reason, message, gen),
            _cond("GuardrailsReady", False, reason, message, gen),
            _cond("Reconciling", True, reason, message, gen),
            _cond("Stalled", False, AS_EXPECTED, "", gen),
        ]
    guard = _cond("GuardrailsReady", obs.guardrails_ready,
                  GUARDRAILS_APPLIED if obs.guardrails_ready else GUARDRAILS_PENDING, obs.guardrails_message, gen)
    conditions = [guard]
    stalled: tuple[str, str] | None = None
    if obs.refusals:
        message = "the template asks for what the grant does not give: " + " | ".join(obs.refusals)
        ready = _cond("Ready", False, TEMPLATE_EXCEEDS_GRANT, message, gen)
        stalled = (TEMPLATE_EXCEEDS_GRANT, message)
    elif obs.expired:
        ready = _cond("Ready", False, EXPIRED, "the run's duration has passed; its pods were deleted", gen)
    elif obs.stopped:
        ready = _cond("Ready", False, obs.stopped[0], obs.stopped[1], gen)
        stalled = obs.stopped
    elif obs.quarantined:
        ready = _cond("Ready", False, obs.quarantined[0], obs.quarantined[1], gen)
    elif phase == "Failed":
        ready = _cond("Ready", False, WORKLOAD_FAILED, obs.workload_message or "the agent's workload failed", gen)
        stalled = (WORKLOAD_FAILED, ready.message)
    elif phase == "Succeeded":
        ready = _cond("Ready", True, SUCCEEDED, "the agent's workload completed", gen)
    elif not obs.guardrails_ready:
        ready = _cond("Ready", False, GUARDRAILS_PENDING, obs.guardrails_message or "building the fence", gen)
    elif phase == "Running" and obs.admission_ready is not None and not obs.admission_ready[0]:
        ready = _cond("Ready", False, obs.admission_ready[1], obs.admission_ready[2], gen)
    elif phase == "Running":
        ready = _cond("Ready", True, RUNNING, "the agent is running inside its fence", gen)
    else:
        ready = _cond("Ready", False, WORKLOAD_PENDING,
                      obs.workload_message or "waiting for the agent to start", gen)
    conditions.insert(0, ready)
    settled = ready.status == "True" or stalled is not None or obs.expired or obs.quarantined is not None
    conditions.append(_cond("Reconciling", not settled, ready.reason, ready.message if not settled else "", gen))
    stalled_reason, stalled_message = stalled or (AS_EXPECTED, "")
    conditions.append(_cond("Stalled", stalled is not None, stalled_reason, stalled_message, gen))
    quarantined = obs.quarantined
    conditions.append(
        _cond("Quarantined", quarantined is not None, quarantined[0] if quarantined else NOT_QUARANTINED,
              quarantined[1] if quarantined else "", gen)
    )
    return conditions


def merge_conditions(
    previous: Sequence[Mapping[str, Any]], current: Sequence[AnyCondition], now: str
) -> list[AnyCondition]:
    """Carry lastTransitionTime over from the previous conditions (as the API server holds them) when a
    status did not change."""
    before = {c.get("type"): c for c in previous}
    merged = []
    for cond in current:
        old = before.get(cond.type)
        stamp = old.get("lastTransitionTime") if old and old.get("status") == cond.status else None
        merged.append(cond.model_copy(update={"lastTransitionTime": str(stamp or now)}))
    return merged


def run_status(observed: Observed, phase: str, conditions: Sequence[Condition],
               extra: Mapping[str, Any] | None = None) -> AgentRunStatus:
    """The AgentRun's status as the reconciler writes it: phase, run namespace, generation and conditions,
    and the fields of ``extra`` (status fields by name; None clears one). Only the fields named are set."""
    unknown = sorted(set(extra or {}) - set(AgentRunStatus.model_fields))
    if unknown:
        raise ValueError(f"not fields of AgentRunStatus: {unknown}")
    return AgentRunStatus.model_validate({
        "phase": phase, "runNamespace": observed.run_namespace, "observedGeneration": observed.generation,
        "conditions": list(conditions), **(extra or {}),
    })


def status_patch(status: AgentRunStatus) -> dict[str, Any]:
    """What a merge patch of ``status`` writes: every field set, a field set to None as null (the API server
    then removes it: expiresAt, refusals, ... once they no longer apply), fields never set left out (the
    violations and the quarantine, which the responder owns)."""
    return status.model_dump(exclude_unset=True)


def status_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """True when the merge patch ``new`` would change ``old``: a field that differs, at any depth; a null
    where ``old`` has no such field changes nothing (the API server drops nulls, so it never has one)."""
    return any(_patch_changes(old.get(key), value) for key, value in new.items())


def _patch_changes(old: Any, new: Any) -> bool:
    if new is None:
        return old is not None
    if isinstance(new, Mapping) and isinstance(old, Mapping):
        return status_changed(old, new)
    return bool(old != new)
