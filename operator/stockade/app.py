"""The composition root: every long-lived part of the operator, built and wired in one place.

:func:`build` makes Kube, the store and watch layer, the Reconciler, the Responder and detectors, the
admission side and the budget watch, and hands each what it uses; :meth:`App.start` starts them in order
(the store primed before the first reconcile). kopf reaches the app through its ``memo``
(:mod:`stockade.handlers`, the one module that registers handlers); nothing else holds it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stockade import labels
from stockade.admission.config import AdmissionSettings
from stockade.admission.grant_policy import GrantPolicy, namespace_indexed
from stockade.admission.guard import AdmissionGuard
from stockade.admission.record import Recorder
from stockade.admission.reviews import Reviews
from stockade.admission.setup import AdmissionSetup
from stockade.api.models import GROUP, VERSION
from stockade.budget_watch import BudgetWatch
from stockade.clock import stamp, utcnow
from stockade.detect.config import DetectSettings
from stockade.detect.detection import Detection
from stockade.detect.respond import Responder
from stockade.detect.watch import ApiDetector
from stockade.dnsresolve import HostResolver
from stockade.events import FLUSH_SECONDS, EventPoster
from stockade.kube import Kube
from stockade.leadership import Leadership, Readiness
from stockade.memtrim import trim_forever
from stockade.metrics_serve import serve as serve_metrics
from stockade.reconcile import Reconciler
from stockade.settings import Settings
from stockade.store import RunKey, Store
from stockade.watch import Listener, WatchLayer

log = logging.getLogger("stockade")

# How often run namespaces are compared with the AgentRuns that exist (orphans are removed); also at start-up.
ORPHAN_SWEEP_SECONDS = 120.0


def _now() -> str:
    return stamp(utcnow())


@dataclass
class App:
    config: Settings
    kube: Kube
    store: Store
    layer: WatchLayer
    leadership: Leadership
    reconciler: Reconciler
    responder: Responder
    detector: ApiDetector
    detection: Detection
    admission: AdmissionSetup
    guard: AdmissionGuard
    recorder: Recorder
    reviews: Reviews
    grant_policy: GrantPolicy
    budget: BudgetWatch
    events: EventPoster  # every Event of the operator: flushed at stop
    started: set[str] = field(default_factory=set)  # the steps of start() done (kopf retries a failed start-up)
    tasks: dict[str, Any] = field(default_factory=dict)

    def trigger_all(self) -> None:
        for key in list(self.store.agentruns):
            self.reconciler.trigger_soon(key)

    async def start(self, kopf_settings: Any) -> None:
        """Start every part, in order; after a failure (kopf runs the start-up handler again) from the step
        that failed."""
        steps = (("store", self._start_store), ("policy-index", self.grant_policy.prime_index),
                 ("admission", lambda: self._start_admission(kopf_settings)), ("detection", self.detection.start),
                 ("budget", self.budget.start))
        for name, step in steps:
            if name not in self.started:
                await step()
                self.started.add(name)

    async def _start_store(self) -> None:
        # Fill the store before the first reconcile: every watched kind, then the AgentRuns (kopf's own watch
        # of them starts after the start-up handlers).
        await self.layer.prime()
        for run in await self.kube.list_objects(f"{GROUP}/{VERSION}", "AgentRun"):
            self.store.put_agentrun(run)
        self.layer.start()
        # Peering: kopf pauses its own handlers on a standby replica, but not the watch layer, the sweep or the
        # signal endpoint; they all follow ``leadership``, and taking over reconciles all and shows detection
        # every object it judges (a standby judges nothing).
        await self.leadership.start()
        if self.leadership.active:
            await self.layer.replay()

        async def take_over(active: bool) -> None:
            if active:
                self.trigger_all()
                await self.layer.replay()

        self.leadership.on_change(take_over)
        config = self.config
        if config.ready_port:
            self.tasks["ready"] = Readiness(self.leadership, config.ready_host, config.ready_port)
            await self.tasks["ready"].start()
        # Run namespaces left by AgentRuns deleted while the operator was down (or in a race): now and periodically.
        self.tasks["sweep"] = asyncio.get_running_loop().create_task(self.reconciler.lifecycle.sweep_forever(
            ORPHAN_SWEEP_SECONDS, when=lambda: self.leadership.active), name="orphan-sweep")
        self.tasks["trim"] = asyncio.get_running_loop().create_task(
            trim_forever(config.memory_trim_seconds), name="memory-trim")
        if config.metrics_port:
            serve_metrics(config.metrics_port, self.store)
        log.info("stockade started; metrics on :%s", config.metrics_port)

    async def _start_admission(self, kopf_settings: Any) -> None:
        setup = self.admission
        await setup.prepare(self.kube)
        self.reviews.usernames, self.reviews.exempt_groups = setup.usernames, setup.exempt_groups
        kopf_settings.admission.server = setup.server
        kopf_settings.admission.managed = None  # the configurations are ours, not kopf's

        async def own_admission(active: bool) -> None:
            """The active replica owns the configurations (AdmissionSetup.apply)."""
            if active:
                await setup.apply(self.kube)
                self.guard.wake()

        await own_admission(self.leadership.active)
        self.leadership.on_change(own_admission)
        # Watched from now on: what goes missing or changes is restored (what the operator may) and reported.
        self.guard.want(setup.watched, setup.owners)
        await self.guard.start()
        # The webhook's thread waits for the interpreter lock while the main loop handles watch
        # events; a shorter switch interval (default 5 ms) bounds each of those waits.
        sys.setswitchinterval(setup.config.admission_switch_interval_seconds)
        log.info("admission webhook on %s", setup.where)

    async def stop(self) -> None:
        for name in ("sweep", "trim"):
            task = self.tasks.pop(name, None)
            if task is not None:
                task.cancel()
        await self.layer.stop()
        await self.guard.stop()
        await self.detection.stop()
        await self.events.flush(FLUSH_SECONDS)  # the Events of the last moments, not lost at shutdown


def build(config: Settings) -> App:
    """Every part, each given what it uses; every Event goes through the one poster. Call on the running loop."""
    kube = Kube.connect(workers=config.api_workers, impersonate=config.impersonate)
    store = Store()
    leadership = Leadership(kube, config.peering_name, config.peering_identity, config.peering_priority)
    poster = EventPoster(kube, _now)
    reconciler: Reconciler | None = None

    def trigger(key: RunKey) -> None:  # the responder's: the reconciler is built after it (it takes its hooks)
        if reconciler is not None:
            reconciler.trigger_soon(key)

    detect_settings = DetectSettings()
    responder = Responder(kube, store, poster, settings=detect_settings, trigger=trigger, now=_now)
    detector = ApiDetector(store, responder, _now)
    admission_config = AdmissionSettings()

    def trigger_runs() -> None:  # every AgentRun again: its AdmissionReady condition changed
        for key in list(store.agentruns):
            trigger(key)

    guard = AdmissionGuard(kube, store, poster, trigger_runs, lambda: leadership.active)
    resolver = HostResolver(config.dns_servers, config.dns_min_refresh_seconds, config.dns_max_refresh_seconds)
    reconciler = Reconciler(kube, store, config.plan_settings(), resolver, poster,
                            on_reconcile=[detector.on_reconcile], admission_state=guard.condition)

    def on_change(key: RunKey) -> None:  # the watch layer's: a child of this run changed
        if leadership.active:
            trigger(key)

    def detect(obj: Mapping[str, Any], event_type: str | None) -> None:  # the watch layer's, for detected kinds
        if leadership.active:
            detector.on_object(obj, event_type)

    recorder = Recorder(kube, store, admission_config.admission_violations_kept, poster)
    budget = BudgetWatch(kube, store, reconciler.budget)

    def teams(handle: Callable[[Mapping[str, Any], Mapping[str, Any]], None]) -> Listener:
        """Only what is not the operator's own (team namespaces and their quotas), as kopf's filter did."""
        def listener(obj: Mapping[str, Any], event_type: str | None) -> None:
            if labels.AGENTRUN not in ((obj.get("metadata") or {}).get("labels") or {}):
                handle({"type": event_type}, obj)
        return listener

    def every(handle: Callable[[Mapping[str, Any], Mapping[str, Any]], None]) -> Listener:
        return lambda obj, event_type: handle({"type": event_type}, obj)

    # The policy index and budgets hear namespaces and team quotas from the watch layer's streams.
    listeners: dict[str, list[Listener]] = {
        "Namespace": [every(namespace_indexed), teams(budget.team_namespace_event)],
        "ResourceQuota": [teams(budget.team_quota_event)],
    }
    layer = WatchLayer(kube, store, on_change, detect, listeners)
    return App(
        config=config, kube=kube, store=store, layer=layer, leadership=leadership,
        reconciler=reconciler, responder=responder, detector=detector,
        detection=Detection(detect_settings, kube, store, responder, detector=detector, now=_now,
                            standby=lambda: not leadership.active),
        admission=AdmissionSetup(admission_config, excluded=[config.namespace]), guard=guard, recorder=recorder,
        reviews=Reviews(kube, store, recorder), grant_policy=GrantPolicy(kube, store, responder),
        budget=budget, events=poster,
    )
