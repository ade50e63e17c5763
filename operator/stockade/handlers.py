"""The kopf entry point: settings in one startup handler, the AgentRun watch, nothing else.

kopf watches the AgentRun; everything else the reconciler reads comes from the watch layer
(:mod:`stockade.watch`), which relists after any break. Both feed the store and trigger the reconciler
for the AgentRun concerned; no handler decides anything. kopf's own progress annotations and finalizers
are not used: the reconciler is level-based and keeps its own finalizer (``stockade.io/cleanup``).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
from collections.abc import Mapping
from typing import Any, cast

import kopf

from stockade import events
from stockade.api.models import GROUP, PLURAL, VERSION
from stockade.dnsresolve import HostResolver
from stockade.kopf_tuning import tune
from stockade.kube import Kube
from stockade.leadership import Leadership, Readiness
from stockade.metrics_serve import serve as serve_metrics
from stockade.reconcile import Reconciler
from stockade.runtime import RUNTIME
from stockade.settings import Settings
from stockade.store import RunKey, Store
from stockade.watch import WatchLayer

log = logging.getLogger("stockade")


def emit_event(body: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
    kopf.event(cast(kopf.Body, body), type=kind, reason=reason, message=message[:1000])


# How often run namespaces are compared with the AgentRuns that exist (orphans are removed); also at start-up.
ORPHAN_SWEEP_SECONDS = 120.0
_TASKS: dict[str, Any] = {}


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    config = Settings()
    settings.posting.level = logging.WARNING  # Events for anomalies; the reconciler posts its own Normal ones
    # kopf's Events (kopf.event and its own) name the operator, not "kopf", as the ones posted directly do.
    settings.posting.reporting_component = events.COMPONENT
    settings.posting.reporting_instance = events.reporting_instance()
    settings.posting.event_name_prefix = f"{events.COMPONENT}-event-"
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    settings.queueing.idle_timeout = 30.0
    settings.execution.max_workers = 32
    tune(settings)
    kube = Kube.connect(workers=config.api_workers, impersonate=config.impersonate)
    store = Store()
    resolver = HostResolver(config.dns_servers, config.dns_min_refresh_seconds, config.dns_max_refresh_seconds)
    RUNTIME.settings = config
    RUNTIME.kube = kube
    RUNTIME.store = store
    RUNTIME.reconciler = Reconciler(kube, store, config.plan_settings(), resolver, emit_event)
    # Peering: kopf pauses its own handlers on a standby replica, but not the watch layer, the sweep or the
    # signal endpoint; they all follow ``leadership`` (stockade.leadership), and taking over reconciles all.
    settings.peering.lifetime = config.peering_lifetime_seconds
    leadership = Leadership(kube, config.peering_name, config.peering_identity, config.peering_priority)
    RUNTIME.leadership = leadership
    reconciler = RUNTIME.reconciler

    def trigger(key: RunKey) -> None:
        if leadership.active:
            reconciler.trigger_soon(key)

    async def take_over(active: bool) -> None:
        for key in list(store.agentruns) if active else ():
            reconciler.trigger_soon(key)

    layer = WatchLayer(kube, store, trigger)
    await _prime(kube, store, layer)
    layer.start()
    _TASKS["watches"] = layer
    await leadership.start()
    leadership.on_change(take_over)
    if config.ready_port:
        _TASKS["ready"] = Readiness(leadership, config.ready_host, config.ready_port)
        await _TASKS["ready"].start()
    # Run namespaces left by AgentRuns deleted while the operator was down (or in a race): now and periodically.
    _TASKS["sweep"] = asyncio.get_running_loop().create_task(
        reconciler.lifecycle.sweep_forever(ORPHAN_SWEEP_SECONDS, when=lambda: leadership.active), name="orphan-sweep")
    if config.metrics_port:
        serve_metrics(config.metrics_port, store)
    log.info("stockade started; metrics on :%s", config.metrics_port)


async def _prime(kube: Kube, store: Store, layer: WatchLayer) -> None:
    """Fill the store before the first reconcile: every watched kind, then the AgentRuns (kopf's own
    watch of them starts after the start-up handlers)."""
    await layer.prime()
    for run in await kube.list_objects(f"{GROUP}/{VERSION}", "AgentRun"):
        store.put_agentrun(run)


@kopf.on.cleanup()
async def stop_watches(**_: Any) -> None:
    sweep = _TASKS.pop("sweep", None)
    if sweep is not None:
        sweep.cancel()
    layer = _TASKS.pop("watches", None)
    if layer is not None:
        await layer.stop()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def agentrun_event(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    obj = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "AgentRun", **body}
    if event.get("type") == "DELETED":
        RUNTIME.store.forget_agentrun(key)
        await RUNTIME.reconciler.deleted(key, str(body["metadata"].get("uid") or ""))
        return
    if event.get("type") is not None and RUNTIME.store.has_seen(obj):
        return  # the echo of the operator's own write: that reconcile already saw this state
    RUNTIME.store.put_agentrun(obj)
    await RUNTIME.reconciler.trigger(key)


# Admission and detection register their own kopf handlers when imported.
EXTENSIONS = ("stockade.admission.handlers", "stockade.detect.handlers", "stockade.budget_watch")


def _load_extensions() -> None:
    for name in EXTENSIONS:
        try:
            found = importlib.util.find_spec(name)
        except ModuleNotFoundError:
            found = None
        if found is not None:
            importlib.import_module(name)


_load_extensions()
