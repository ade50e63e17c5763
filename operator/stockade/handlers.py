"""The kopf entry point: every kopf registration of the operator, and nothing else.

Each handler hands its event to the part of the app (:mod:`stockade.app`, the composition root) that
owns it; kopf passes the app to every handler in ``memo`` (set by the start-up handler). kopf watches
the AgentRun; everything else the reconciler reads comes from the watch layer (:mod:`stockade.watch`),
which relists after any break. kopf's own progress annotations and finalizers are not used: the
reconciler is level-based and keeps its own finalizer (``stockade.io/cleanup``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, cast

import kopf

from stockade import events, kubeconn, labels
from stockade.admission import grant_policy, webhook
from stockade.api.models import GROUP, PLURAL, VERSION
from stockade.api.policy import POLICY_PLURAL
from stockade.app import App, build
from stockade.kopf_tuning import tune
from stockade.settings import Settings


def _app(memo: Any) -> App:
    return cast(App, memo.app)


# Start-up and clean-up ----------------------------------------------------------------------------------
@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """kopf's watches and the operator's own calls log in the same way (stockade.kubeconn), and kopf tries
    none of its fallbacks (which would load the official client)."""
    return kubeconn.login()


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config = Settings()
    # Stockade's Events all go through its one poster (stockade.events); kopf posts only its own, for anomalies
    # of its handlers, and names the operator in them, not "kopf".
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = events.COMPONENT
    settings.posting.reporting_instance = events.reporting_instance()
    settings.posting.event_name_prefix = f"{events.COMPONENT}-event-"
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    settings.queueing.idle_timeout = 5.0  # kopf's default: an idle per-object worker (and its body) goes soon
    settings.execution.max_workers = 32
    settings.peering.lifetime = config.peering_lifetime_seconds
    tune(settings)
    if "app" not in memo:  # kopf runs a failed start-up again: the app is built once, started where it failed
        memo.app = build(config)
    await _app(memo).start(settings)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    if "app" in memo:
        await _app(memo).stop()


# The AgentRun ----------------------------------------------------------------------------------------------
@kopf.on.event(GROUP, VERSION, PLURAL)
async def agentrun_event(event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    app = _app(memo)
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    obj = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "AgentRun", **body}
    if event.get("type") == "DELETED":
        app.store.forget_agentrun(key)
        await app.reconciler.deleted(key, str(body["metadata"].get("uid") or ""))
        return
    if event.get("type") is not None and app.store.has_seen(obj):
        return  # the echo of the operator's own write: that reconcile already saw this state
    app.store.put_agentrun(obj)
    await app.reconciler.trigger(key)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def parent_quarantined(event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _app(memo).grant_policy.parent_quarantined(event, body)


@kopf.on.event(GROUP, VERSION, PLURAL, annotations={labels.RELEASE_ANNOTATION: kopf.PRESENT})
async def release_requested(event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _app(memo).detection.release_requested(event, body)


# Admission webhooks (stockade.admission.reviews, .grant_policy) ---------------------------------------------
@kopf.on.validate(lambda _resource: True, id=webhook.VALIDATE_ID, subresource="*")
async def allowlist(memo: kopf.Memo, **kwargs: Any) -> None:
    await _app(memo).reviews.allowlist(kwargs)


@kopf.on.mutate("", "v1", "pods", id=webhook.MUTATE_ID, operations=["CREATE"])
async def gpu_visibility(memo: kopf.Memo, **kwargs: Any) -> None:
    await _app(memo).reviews.gpu_visibility(kwargs)


@kopf.on.mutate(GROUP, VERSION, PLURAL, id=webhook.AGENTRUN_MUTATE_ID, operations=["CREATE", "UPDATE"])
async def agentrun_defaults(memo: kopf.Memo, **kwargs: Any) -> None:
    await _app(memo).reviews.agentrun_defaults(kwargs)


@kopf.on.validate(GROUP, VERSION, PLURAL, id=webhook.POLICY_ID, operations=["CREATE", "UPDATE"])
async def agentrun_policy(memo: kopf.Memo, **kwargs: Any) -> None:
    await _app(memo).grant_policy.validate(kwargs)


@kopf.on.mutate(GROUP, VERSION, PLURAL, id=webhook.POLICY_DEFAULTS_ID, operations=["CREATE", "UPDATE"])
async def agentrun_policy_defaults(memo: kopf.Memo, **kwargs: Any) -> None:
    await _app(memo).grant_policy.defaults(kwargs)


# The policy index and budgets (stockade.admission.grant_policy, stockade.budget_watch) -----------------------
@kopf.on.event(GROUP, VERSION, POLICY_PLURAL)
async def agentpolicy_indexed(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
    grant_policy.agentpolicy_indexed(event, body)


@kopf.on.event(GROUP, VERSION, POLICY_PLURAL)
async def policy_event(event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _app(memo).budget.policy_event(event, body)


