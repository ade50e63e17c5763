"""The guardrail reconciler: level-based, idempotent, one status write per change.

Every trigger (the AgentRun changed, a child changed or vanished, a timer fired) ends in the same
``reconcile(key)``, which compares what should exist with what the watches last showed and fixes
the difference. Triggers for the same run coalesce: at most one reconcile of a run runs at a time,
and a trigger that arrives meanwhile makes it run once more.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from stockade import audit, kinds, labels, metrics, run_namespaces
from stockade.api.models import AgentRunSpec
from stockade.api.reasons import (
    GUARDRAIL_RESTORED,
    INVALID_SPEC,
    NAMESPACE_CONFLICT,
    TEMPLATE_EXCEEDS_GRANT,
    phase_reason,
    problem,
)
from stockade.budget_gate import BudgetGate
from stockade.clock import parse_stamp, stamp, utcnow
from stockade.coalesce import Coalescer
from stockade.conditions import (
    Observed,
    compute_conditions,
    compute_phase,
    merge_conditions,
    run_status,
    status_changed,
    status_patch,
)
from stockade.dnsresolve import HostResolver
from stockade.drift import needs_apply
from stockade.egress_status import EgressEvents, egress_resolution
from stockade.findings import refusal_status
from stockade.inputcheck import spec_problem
from stockade.kube import KubeError, object_path, write_status
from stockade.kubeapi import EmitEvent, KubeAPI
from stockade.lifecycle import NamespaceTaken, RunGone, RunLifecycle
from stockade.observe import QUOTA_PENDING, await_quota, guardrails_ready, quarantine_of, workload_phase
from stockade.phase_count import PhaseCount
from stockade.plan import Plan, PlanSettings, RunRef, parse_duration
from stockade.plan_cache import PlanCache, digest
from stockade.reconcile_failures import FailureHandling
from stockade.refusals import Refusals
from stockade.store import RunKey, SpecError, Store, uid_of
from stockade.workload import ensure_workload, stop_workload

log = logging.getLogger("stockade.reconcile")

# Called at the end of every reconcile of a valid AgentRun (detection judges the run's pods there).
OnReconcile = Callable[[RunKey, dict[str, Any], AgentRunSpec], Awaitable[None]]
# The AdmissionReady condition every AgentRun carries: (ready, reason, message), None while unknown.
AdmissionState = Callable[[], tuple[bool, str, str] | None]

PRUNABLE_COMPONENTS = kinds.GUARDRAIL_COMPONENTS  # the planned fence (not the quarantine policy)
# A workload this process just created is not reported Pending for this long: most start within it, and
# the status is then written once, Running, instead of Pending and then Running.
WORKLOAD_SETTLE_SECONDS = 1.0


class Reconciler(FailureHandling):
    def __init__(
        self, kube: KubeAPI, store: Store, plan_settings: PlanSettings, resolver: HostResolver, emit: EmitEvent, *,
        on_reconcile: Sequence[OnReconcile] = (), admission_state: AdmissionState = lambda: None,
    ) -> None:
        self.kube = kube
        self.store = store
        self.plan_settings = plan_settings
        self.resolver = resolver
        self.emit = emit
        self._coalescer = Coalescer()
        self._timers: dict[RunKey, asyncio.TimerHandle] = {}
        self._phases = PhaseCount()
        self._egress = EgressEvents(emit)
        self._warned: dict[RunKey, str] = {}
        self._cache = PlanCache(plan_settings)
        self._refusals = Refusals()
        self._terminating: dict[RunKey, str] = {}
        # The (generation, frozen) plan whose fence this process last saw complete, per run.
        self._fence_up: dict[RunKey, tuple[int, bool]] = {}
        metrics.FENCES_CONFIRMED.set_function(lambda: len(self._fence_up))
        # A digest of each guardrail last applied in full (digests, not the objects: the plan cache is bounded).
        self._planned: dict[RunKey, dict[tuple[str, str], int]] = {}
        self._gone: dict[RunKey, str] = {}  # uid of an AgentRun whose DELETED event came, until looked at
        self._started: dict[RunKey, float] = {}  # when this process created the run's workload (monotonic)
        self.lifecycle = RunLifecycle(kube, store, emit)
        # Budgets and team quotas: a run starts only once admitted (budget_gate), queued runs re-triggered.
        self.budget = BudgetGate(store, emit, self.trigger_soon,
                                 lambda key, body: run_namespaces.owned(store, key, body))
        self.on_reconcile = tuple(on_reconcile)
        self.admission_state = admission_state  # stockade.admission.guard

    # Triggers ------------------------------------------------------------------------------------
    async def trigger(self, key: RunKey) -> None:
        await self._coalescer.run(key, lambda: self._reconcile_safely(key))

    async def deleted(self, key: RunKey, uid: str) -> None:
        """The AgentRun is gone from the API server: whatever was built for it goes too."""
        if uid:
            self._gone[key] = uid
        await self.trigger(key)

    def trigger_soon(self, key: RunKey) -> None:
        asyncio.get_running_loop().create_task(self.trigger(key))

    def _arm_timer(self, key: RunKey, delay: float | None) -> None:
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        if delay is not None:
            self._timers[key] = asyncio.get_running_loop().call_later(max(delay, 0.05), self.trigger_soon, key)

    @audit.reconcile_pass  # the pass's id in every log line; FenceComplete once a generation's fence is up
    async def _reconcile_safely(self, key: RunKey) -> None:
        started = time.perf_counter()
        try:
            await self.reconcile(key)
            self._succeeded(key)
        except KubeError as err:
            await self._on_failure(key, err)  # stockade.reconcile_failures
        except Exception:
            metrics.RECONCILE_ERRORS.labels(reason="Unexpected").inc()
            log.exception("reconcile of %s/%s failed unexpectedly; retrying", key[0], key[1])
            self._arm_timer(key, 5.0)
        finally:
            metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)

    # The reconcile ---------------------------------------------------------------------------------
    async def reconcile(self, key: RunKey) -> None:
        # A namespace someone else created first under the chosen name is skipped on the next choice.
        for _ in range(3):
            try:
                await self._reconcile(key)
                return
            except NamespaceTaken as taken:
                log.warning("run namespace %s of %s/%s was taken by someone else; choosing another",
                            taken, key[0], key[1])
            except RunGone:
                return
        self._arm_timer(key, 1.0)

    async def _reconcile(self, key: RunKey) -> None:
        body = self.store.agentruns.get(key)
        if body is None:
            gone = self._gone.pop(key, None)
            if gone:
                await self.lifecycle.remove_orphan(gone, f"AgentRun {key[0]}/{key[1]} was deleted")
            self._forget(key)
            return
        meta = body["metadata"]
        if labels.FINALIZER not in (meta.get("finalizers") or []) and not meta.get("deletionTimestamp"):
            body = await self.lifecycle.add_finalizer(body)  # before anything is created
        if body["metadata"].get("deletionTimestamp"):
            self.budget.deleting(key, body)  # its share is free once its pods are gone
            if await self.lifecycle.finalize(key, body):
                self._forget(key)
            else:
                self._arm_timer(key, 10.0)  # the namespace's DELETED event normally comes first
            return
        status = body.get("status") or {}
        generation = int(meta.get("generation") or 1)
        chosen = run_namespaces.choose(self.store, key, body)
        self._refusals.chosen[key] = chosen
        run = RunRef(meta["namespace"], meta["name"], uid_of(body), chosen or "")
        spec = self.store.spec_of(key)  # parsed once per generation
        if spec is None:
            return  # deleted meanwhile: its DELETED event brings the clean-up
        if isinstance(spec, SpecError):
            why = problem(INVALID_SPEC, spec.problems)
            await self._write_status(key, body, Observed(generation, chosen, invalid=why))
            return
        # Input no fence can be built from, or that the API server refused for this generation: a condition, no retry.
        unusable = spec_problem(spec) or self._refusals.stalled(key, generation)
        if unusable:
            await self._write_status(key, body, Observed(generation, chosen, invalid=unusable))
            return

        if chosen is None:
            message = (f"every name this AgentRun's run namespace may have (such as {run.run_namespace}) is taken "
                       "by a namespace that does not belong to it; remove those namespaces or rename the AgentRun")
            await self._write_status(key, body, Observed(generation, None, blocked=(NAMESPACE_CONFLICT, message)))
            return
        namespace = self.store.get("Namespace", "", chosen)
        if namespace is not None and namespace["metadata"].get("deletionTimestamp"):
            # A namespace being deleted cannot be re-created until it is gone; its DELETED event retriggers.
            await self._write_status(key, body, Observed(
                generation, run.run_namespace, guardrails_message="the run namespace is being deleted; "
                "it will be re-created once it is gone"))
            return

        admission = self.budget.admit(key, body, spec)  # before anything is built for the run
        policies = {"policies": list(admission.decision.policies) or None}
        if not admission.admitted:
            await self._write_status(key, body, Observed(generation, None, admission=(
                False, admission.decision.reason, admission.decision.message)), policies)
            return

        now = utcnow()
        start = parse_stamp(status["startTime"]) if status.get("startTime") else now
        expires = start + datetime.timedelta(seconds=parse_duration(spec.grant.duration)) if spec.grant.duration \
            else None
        expired = expires is not None and now >= expires

        hosts = sorted({rule.host for rule in spec.grant.egress if rule.host})
        resolved, refresh_in = await self.resolver.resolve(hosts)
        egress = egress_resolution(hosts, resolved, self.resolver.stale(hosts))
        self._egress.note(key, body, egress)
        quarantine = status.get("quarantine") or {}
        frozen = bool(quarantine.get("active")) and "freeze" in (quarantine.get("steps") or [])
        plan = self._cache.plan(key, generation, run, spec, resolved, frozen=frozen)
        await self._apply_guardrails(key, plan, body, (generation, frozen))
        await self._prune(run, plan)
        ready, waiting_on = guardrails_ready(self.store, plan)
        if not ready and waiting_on == QUOTA_PENDING:
            ready, waiting_on = await await_quota(self.store, plan)
        if ready:
            self._fence_up[key] = (generation, frozen)

        terminal = status.get("phase") if status.get("phase") in ("Succeeded", "Failed", "Expired") else None
        quarantined = quarantine_of(status)
        if expired or terminal == "Expired":
            await stop_workload(self.kube, self.store, run)
            expired = True
        elif admission.stop:  # a narrowed policy says Stop: ended, as Failed with its reason
            await stop_workload(self.kube, self.store, run)
        refusal = "; ".join(f.text() for f in plan.refusals)
        if plan.refusals and not expired and self._warn_once(key, body, TEMPLATE_EXCEEDS_GRANT, refusal):
            metrics.REFUSALS.inc()  # once per refused generation, not once per reconcile
        may_run = not (expired or plan.refusals or admission.stop) and terminal is None and quarantined is None
        started = False
        if may_run and ready:
            started = await ensure_workload(self.kube, self.store, plan)

        phase, message = workload_phase(self.store, run, spec)
        for hook in self.on_reconcile:
            await hook(key, body, spec)
        observed = Observed(
            generation=generation,
            run_namespace=run.run_namespace,
            refusals=[f.text() for f in plan.refusals],
            guardrails_ready=ready,
            guardrails_message="every guardrail is in place" if ready else f"waiting for {waiting_on}",
            workload_phase=phase,
            workload_message=message,
            expired=expired,
            quarantined=quarantined,
            terminal_phase=terminal if terminal != "Expired" else None,
            admission=(True, admission.decision.reason, admission.decision.message),
            compliance=admission.compliance,
            stopped=admission.stop,
            egress=egress,
        )
        extra = {
            "startTime": stamp(start),
            "expiresAt": stamp(expires) if expires else None,
            "workload": f"{spec.workload.lower()}/{run.workload_name(spec.workload)}" if plan.workload else None,
            "resolvedEgress": {host: resolved.get(host, []) for host in hosts} or None,
            "refusals": [refusal_status(f) for f in plan.refusals] or None,
            **policies,
        }
        if started:
            self._started[key] = time.monotonic()
        settling = self._settling(key, phase, may_run)
        if not started and settling is None:
            # Right after the workload is created its own events (scheduled, running, unschedulable) come
            # within moments and bring the status with them: one write fewer on every run's start.
            await self._write_status(key, body, observed, extra)
        delays = [d for d in (refresh_in, (expires - now).total_seconds() if expires and not expired else None,
                              settling) if d is not None]
        self._arm_timer(key, min(delays) if delays else None)

    def _settling(self, key: RunKey, workload_phase: str | None, may_run: bool) -> float | None:
        """Seconds left in which the just-created workload, still Pending, is not reported; None: report now
        (it runs, the settle time is over, or the run is stopping)."""
        since = self._started.get(key)
        left = WORKLOAD_SETTLE_SECONDS - (time.monotonic() - since) if since is not None else 0.0
        if not may_run or workload_phase not in (None, "Pending") or left <= 0:
            self._started.pop(key, None)
            return None
        return left

    # Steps ---------------------------------------------------------------------------------------
    async def _apply(self, desired: Mapping[str, Any], body: Mapping[str, Any], fence_was_up: bool,
                     planned: Mapping[tuple[str, str], Any] | None = None) -> None:
        meta = desired["metadata"]
        live = self.store.get(desired["kind"], meta.get("namespace") or "", meta["name"])
        if not needs_apply(desired, live):
            return
        # What the last plan applied did not want like this (a host's new addresses, within one generation)
        # is no drift either.
        replanned = planned is not None and planned.get((desired["kind"], meta["name"])) != digest(desired)
        if fence_was_up and not replanned:
            self._report_drift(body, desired["kind"], meta, "changed" if live is not None else "missing")
        metrics.APPLIES.labels(kind=desired["kind"]).inc()
        applied = await self.kube.apply(desired)
        self.store.put(applied)

    def _report_drift(self, body: Mapping[str, Any], kind: str, meta: Mapping[str, Any], what: str) -> None:
        """Someone changed or removed a guardrail of a fence that was complete: metric, log line and Warning."""
        metrics.DRIFT.labels(kind=kind).inc()
        audit.restoring(kind, meta, what)  # a log line with structured fields
        self.emit(body, "Warning", GUARDRAIL_RESTORED, f"{kind} {meta['name']} was {what}; restored from the grant")

    async def _apply_guardrails(self, key: RunKey, plan: Plan, body: Mapping[str, Any], state: tuple[int, bool]
                                ) -> None:
        # Once this plan's fence was complete, a missing or changed guardrail is drift, even when a round in
        # between (seeing a second guardrail vanish) has already written GuardrailsReady=False. A new plan
        # (the spec changed, or a freeze was lifted) changes guardrails without anyone having tampered.
        conditions = (body.get("status") or {}).get("conditions") or []
        fence_was_up = self._fence_up[key] == state if key in self._fence_up else any(
            c.get("type") == "GuardrailsReady" and c.get("status") == "True" and c.get("observedGeneration") == state[0]
            for c in conditions)
        if self.store.get("Namespace", "", plan.namespace["metadata"]["name"]) is None:
            if fence_was_up:
                self._report_drift(body, "Namespace", plan.namespace["metadata"], "missing")
            await self.lifecycle.create_namespace(plan.namespace, body)
        planned = self._planned.get(key)  # unknown after a restart: any difference is drift, as it may be
        await self._apply(plan.namespace, body, fence_was_up, planned)
        await asyncio.gather(*(self._apply(obj, body, fence_was_up, planned) for obj in plan.guardrails[1:]))
        self._planned[key] = {(obj["kind"], obj["metadata"]["name"]): digest(obj) for obj in plan.guardrails}

    async def _prune(self, run: RunRef, plan: Plan) -> None:
        wanted = {(obj["kind"], obj["metadata"]["name"]) for obj in plan.guardrails}
        doomed = [
            obj for obj in self.store.in_namespace(run.run_namespace)
            if (obj["metadata"].get("labels") or {}).get(labels.COMPONENT) in PRUNABLE_COMPONENTS
            and (obj["kind"], obj["metadata"]["name"]) not in wanted
            and obj["metadata"]["name"] != labels.POLICY_QUARANTINE
        ]
        for obj in doomed:
            log.info("removing %s %s/%s: no longer granted", obj["kind"], run.run_namespace, obj["metadata"]["name"])
            await self.kube.delete(obj["apiVersion"], obj["kind"], run.run_namespace, obj["metadata"]["name"])
            self.store.remove(obj)

    def _warn_once(self, key: RunKey, body: Mapping[str, Any], reason: str, message: str) -> bool:
        """Emit the Warning unless this generation already got the same one; True if it was emitted."""
        token = f"{body['metadata'].get('generation')}:{reason}:{message}"
        if self._warned.get(key) == token:
            return False
        self._warned[key] = token
        self.emit(body, "Warning", reason, message)
        return True

    async def _write_status(
        self, key: RunKey, body: Mapping[str, Any], observed: Observed, extra: Mapping[str, Any] | None = None
    ) -> None:
        old = body.get("status") or {}
        observed = dataclasses.replace(observed, admission_ready=self.admission_state())
        phase = compute_phase(observed)
        self.budget.note_phase(key, phase)  # a terminal run releases its budget share at once
        conditions = merge_conditions(old.get("conditions") or [], compute_conditions(observed), stamp(utcnow()))
        new = status_patch(run_status(observed, phase, conditions, extra))  # None clears a field (merge patch)
        if observed.invalid:
            self._warn_once(key, body, *observed.invalid.partition(": ")[::2])
        self._phases.note(key, phase)
        if not status_changed(old, new):
            return
        if old.get("phase") != phase:
            self.emit(body, "Normal", phase_reason(phase), f"phase {old.get('phase') or 'None'} -> {phase}")
        # The reconciler owns every field it writes here (violations and the quarantine are not among them):
        # no precondition, and any error is the pass's (stockade.reconcile_failures).
        path = object_path("stockade.io/v1alpha1", "AgentRun", key[0], key[1])
        await write_status(self.kube, path, lambda _: new, current=body, precondition=False, attempts=1,
                           remember=self.store.put_agentrun)

    def _forget(self, key: RunKey) -> None:
        self._arm_timer(key, None)
        self._fence_up.pop(key, None)
        self._planned.pop(key, None)
        self._cache.forget(key)
        self._refusals.forget(key)
        self._terminating.pop(key, None)
        self._started.pop(key, None)
        self._warned.pop(key, None)
        self._egress.forget(key)
        self._phases.note(key, None)
        self.budget.forget(key)
