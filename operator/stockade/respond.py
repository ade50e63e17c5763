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

from stockade import audit, metrics
from stockade.api.models import AgentRunSpec
from stockade.clock import stamp, utcnow
from stockade.confine import confined_pod, run_namespace
from stockade.detect import evidence
from stockade.detect.config import DetectSettings
from stockade.detect.rules import at_least
from stockade.events import EmitEvent, EventPoster, FallbackEmit
from stockade.incident import DROPPED, FAILED, GONE, RECORDED, Ack, Incident, settle
from stockade.kube import Kube, KubeError, object_path
from stockade.release import ReleaseMixin
from stockade.rungs import RETRIES, ConfinementError, RungsMixin, quarantine_policy
from stockade.store import RunKey, Store, uid_of

log = logging.getLogger("stockade.respond")

__all__ = ["DROPPED", "FAILED", "GONE", "RECORDED", "Ack", "ConfinementError", "EventPoster", "FallbackEmit",
           "Incident", "Responder", "quarantine_policy"]

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
    def __init__(self, kube: Kube, store: Store, emit: EmitEvent, *, settings: DetectSettings,
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
        for attempt, delay in enumerate((*RETRIES, None)):
            body = self.store.agentruns.get(key)
            if body is None:
                log.info("%d violation(s) for %s/%s dropped: the AgentRun is gone", len(batch), *key)
                settle((w for i in batch for w in i.waiters), GONE)
                return
            try:
                await self._respond(key, body, batch)
                return
            except KubeError as err:
                transient = err.conflict or err.status in (0, 429) or err.status >= 500
                if not transient or delay is None:
                    raise
                log.info("responding to %s/%s: %s; trying again (%d)", key[0], key[1], err, attempt + 1)
                if err.conflict:  # someone else wrote the status: decide again on what it says now
                    fresh = await self.kube.get("stockade.io/v1alpha1", "AgentRun", key[0], key[1])
                    if fresh is None:
                        settle((w for i in batch for w in i.waiters), GONE)
                        return
                    self.store.put_agentrun(fresh)
                else:
                    await asyncio.sleep(delay)

    async def _respond(self, key: RunKey, body: Mapping[str, Any], batch: list[Incident]) -> None:
        spec = self.store.valid_spec(key)  # body is the stored one (_handle): its spec, parsed once
        if spec is None:
            log.warning("violations for %s/%s recorded without a response: its spec is invalid", *key)
        status = body.get("status") or {}
        confirmed = run_namespace(self.store, key, status)
        run_ns = confirmed or ""
        ladder = list(spec.response) if spec else []
        plan = self._decide(key, spec, status, confirmed, batch)
        started = min(i.received for i in batch)

        # Evidence is captured before any rung: the pod as the watch last showed it, its Events now.
        records = await self._records(run_ns, batch, plan.actions, plan.targets)
        patch: dict[str, Any] = {"violations": self._merge_violations(status.get("violations") or [], records)}
        if plan.acting:
            patch["quarantine"] = self._quarantine(status, plan, ladder)
        quarantine = patch.get("quarantine") or status.get("quarantine") or {}
        qid = audit.quarantine_id(uid_of(body), quarantine.get("since") if quarantine.get("active") else None)
        with audit.context(run_namespace=confirmed, quarantine_id=qid):
            for index, incident in enumerate(batch):
                _log_violation(body, incident, plan.actions[index])
            captured = time.perf_counter()
            record = self._record(key, body, patch, batch)
            early = plan.acting and bool(plan.targets) and "isolate" in ladder and \
                not self.settings.evidence_before_isolation
            if early:
                # Isolation destroys no evidence, so it need not wait for the status write; freeze and
                # evict (which do) still wait for it below.
                await asyncio.gather(record, self._isolate(key, run_ns, plan.targets))
            else:
                await record
            recorded = time.perf_counter()
            if plan.acting:
                rungs = [step for step in ladder if not (early and step == "isolate")]
                await self._act(key, run_ns, rungs, plan.targets, forced=plan.forced, freeze=plan.freeze)
            self._report(body, batch, plan, spec)
            # The status write is already in the store, so its watch echo triggers nothing: reconcile now
            # (after the rungs, which need no reconcile) so phase and conditions follow.
            self.trigger(key)
            log.debug("%s/%s: %d violation(s) answered in %.1f ms (evidence %.1f, status %.1f, rungs %.1f)",
                      key[0], key[1], len(batch), (time.perf_counter() - started) * 1000, (captured - started) * 1000,
                      (recorded - captured) * 1000, (time.perf_counter() - recorded) * 1000)

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
            "reason": reason.kind if reason else quarantine.get("reason") or "Violation",
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
                       targets: Mapping[str, Incident]) -> list[dict[str, Any]]:
        """Violations as stored: evidence with the signal, the pod as it was and its last Events."""
        pods = {i.violation.pod for i in batch if i.violation.pod} | set(targets)
        pods = {p for p in pods if self.store.get("Pod", run_ns, p) is not None}
        fetched = await asyncio.gather(*(self._pod_events(run_ns, p) for p in sorted(pods)))
        events = dict(zip(sorted(pods), fetched, strict=True))
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

    def _merge_violations(self, old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Append, folding a repeat of a kept violation into its count; keep the newest few."""
        kept = [dict(v) for v in old]
        for record in new:
            same = next((v for v in reversed(kept) if (v.get("kind"), v.get("pod"), v.get("detail"),
                         v.get("source")) == (record["kind"], record.get("pod"), record["detail"], record["source"])),
                        None)
            if same is not None and record["action"].startswith("none"):
                same["count"] = int(same.get("count") or 1) + int(record.get("count") or 1)
                same["lastTime"] = record["time"]
                continue
            kept.append(record)
        kept = kept[-self.settings.violations_kept:]
        # Every status write carries the whole list: only the newest entries keep bulky evidence.
        for entry in kept[:-evidence.FULL_KEPT]:
            if isinstance(entry.get("evidence"), Mapping) and not entry["evidence"].get("compacted"):
                entry["evidence"] = evidence.compact(entry["evidence"])
        return kept

    async def _pod_events(self, namespace: str, pod: str) -> list[dict[str, Any]]:
        query = [("fieldSelector", f"involvedObject.kind=Pod,involvedObject.name={pod}"), ("limit", "100")]
        try:
            found = await self.kube.call("GET", object_path("v1", "Event", namespace), query=query)
        except KubeError as err:
            log.info("could not read the events of pod %s/%s: %s", namespace, pod, err)
            return []
        items: list[dict[str, Any]] = found.get("items") or []
        return items

    async def _record(self, key: RunKey, body: Mapping[str, Any], patch: Mapping[str, Any],
                      batch: list[Incident]) -> None:
        """The status write that records the batch; only then is each sender told it is safe (their
        retries cover a crash before this point)."""
        await self._write_status(key, body, patch)
        settle((w for i in batch for w in i.waiters), RECORDED)

    async def _write_status(self, key: RunKey, body: Mapping[str, Any], patch: Mapping[str, Any]) -> None:
        # The resourceVersion makes this a compare-and-swap: violations are a read-modify-write list
        # that admission appends to as well; on a conflict the caller re-reads and decides again.
        path = object_path("stockade.io/v1alpha1", "AgentRun", key[0], key[1]) + "/status"
        meta = {"resourceVersion": body["metadata"]["resourceVersion"]}
        updated = await self.kube.merge_patch(path, {"metadata": meta, "status": dict(patch)})
        self.store.put_agentrun(updated)

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
            self.emit(body, "Warning", "Violation",
                      f"{v.kind} ({v.severity}, {v.source}){where}: {v.detail} -> {plan.actions[index]}")
        if len(noted) > EVENTS_PER_BATCH:
            self.emit(body, "Warning", "Violation", f"{len(noted) - EVENTS_PER_BATCH} more violation(s) recorded")
        if plan.acting and spec is not None:
            pods = ", ".join(sorted(plan.targets)) or "none"
            self.emit(body, "Warning", "Quarantined", f"applied {'+'.join(spec.response)} (pods: {pods})")
