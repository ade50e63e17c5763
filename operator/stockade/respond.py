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
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pydantic import ValidationError

from stockade import labels, metrics
from stockade.api.models import AgentRunSpec, Violation
from stockade.confine import confined_pod, run_namespace
from stockade.detect import evidence
from stockade.detect.config import DetectSettings
from stockade.detect.rules import at_least
from stockade.kube import Kube, KubeError, object_path
from stockade.naming import run_namespace_name
from stockade.reconcile import EmitEvent, stamp, utcnow
from stockade.store import RunKey, Store

log = logging.getLogger("stockade.respond")

RETRIES = (0.1, 0.3, 1.0)
EVENTS_PER_BATCH = 5

# What became of a submitted violation, as its acknowledgement says (the signal endpoint answers by it).
RECORDED = "recorded"  # in the AgentRun's status, as the API server returned it
DROPPED = "dropped"  # refused: too many distinct violations already wait for this run
GONE = "gone"  # the AgentRun no longer exists
FAILED = "failed"  # the status write failed; the sender should try again
Ack = asyncio.Future[str]


def _settle(waiters: Iterable[Ack], outcome: str) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(outcome)


@dataclass
class Incident:
    """A violation on its way to the AgentRun, with what came with it."""

    violation: Violation
    signal: Any = None  # the payload as received (kept bounded in the evidence)
    received: float = field(default_factory=time.perf_counter)
    attributable: bool = True  # False: the agent cannot have done it; record, do not act
    force: bool = False  # act even on an already quarantined pod (its isolation was undone)
    count: int = 1
    pod: Mapping[str, Any] | None = None  # the pod as the signal endpoint found it in the run namespace
    waiters: list[Ack] = field(default_factory=list)  # resolved once the violation is recorded (or is not)

    @property
    def signature(self) -> tuple[str, str | None, str, str]:
        v = self.violation
        return v.kind, v.pod, v.detail, v.source


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


def quarantine_policy(run_namespace: str, run_name: str, run_team: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": labels.POLICY_QUARANTINE,
            "namespace": run_namespace,
            "labels": {labels.AGENTRUN: run_name, labels.AGENTRUN_NAMESPACE: run_team,
                       labels.MANAGED_BY: labels.MANAGED_BY_VALUE, labels.COMPONENT: "quarantine"},
        },
        "spec": {
            "podSelector": {"matchLabels": {labels.QUARANTINED: "true"}},
            "policyTypes": ["Ingress", "Egress"],
        },
    }


class ConfinementError(Exception):
    """An action outside the run namespace of the run it is for was about to be taken (a bug: never)."""


