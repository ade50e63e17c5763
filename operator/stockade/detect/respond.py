"""The quarantine ladder: evidence first, then isolate, freeze and evict, as ``spec.response`` says.

Signals for a run queue here and a single worker per run drains them, so a storm of signals for one
pod becomes one status write and one set of actions, and signals for different runs proceed side by
side (bounded by ``response_concurrency``). Every decision reads the AgentRun's status, which is
where the quarantine lives: a pod already quarantined gets its violation recorded, nothing more.

Rungs:
* isolate: the pod gets ``stockade.io/quarantined: "true"`` (every allow policy skips such pods) and
  the run namespace gets ``stockade-quarantine``, a deny-all ingress+egress policy selecting it;
* freeze: the agent's RoleBinding goes (the reconciler leaves it out while ``freeze`` is in
  ``status.quarantine.steps``, and admission refuses new objects in the namespace);
* evict: the pod is deleted at once (a policy does not cut open connections on every network
  plugin); a Job's pod has its Job suspended first, and the reconciler re-creates nothing while
  the quarantine is active.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stockade import audit, metrics, violations
from stockade.api.models import AgentRunSpec
from stockade.api.reasons import QUARANTINED, VIOLATION
from stockade.clock import stamp, utcnow
from stockade.confine import confined_pod, run_namespace
from stockade.detect import evidence
from stockade.detect.config import DetectSettings
from stockade.detect.incident import DROPPED, FAILED, GONE, RECORDED, Ack, Incident, settle
from stockade.detect.release import ReleaseMixin
from stockade.detect.rules import at_least
from stockade.detect.rungs import ConfinementError, RungsMixin, quarantine_policy
from stockade.events import EmitEvent
from stockade.kube import Decide, KubeError, object_path, write_status
from stockade.kubeapi import KubeAPI
from stockade.store import RunKey, Store, uid_of

# One logger for the whole response (rungs and release log on it too), named as before the move into
# stockade.detect: log queries and alerts select on it.
log = logging.getLogger("stockade.respond")

__all__ = ["DROPPED", "FAILED", "GONE", "RECORDED", "Ack", "ConfinementError", "Incident", "Responder",
           "quarantine_policy"]

EVENTS_PER_BATCH = 5

@dataclass
class _Plan:
    already: set[str]
    targets: dict[str, Incident] = field(default_factory=dict)  # pod -> the incident that put it on the ladder
    forced: set[str] = field(default_factory=set)
    actions: dict[int, str] = field(default_factory=dict)  # batch index -> the action recorded
    freeze: bool = False

    @property
    def acting(self) -> bool:
        return bool(self.targets) or self.freeze


@dataclass(frozen=True)
class _Decision:
    body: Mapping[str, Any]  # the AgentRun it was decided on
    spec: AgentRunSpec | None  # None: invalid (recorded, not acted on)
    ladder: Sequence[str]
    run_ns: str  # the run namespace its labels confirm ("" if none)
    plan: _Plan
    patch: dict[str, Any]  # the status fields to write
    quarantine_id: str | None


def _log_violation(body: Mapping[str, Any], incident: Incident, action: str) -> None:
    """Every violation, with what was done about it (a repeat on a quarantined pod at INFO: storms)."""
    v = incident.violation
    meta = body["metadata"]
    level = logging.INFO if action.endswith("(already quarantined)") else logging.WARNING
    log.log(level, "violation %s (%s, %s) of %s/%s%s: %s -> %s", v.kind, v.severity, v.source, meta["namespace"],
            meta["name"], f" in pod {v.pod}" if v.pod else "", v.detail[:300], action,
            extra=audit.fields((meta["namespace"], meta["name"]), pod=v.pod, kind=v.kind, source=v.source,
                               violation_severity=v.severity, action="violation", response=action,
                               incident_id=incident.id, count=incident.count if incident.count > 1 else None))


class Responder(RungsMixin, ReleaseMixin):
    def __init__(self, kube: KubeAPI, store: Store, emit: EmitEvent, *, settings: DetectSettings,
                 trigger: Callable[[RunKey], None] | None = None, now: Callable[[], str] | None = None) -> None:
        self.kube = kube
        self.store = store
        self.emit = emit
        self.trigger = trigger or (lambda key: None)
        self.settings = settings
        self.now = now or (lambda: stamp(utcnow()))
        self._pending: dict[RunKey, dict[tuple[str, str | None, str, str], Incident]] = {}
        self._workers: dict[RunKey, asyncio.Task[None]] = {}
        self._locks: dict[RunKey, asyncio.Lock] = {}
        self._gate = asyncio.Semaphore(settings.response_concurrency)
        self._releasing: set[RunKey] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # Intake --------------------------------------------------------------------------------------
    def submit(self, key: RunKey, incidents: Iterable[Incident]) -> Ack:
        """Queue violations for a run; never waits. Identical ones fold into a count (and their
        acknowledgements into the one status write that records them all).

        The returned future says what became of them: RECORDED once the status write that holds them
        succeeded, DROPPED at once when the run's queue is full, GONE or FAILED. Callers that need no
        answer (the watches, the poller) ignore it; the signal endpoint answers by it."""
        ack: Ack = asyncio.get_running_loop().create_future()
        pending = self._pending.setdefault(key, {})
        for incident in incidents:
            folded = pending.get(incident.signature)
            if folded is not None:
                folded.count += incident.count
                folded.force = folded.force or incident.force
                folded.waiters += [ack, *incident.waiters]
                continue
            if len(pending) >= self.settings.pending_per_run:
                metrics.SIGNALS.labels(source=incident.violation.source, outcome="dropped").inc()
                settle([ack, *incident.waiters], DROPPED)
                continue
            incident.waiters.append(ack)
            pending[incident.signature] = incident
        self._backlog()
        if not pending:
            self._pending.pop(key, None)
            settle([ack], RECORDED)  # nothing was submitted: nothing is owed
        elif key not in self._workers:
            self._workers[key] = asyncio.get_running_loop().create_task(self._drain(key))
        return ack

    def busy(self, key: RunKey) -> bool:
        """Work for this run is queued or in progress (its status and pods may be mid-change)."""
        return key in self._workers or key in self._releasing or self._lock(key).locked()

    async def idle(self) -> None:
        """Wait until every queued violation has been handled (tests and shutdown)."""
        while self._workers or self._tasks:
            await asyncio.gather(*self._workers.values(), *self._tasks, return_exceptions=True)

    def _lock(self, key: RunKey) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def _backlog(self) -> None:
        metrics.RESPONSE_BACKLOG.set(sum(len(p) for p in self._pending.values()))

    async def _drain(self, key: RunKey) -> None:
        # Fresh: the task may have been started inside a reconcile pass (the API watch's extension).
        with audit.context(fresh=True, **audit.fields(key)):
            await self._drain_batches(key)

    async def _drain_batches(self, key: RunKey) -> None:
        try:
            while self._pending.get(key):
                batch = list(self._pending.pop(key).values())
                self._backlog()
                async with self._gate, self._lock(key):
                    try:
                        await self._handle(key, batch)
                    except Exception as err:
                        # A KubeError is the API server's answer (logged without a traceback); anything
                        # else is a bug and keeps its traceback.
                        if isinstance(err, KubeError):
                            log.error("responding to %d violation(s) of %s/%s failed: %s", len(batch), *key, err)
                        else:
                            log.exception("responding to %d violation(s) of %s/%s failed", len(batch), *key)
                    finally:
                        # Whatever was not recorded by now was not: the senders hear it and try again.
                        settle((w for i in batch for w in i.waiters), FAILED)
        finally:
            self._workers.pop(key, None)

    # The response --------------------------------------------------------------------------------
    async def _handle(self, key: RunKey, batch: list[Incident]) -> None:
        body = self.store.agentruns.get(key)
        if body is None:
            log.info("%d violation(s) for %s/%s dropped: the AgentRun is gone", len(batch), *key)
            settle((w for i in batch for w in i.waiters), GONE)
            return
        started = min(i.received for i in batch)
        events: dict[str, list[dict[str, Any]]] = {}  # each pod's Events, fetched once whatever the retries
        decision = await self._decision(key, body, batch, events)
        decisions = 0

        async def decide(current: dict[str, Any]) -> Mapping[str, Any]:
            nonlocal decision, decisions
            decisions += 1
            if decisions > 1:  # the status changed meanwhile (a conflict): decide again on what it says now
                decision = await self._decision(key, current, batch, events)
            return decision.patch

        first = decision
        with audit.context(run_namespace=first.run_ns or None, quarantine_id=first.quarantine_id):
            captured = time.perf_counter()
            record = self._record(key, body, batch, decide)
            early = first.plan.acting and bool(first.plan.targets) and "isolate" in first.ladder and \
                not self.settings.evidence_before_isolation
            if early:
                # Isolation destroys no evidence, so it need not wait for the status write; freeze and
                # evict (which do) still wait for it below.
                written, _ = await asyncio.gather(record, self._isolate(key, first.run_ns, first.plan.targets))
            else:
                written = await record
            if not written:
                return
            recorded = time.perf_counter()
            plan = decision.plan  # the decision the status holds
            # Logged once, as recorded: a decision made again after a conflict is not a second violation.
            with audit.context(run_namespace=decision.run_ns or None, quarantine_id=decision.quarantine_id):
                for index, incident in enumerate(batch):
                    _log_violation(decision.body, incident, plan.actions[index])
            if plan.acting:
                missed = {pod: i for pod, i in plan.targets.items() if pod not in first.plan.targets}
                if early and missed:  # a pod the first decision did not know of
                    await self._isolate(key, decision.run_ns, missed)
                rungs = [step for step in decision.ladder if not (early and step == "isolate")]
                await self._act(key, decision.run_ns, rungs, plan.targets, forced=plan.forced, freeze=plan.freeze)
            self._report(decision.body, batch, plan, decision.spec)
            # The status write is already in the store, so its watch echo triggers nothing: reconcile now
            # (after the rungs, which need no reconcile) so phase and conditions follow.
            self.trigger(key)
            log.debug("%s/%s: %d violation(s) answered in %.1f ms (evidence %.1f, status %.1f, rungs %.1f)",
                      key[0], key[1], len(batch), (time.perf_counter() - started) * 1000, (captured - started) * 1000,
                      (recorded - captured) * 1000, (time.perf_counter() - recorded) * 1000)

    async def _decision(self, key: RunKey, body: Mapping[str, Any], batch: list[Incident],
                        events: dict[str, list[dict[str, Any]]]) -> _Decision:
        """What to record and do, decided on ``body``'s status (logged by the caller once it is recorded)."""
        spec = self.store.valid_spec(key)  # parsed once per generation, by the store
        if spec is None:
            log.warning("violations for %s/%s recorded without a response: its spec is invalid", *key)
        status = body.get("status") or {}
        confirmed = run_namespace(self.store, key, status)
        ladder = list(spec.response) if spec else []
        plan = self._decide(key, spec, status, confirmed, batch)
        # Evidence is captured before any rung: the pod as the watch last showed it, its Events now.
        records = await self._records(confirmed or "", batch, plan.actions, plan.targets, events)
        patch: dict[str, Any] = {"violations": violations.merge(status.get("violations") or [], records,
                                                                self.settings.violations_kept)}
        if plan.acting:
            patch["quarantine"] = self._quarantine(status, plan, ladder)
        quarantine = patch.get("quarantine") or status.get("quarantine") or {}
        qid = audit.quarantine_id(uid_of(body), quarantine.get("since") if quarantine.get("active") else None)
        return _Decision(body, spec, ladder, confirmed or "", plan, patch, qid)

    def _decide(self, key: RunKey, spec: AgentRunSpec | None, status: Mapping[str, Any], run_ns: str | None,
                batch: list[Incident]) -> _Plan:
        """Which pods go on the ladder (and whether RBAC is frozen), and what each violation records."""
        quarantine = status.get("quarantine") or {}
        already = set(quarantine.get("pods") or []) if quarantine.get("active") else set()
        ladder = list(spec.response) if spec else []
        live = sorted(p["metadata"]["name"] for p in self.store.in_namespace(run_ns or "", "Pod")
                      if not p["metadata"].get("deletionTimestamp")
                      and confined_pod(self.store, key, run_ns or "", p["metadata"]["name"]))
        plan = _Plan(already=already)
        for index, incident in enumerate(batch):
            v = incident.violation
            reason = self._no_action(spec, incident)
            if reason is None and run_ns is None:
                reason = "the run namespace is not confirmed by its labels"
            if reason is not None:
                plan.actions[index] = f"none ({reason})"
                continue
            pods = [v.pod] if v.pod else live
            fresh = [p for p in pods if p not in already or (incident.force and p in live)]
            if v.pod and fresh and confined_pod(self.store, key, run_ns or "", v.pod, incident.pod) is None:
                log.warning("violation %s names pod %r, which is not a pod of run namespace %s: not acted on",
                            v.kind, v.pod[:80], run_ns)
                plan.actions[index] = "none (the pod is not one of this run's)"
                continue
            wants_freeze = "freeze" in ladder and "freeze" not in (quarantine.get("steps") or [])
            if not fresh and not wants_freeze:
                plan.actions[index] = "none (already quarantined)" if pods else "none (no pod to act on)"
                continue
            for pod in fresh:
                plan.targets.setdefault(pod, incident)
                if incident.force:
                    plan.forced.add(pod)
            plan.freeze = plan.freeze or wants_freeze
            plan.actions[index] = "+".join(ladder)
        return plan

    def _quarantine(self, status: Mapping[str, Any], plan: _Plan, ladder: Sequence[str]) -> dict[str, Any]:
        quarantine = status.get("quarantine") or {}
        first = next(iter(plan.targets.values()), None)
        reason = first.violation if first else None
        return {
            "active": True,
            "reason": reason.kind if reason else quarantine.get("reason") or VIOLATION,
            "message": reason.detail[:512] if reason else quarantine.get("message") or "",
            "since": quarantine.get("since") if quarantine.get("active") else self.now(),
            "pods": sorted(plan.already | set(plan.targets)),
            "steps": list(dict.fromkeys([*(quarantine.get("steps") or []), *ladder])),
            "releasedAt": None,
            "releasedBy": None,
        }

    def _no_action(self, spec: AgentRunSpec | None, incident: Incident) -> str | None:
        v = incident.violation
        if spec is None:
            return "invalid spec"
        if spec.enforcement == "audit":
            return "audit"
        if not incident.attributable:
            return "not attributable to the agent"
        if not at_least(v.severity, self.settings.quarantine_min_severity):
            return f"below {self.settings.quarantine_min_severity} severity"
        if not spec.response:
            return "spec.response is empty"
        return None

    async def _records(self, run_ns: str, batch: list[Incident], actions: Mapping[int, str],
                       targets: Mapping[str, Incident], events: dict[str, list[dict[str, Any]]]
                       ) -> list[dict[str, Any]]:
        """Violations as stored: evidence with the signal, the pod as it was and its last Events (fetched
        into ``events`` once per pod)."""
        pods = {i.violation.pod for i in batch if i.violation.pod} | set(targets)
        pods = {p for p in pods if self.store.get("Pod", run_ns, p) is not None and p not in events}
        fetched = await asyncio.gather(*(self._pod_events(run_ns, p) for p in sorted(pods)))
        events.update(zip(sorted(pods), fetched, strict=True))
        records = []
        for index, incident in enumerate(batch):
            v = incident.violation
            pod = v.pod or next((p for p, i in targets.items() if i is incident), None)
            found = evidence.assemble(v.evidence, incident.signal, self.store.get("Pod", run_ns, pod) if pod else None,
                                      events.get(pod or "", []))
            record = v.model_copy(update={"action": actions[index], "evidence": found}).model_dump(exclude_none=True)
            if incident.count > 1:
                record["count"] = incident.count
            records.append(record)
        return records

    async def _pod_events(self, namespace: str, pod: str) -> list[dict[str, Any]]:
        query = [("fieldSelector", f"involvedObject.kind=Pod,involvedObject.name={pod}"), ("limit", "100")]
        try:
            found = await self.kube.call("GET", object_path("v1", "Event", namespace), query=query)
        except KubeError as err:
            log.info("could not read the events of pod %s/%s: %s", namespace, pod, err)
            return []
        items: list[dict[str, Any]] = found.get("items") or []
        return items

    async def _record(self, key: RunKey, body: Mapping[str, Any], batch: list[Incident], decide: Decide) -> bool:
        """The status write that records the batch; only then is each sender told it is safe (their
        retries cover a crash before this point). False when the AgentRun is gone."""
        path = object_path("stockade.io/v1alpha1", "AgentRun", key[0], key[1])
        result = await write_status(self.kube, path, decide, current=body, remember=self.store.put_agentrun)
        if result.seen is None:
            log.info("%d violation(s) for %s/%s dropped: the AgentRun is gone", len(batch), *key)
            settle((w for i in batch for w in i.waiters), GONE)
            return False
        settle((w for i in batch for w in i.waiters), RECORDED)
        return True

    def _report(self, body: Mapping[str, Any], batch: list[Incident], plan: _Plan, spec: AgentRunSpec | None) -> None:
        team = str(body["metadata"]["namespace"])
        for index, incident in enumerate(batch):
            v = incident.violation
            metrics.VIOLATIONS.labels(namespace=team, kind=v.kind, source=v.source,
                                      action=plan.actions[index]).inc(incident.count)
        noted = [i for i in range(len(batch)) if not plan.actions[i].endswith("(already quarantined)")]
        for index in noted[:EVENTS_PER_BATCH]:
            v = batch[index].violation
            where = f" in pod {v.pod}" if v.pod else ""
            self.emit(body, "Warning", VIOLATION,
                      f"{v.kind} ({v.severity}, {v.source}){where}: {v.detail} -> {plan.actions[index]}")
        if len(noted) > EVENTS_PER_BATCH:
            self.emit(body, "Warning", VIOLATION, f"{len(noted) - EVENTS_PER_BATCH} more violation(s) recorded")
        if plan.acting and spec is not None:
            pods = ", ".join(sorted(plan.targets)) or "none"
            self.emit(body, "Warning", QUARANTINED, f"applied {'+'.join(spec.response)} (pods: {pods})")
