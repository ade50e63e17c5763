"""The kopf entry point: settings in one startup handler, thin watch handlers, nothing else.

Every handler feeds the store and triggers the reconciler for the AgentRun the object belongs to;
no handler decides anything. kopf's own progress annotations and finalizers are not used: the
reconciler is level-based and keeps its own finalizer (``stockade.io/cleanup``).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
from collections.abc import Mapping
from typing import Any, cast

import kopf
from prometheus_client import start_http_server

from stockade import labels
from stockade.api.models import GROUP, PLURAL, VERSION
from stockade.dnsresolve import HostResolver
from stockade.kopf_tuning import tune
from stockade.kube import Kube
from stockade.reconcile import Reconciler
from stockade.runtime import RUNTIME
from stockade.settings import Settings
from stockade.store import RunKey, Store, run_of

log = logging.getLogger("stockade")

# Children the reconciler owns, watched so that drift (a deleted or edited guardrail) comes back
# from the watch within moments, not from a periodic timer.
CHILD_KINDS: list[tuple[str, str, str, str]] = [
    # (api group, version, plural, kind)
    ("", "v1", "serviceaccounts", "ServiceAccount"),
    ("", "v1", "resourcequotas", "ResourceQuota"),
    ("", "v1", "limitranges", "LimitRange"),
    ("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy"),
    ("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    ("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    ("batch", "v1", "jobs", "Job"),
]


def emit_event(body: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
    kopf.event(cast(kopf.Body, body), type=kind, reason=reason, message=message[:1000])


def _api_version(group: str, version: str) -> str:
    return f"{group}/{version}" if group else version


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    config = Settings()
    settings.posting.level = logging.WARNING  # Events for anomalies; the reconciler posts its own Normal ones
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
    await _prime(kube, store)
    if config.metrics_port:
        start_http_server(config.metrics_port)
    log.info("stockade started; metrics on :%s", config.metrics_port)


async def _prime(kube: Kube, store: Store) -> None:
    """Fill the store before the first reconcile, so a restart never mistakes "not seen yet" for
    "missing" and re-creates what exists (watches keep it current from here)."""
    selector = labels.AGENTRUN
    lists = [kube.list_objects("v1", "Namespace", selector=selector)]
    lists += [kube.list_objects(_api_version(g, v), kind, selector=selector) for g, v, _, kind in CHILD_KINDS]
    lists.append(kube.list_objects("stockade.io/v1alpha1", "AgentRun"))
    results = await asyncio.gather(*lists)
    for group in results[:-1]:
        for obj in group:
            store.put(obj)
    for run in results[-1]:
        store.put_agentrun(run)
    pods = await kube.list_objects("v1", "Pod")
    for pod in pods:
        if store.is_run_namespace(pod["metadata"]["namespace"]):
            store.put(pod)


async def _trigger(key: RunKey | None) -> None:
    if key is not None:
        await RUNTIME.reconciler.trigger(key)


def _child_kind(body: Mapping[str, Any], kind: str, api_version: str) -> dict[str, Any]:
    obj = dict(body)
    obj.setdefault("kind", kind)
    obj.setdefault("apiVersion", api_version)
    return obj


@kopf.on.event(GROUP, VERSION, PLURAL)
async def agentrun_event(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    obj = _child_kind(body, "AgentRun", f"{GROUP}/{VERSION}")
    if event.get("type") == "DELETED":
        RUNTIME.store.forget_agentrun(key)
    elif event.get("type") is not None and RUNTIME.store.has_seen(obj):
        return  # the echo of the operator's own write: that reconcile already saw this state
    else:
        RUNTIME.store.put_agentrun(obj)
    await _trigger(key)


async def _observe(event: Mapping[str, Any], obj: dict[str, Any]) -> bool:
    """Record a watched object; False when it is only the echo of the operator's own write."""
    if event.get("type") == "DELETED":
        RUNTIME.store.remove(obj)
        return True
    if event.get("type") is not None and RUNTIME.store.has_seen(obj):
        return False  # type None is kopf's initial listing: always look, the store was only primed
    RUNTIME.store.put(obj)
    return True


@kopf.on.event("", "v1", "namespaces", labels={labels.AGENTRUN: kopf.PRESENT})
async def namespace_event(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
    obj = _child_kind(body, "Namespace", "v1")
    if await _observe(event, obj):
        await _trigger(run_of(obj))


def _register_child(group: str, version: str, plural: str, kind: str) -> None:
    api_version = _api_version(group, version)

    async def child_event(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
        obj = _child_kind(body, kind, api_version)
        if await _observe(event, obj):
            await _trigger(run_of(obj) or RUNTIME.store.run_of_namespace(obj["metadata"].get("namespace", "")))

    child_event.__name__ = f"{plural}_event"
    kopf.on.event(group, version, plural, labels={labels.AGENTRUN: kopf.PRESENT})(child_event)


for _group, _version, _plural, _kind in CHILD_KINDS:
    _register_child(_group, _version, _plural, _kind)


def _in_run_namespace(namespace: str | None, **_: Any) -> bool:
    return bool(namespace) and RUNTIME.store.is_run_namespace(namespace or "")


@kopf.on.event("", "v1", "pods", when=_in_run_namespace)
async def pod_event(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
    obj = _child_kind(body, "Pod", "v1")
    if await _observe(event, obj):
        await _trigger(RUNTIME.store.run_of_namespace(obj["metadata"]["namespace"]))


# Admission and detection register their own kopf handlers when imported.
EXTENSIONS = ("stockade.admission.handlers", "stockade.detect.handlers")


def _load_extensions() -> None:
    for name in EXTENSIONS:
        try:
            found = importlib.util.find_spec(name)
        except ModuleNotFoundError:
            found = None
        if found is not None:
            importlib.import_module(name)


_load_extensions()
