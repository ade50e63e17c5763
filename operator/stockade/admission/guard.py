"""Admission kept whole: the operator's webhook configurations and admission policies watched, restored and reported.

Admission was applied once at start; an object deleted (``helm uninstall`` of a chart that shared its names,
``kubectl delete``) or changed (``failurePolicy: Ignore``) stayed so, silently, until a restart. Now each is
watched (the watch layer's :class:`~stockade.watch.KindWatch`, into a store of its own) and judged by
:func:`stockade.admission.health.admission_health` on every change:

* what the operator applies is applied again at once (server-side apply, force, its one field manager), then
  after 1 s, 2 s, ... up to 30 s while the API server refuses;
* what the chart owns is restored only where the operator may: the webhook configurations the chart made
  empty are filled in again when changed (or made again by ``helm upgrade``), never re-created (a
  fail-closed webhook must not outlive ``helm uninstall``); the policies the chart ships are reported only;
* every AgentRun that is not finished gets a Warning Event (``AdmissionMissing``/``AdmissionChanged``) when
  admission breaks and a Normal ``AdmissionRestored`` when it is whole again, the ``AdmissionReady``
  condition (Ready=False while broken, :mod:`stockade.conditions`), and ``stockade_admission_ready{kind,name}``
  / ``stockade_admission_restored_total{kind}`` say it to Prometheus.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from stockade import metrics
from stockade.admission import health, webhook
from stockade.api.reasons import ADMISSION_RESTORED
from stockade.kube import Kube, KubeError
from stockade.kubeapi import EmitEvent
from stockade.store import ObjectKey as StoreKey
from stockade.store import Store
from stockade.watch import KindWatch, WatchedKind

log = logging.getLogger("stockade.admission")

KINDS = tuple(WatchedKind("admissionregistration.k8s.io/v1", kind, path, selector=None)
              for kind, path in webhook.PATHS.items())
RETRY_SECONDS = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
DEBOUNCE_SECONDS = 0.05
FINISHED = ("Succeeded", "Failed", "Expired")



class _Watch(KindWatch):
    """One kind, cluster-wide, keeping only the names the guard wants (a cluster holds few of these)."""

    def __init__(self, guard: AdmissionGuard, kind: WatchedKind) -> None:
        super().__init__(guard.kube, guard.store, kind, lambda _key: None)
        self.guard = guard

    def _keep(self, obj: Mapping[str, Any]) -> bool:
        return (self.kind.kind, str((obj.get("metadata") or {}).get("name"))) in self.guard.wanted

    def _trigger_object(self, obj: Mapping[str, Any]) -> None:
        self.guard.wake()

    def _trigger_all(self, changed: set[StoreKey]) -> None:
        if changed:
            self.guard.wake()


class AdmissionGuard:
    def __init__(self, kube: Kube, runs: Store, emit: EmitEvent, trigger_runs: Callable[[], None],
                 active: Callable[[], bool]) -> None:
        self.kube = kube
        self.runs = runs
        self.emit = emit
        self.trigger_runs = trigger_runs  # every AgentRun reconciled again (its AdmissionReady condition)
        self.active = active
        self.store = Store()  # the admission objects only
        self.desired: list[dict[str, Any]] = []
        self.owners: dict[health.ObjectKey, str] = {}
        self.wanted: set[health.ObjectKey] = set()
        self.health: health.Health | None = None
        self._broken: tuple[str, ...] = ()  # labels of what was last reported broken
        self._wake = asyncio.Event()
        self._failures = 0
        self._watches = [_Watch(self, kind) for kind in KINDS]
        self._tasks: list[asyncio.Task[None]] = []

    # Wiring --------------------------------------------------------------------------------------------
    def want(self, desired: Sequence[Mapping[str, Any]], owners: Mapping[health.ObjectKey, str]) -> None:
        """The objects admission is made of, as the operator applies them (the chart's, as the chart ships them)."""
        self.desired = [dict(obj) for obj in desired]
        self.owners = dict(owners)
        self.wanted = {health.key_of(obj) for obj in desired}
        self.wake()

    def condition(self) -> tuple[bool, str, str] | None:
        """AdmissionReady for every AgentRun (None before the first look, or when nothing is watched)."""
        return self.health.condition() if self.health is not None and self.desired else None

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        await asyncio.gather(*(watch.relist() for watch in self._watches))
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(w.run(), name=f"watch-{w.kind.kind}") for w in self._watches]
        await self.check()
        self._tasks.append(loop.create_task(self._loop(), name="admission-guard"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    # The loop ------------------------------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            delay = RETRY_SECONDS[min(self._failures, len(RETRY_SECONDS)) - 1] if self._failures else None
            with contextlib.suppress(TimeoutError):  # a retry after a refused restore
                await asyncio.wait_for(self._wake.wait(), delay)
            # One look for a burst of changes (helm uninstall removes a dozen objects): one Event per run, not twelve.
            await asyncio.sleep(DEBOUNCE_SECONDS)
            self._wake.clear()
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("checking the admission objects failed; looking again")
                self._failures += 1

    def _live(self) -> dict[health.ObjectKey, dict[str, Any] | None]:
        return {key: self.store.get(key[0], "", key[1]) for key in self.wanted}

    async def check(self) -> None:
        """Judge, restore what the operator may, judge again; report each change of what is broken."""
        self._wake.clear()
        found = health.admission_health(self.desired, self._live(), self.owners)
        self._report(found)
        todo = health.restorable(found) if self.active() else []
        if not todo:
            self._failures = 0
            return
        by_key = {health.key_of(obj): obj for obj in self.desired}
        try:
            for key in todo:
                applied = await webhook.apply_one(self.kube, by_key[key])
                self.store.put({"apiVersion": by_key[key]["apiVersion"], "kind": key[0], **applied})
                metrics.ADMISSION_RESTORED.labels(kind=key[0]).inc()
                log.warning("restored %s %s: it was %s", key[0], key[1],
                            next(o.state for o in found.objects if (o.kind, o.name) == key))
            self._failures = 0
        except KubeError as err:
            self._failures += 1
            delay = RETRY_SECONDS[min(self._failures, len(RETRY_SECONDS)) - 1]
            log.warning("could not restore admission (%s); trying again in %.0fs", err, delay)
        self._report(health.admission_health(self.desired, self._live(), self.owners))

    def _report(self, found: health.Health) -> None:
        self.health = found
        for item in found.objects:
            metrics.ADMISSION_READY.labels(kind=item.kind, name=item.name).set(1 if item.state == health.OK else 0)
        broken = tuple(sorted(f"{o.label}: {o.state}" for o in found.broken))
        if broken == self._broken or not self.active():
            return  # a standby says nothing: the replica that takes over reports what it finds then
        before, self._broken = self._broken, broken
        if broken:
            log.warning("admission is not whole: %s", found.message)
            self._tell("Warning", found.reason, found.message)
        else:
            gone = ", ".join(item.partition(":")[0] for item in before)
            log.info("admission is whole again: %s restored", gone)
            self._tell("Normal", ADMISSION_RESTORED, f"admission is whole again ({gone} restored)")
        self.trigger_runs()

    def _tell(self, kind: str, reason: str, message: str) -> None:
        for body in list(self.runs.agentruns.values()):
            if (body.get("status") or {}).get("phase") in FINISHED or body["metadata"].get("deletionTimestamp"):
                continue
            self.emit(body, kind, reason, message)