class EventPoster:
    """Events on the AgentRun, posted directly: kopf.event works only inside kopf's per-object handler
    tasks, and the responder runs in its own. Fire and forget: an Event never delays a response."""

    def __init__(self, kube: Kube, now: Callable[[], str] | None = None) -> None:
        self.kube = kube
        self.now = now or (lambda: stamp(utcnow()))
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, body: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        task = asyncio.get_running_loop().create_task(self.post(body, kind, reason, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def post(self, body: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        meta = body["metadata"]
        at = self.now()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": "stockade.io/v1alpha1", "kind": "AgentRun", "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta.get("uid")},
            "type": kind,
            "reason": reason,
            "message": message[:1000],
            "source": {"component": "stockade"},
            "reportingComponent": "stockade",
            "firstTimestamp": at,
            "lastTimestamp": at,
            "count": 1,
        }
        try:
            await self.kube.create(event)
        except KubeError as err:
            log.warning("could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], err)

    async def flush(self) -> None:
        await asyncio.gather(*list(self._tasks), return_exceptions=True)


class FallbackEmit:
    """The reconciler's emit (kopf.event) raises LookupError outside kopf's per-object handler tasks,
    and reconciles the responder triggers run in its own tasks: post those Events directly instead."""

    def __init__(self, primary: EmitEvent, fallback: EmitEvent) -> None:
        self.primary = primary
        self.fallback = fallback

    def __call__(self, body: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        try:
            self.primary(body, kind, reason, message)
        except LookupError:
            self.fallback(body, kind, reason, message)


class Responder:
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
                _settle([ack, *incident.waiters], DROPPED)
                continue
            incident.waiters.append(ack)
            pending[incident.signature] = incident
        self._backlog()
        if not pending:
            self._pending.pop(key, None)
            _settle([ack], RECORDED)  # nothing was submitted: nothing is owed
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
                        _settle((w for i in batch for w in i.waiters), FAILED)
        finally:
            self._workers.pop(key, None)

    # The response --------------------------------------------------------------------------------
    async def _handle(self, key: RunKey, batch: list[Incident]) -> None:
        for attempt, delay in enumerate((*RETRIES, None)):
            body = self.store.agentruns.get(key)
            if body is None:
                log.info("%d violation(s) for %s/%s dropped: the AgentRun is gone", len(batch), *key)
                _settle((w for i in batch for w in i.waiters), GONE)
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
                        _settle((w for i in batch for w in i.waiters), GONE)
                        return
                    self.store.put_agentrun(fresh)
                else:
                    await asyncio.sleep(delay)

    async def _respond(self, key: RunKey, body: Mapping[str, Any], batch: list[Incident]) -> None:
        try:
            spec = AgentRunSpec.model_validate(body.get("spec") or {})
        except ValidationError:
            log.warning("violations for %s/%s recorded without a response: its spec is invalid", *key)
            spec = None
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
        _settle((w for i in batch for w in i.waiters), RECORDED)

    async def _write_status(self, key: RunKey, body: Mapping[str, Any], patch: Mapping[str, Any]) -> None:
        # The resourceVersion makes this a compare-and-swap: violations are a read-modify-write list
        # that admission appends to as well; on a conflict the caller re-reads and decides again.
        path = object_path("stockade.io/v1alpha1", "AgentRun", key[0], key[1]) + "/status"
        meta = {"resourceVersion": body["metadata"]["resourceVersion"]}
        updated = await self.kube.merge_patch(path, {"metadata": meta, "status": dict(patch)})
        self.store.put_agentrun(updated)

    def _report(self, body: Mapping[str, Any], batch: list[Incident], plan: _Plan, spec: AgentRunSpec | None) -> None:
        for index, incident in enumerate(batch):
            v = incident.violation
            metrics.VIOLATIONS.labels(kind=v.kind, source=v.source, action=plan.actions[index]).inc(incident.count)
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

    # Rungs ---------------------------------------------------------------------------------------------
    def _guard(self, key: RunKey, namespace: str) -> None:
        """The last check before any write: only ever in this run's confirmed run namespace."""
        run = self.store.agentruns.get(key) or {}
        if run_namespace(self.store, key, run.get("status") or {}) != namespace:
            raise ConfinementError(f"refusing to act in namespace {namespace!r}: not the run namespace of "
                                   f"AgentRun {key[0]}/{key[1]}")

    async def _act(self, key: RunKey, run_ns: str, ladder: Sequence[str], targets: Mapping[str, Incident], *,
                   forced: set[str], freeze: bool) -> None:
        self._guard(key, run_ns)
        for step in ladder:
            if step == "isolate" and targets:
                await self._isolate(key, run_ns, targets)
            elif step == "freeze" and freeze:
                await self._step("freeze", lambda: self.kube.delete(
                    "rbac.authorization.k8s.io/v1", "RoleBinding", run_ns, labels.ROLE_BINDING))
            elif step == "evict":
                # A forced incident re-isolates a pod whose label was removed; it is not evicted twice.
                for pod in sorted(set(targets) - forced):
                    await self._step("evict", partial(self._evict, run_ns, pod))

    async def _isolate(self, key: RunKey, run_ns: str, targets: Mapping[str, Incident]) -> None:
        self._guard(key, run_ns)
        policy = quarantine_policy(run_ns, key[1], key[0])
        results = await asyncio.gather(
            self._step("isolate", lambda: self._apply_policy(policy)),
            *(self._step("isolate", partial(self._label, run_ns, pod)) for pod in sorted(targets)),
        )
        if all(results):
            done = time.perf_counter()
            for incident in targets.values():
                metrics.DETECTION_LATENCY.labels(source=incident.violation.source).observe(done - incident.received)

    async def _apply_policy(self, policy: Mapping[str, Any]) -> None:
        meta = policy["metadata"]
        live = self.store.get("NetworkPolicy", meta["namespace"], meta["name"])
        if live is not None and live.get("spec") == policy["spec"] and not live["metadata"].get("deletionTimestamp"):
            return
        applied = await self.kube.apply(policy)
        self.store.put({**applied, "kind": "NetworkPolicy", "apiVersion": "networking.k8s.io/v1"})

    async def _label(self, namespace: str, pod: str) -> None:
        path = object_path("v1", "Pod", namespace, pod)
        try:
            patched = await self.kube.merge_patch(path, {"metadata": {"labels": {labels.QUARANTINED: "true"}}})
        except KubeError as err:
            if err.not_found:
                return  # gone already: nothing left to isolate
            raise
        self.store.put({**patched, "kind": "Pod", "apiVersion": "v1"})

    async def _evict(self, namespace: str, pod: str) -> None:
        live = self.store.get("Pod", namespace, pod) or {}
        for owner in (live.get("metadata") or {}).get("ownerReferences") or []:
            if owner.get("kind") == "Job":
                # A Job would replace the pod; suspended, it does not (a release resumes it).
                await self._suspend(namespace, owner["name"], True)
        await self.kube.delete("v1", "Pod", namespace, pod, grace=0)

    async def _suspend(self, namespace: str, job: str, suspend: bool) -> None:
        path = object_path("batch/v1", "Job", namespace, job)
        try:
            await self.kube.merge_patch(path, {"spec": {"suspend": suspend}})
        except KubeError as err:
            if not err.not_found:
                raise

    @staticmethod
    async def _step(step: str, action: Callable[[], Awaitable[Any]]) -> bool:
        """One rung, with a few quick retries; a rung that still fails is counted and logged."""
        for attempt, delay in enumerate((*RETRIES, None)):
            try:
                await action()
            except KubeError as err:
                if delay is None:
                    log.error("quarantine step %s failed after %d tries: %s", step, attempt + 1, err)
                    metrics.QUARANTINE_ACTIONS.labels(step=step, outcome="failed").inc()
                    return False
                await asyncio.sleep(delay)
                continue
            metrics.QUARANTINE_ACTIONS.labels(step=step, outcome="done").inc()
            return True
        return False

    # Release ---------------------------------------------------------------------------------------
    def release_soon(self, key: RunKey, by: str) -> None:
        """Release in the background, once at a time per run (the annotation handler and every
        reconcile that still sees the annotation ask; only the first request does anything)."""
        if key in self._releasing:
            return
        self._releasing.add(key)

        async def run() -> None:
            try:
                await self.release(key, by)
            except Exception:
                log.exception("releasing %s/%s failed; the annotation stays, so the next reconcile retries", *key)
            finally:
                self._releasing.discard(key)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def release(self, key: RunKey, by: str) -> None:
        """Lift the quarantine after a human looked: status first (so nothing re-isolates the pods),
        then labels, the policy and a suspended Job; the reconciler restores RBAC and the workload."""
        async with self._lock(key):
            for attempt in range(3):
                body = self.store.agentruns.get(key)
                annotations = (body or {}).get("metadata", {}).get("annotations") or {}
                if body is None or labels.RELEASE_ANNOTATION not in annotations:
                    return  # gone, or released already (a second event for the same request)
                try:
                    await self._release(key, body, by)
                    return
                except KubeError as err:
                    if not err.conflict or attempt == 2:
                        raise
                    fresh = await self.kube.get("stockade.io/v1alpha1", "AgentRun", key[0], key[1])
                    if fresh is None:
                        return
                    self.store.put_agentrun(fresh)

    async def _release(self, key: RunKey, body: Mapping[str, Any], by: str) -> None:
        status = body.get("status") or {}
        quarantine = status.get("quarantine") or {}
        run_ns = status.get("runNamespace") or run_namespace_name(*key)
        at = self.now()
        was_active = bool(quarantine.get("active"))
        if was_active:
            await self._write_status(key, body, {"quarantine": {"active": False, "releasedAt": at, "releasedBy": by}})
        for pod in list(self.store.in_namespace(run_ns, "Pod")):
            if labels.QUARANTINED in (pod["metadata"].get("labels") or {}):
                await self._unlabel(run_ns, pod["metadata"]["name"])
        await self.kube.delete("networking.k8s.io/v1", "NetworkPolicy", run_ns, labels.POLICY_QUARANTINE)
        job = self.store.get("Job", run_ns, key[1])
        if job is not None and (job.get("spec") or {}).get("suspend"):
            await self._suspend(run_ns, key[1], False)
        path = object_path("stockade.io/v1alpha1", "AgentRun", key[0], key[1])
        updated = await self.kube.merge_patch(path, {"metadata": {"annotations": {labels.RELEASE_ANNOTATION: None}}})
        self.store.put_agentrun(updated)
        current = self.store.agentruns.get(key) or body
        if was_active:
            metrics.RELEASES.inc()
            pods = ", ".join(quarantine.get("pods") or []) or "none"
            steps = "+".join(quarantine.get("steps") or [])
            self.emit(current, "Normal", "Released",
                      f"quarantine ({quarantine.get('reason')}, pods {pods}, steps {steps}) released by {by}")
            log.info("quarantine of %s/%s released by %s", key[0], key[1], by)
        else:
            self.emit(current, "Normal", "Released", f"nothing to release (requested by {by})")
        self.trigger(key)  # the reconciler restores RBAC and the workload

    async def _unlabel(self, namespace: str, pod: str) -> None:
        path = object_path("v1", "Pod", namespace, pod)
        try:
            patched = await self.kube.merge_patch(path, {"metadata": {"labels": {labels.QUARANTINED: None}}})
        except KubeError as err:
            if err.not_found:
                return
            raise
        self.store.put({**patched, "kind": "Pod", "apiVersion": "v1"})
