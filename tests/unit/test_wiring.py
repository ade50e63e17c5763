"""The operator's wiring: every kopf registration is in stockade.handlers (which hands each event to the app
built by stockade.app), and every webhook the configurations name has its handler there."""

from __future__ import annotations

import asyncio

import kopf
import pytest

import stockade.handlers
from stockade.admission import webhook
from stockade.app import build
from stockade.events import EventPoster
from stockade.kube import Kube
from stockade.settings import Settings

from .fakes import FakeKube


def _registered() -> list[object]:
    registry = kopf.get_default_registry()
    groups = (registry._activities, registry._watching, registry._changing, registry._webhooks,
              registry._spawning, registry._indexing)
    return [h for group in groups for h in group.get_all_handlers()]


def test_every_registration_is_in_the_one_handlers_module() -> None:
    modules = {getattr(h.fn, "__module__", "") for h in _registered()}  # type: ignore[attr-defined]
    ours = {m for m in modules if m.startswith("stockade")}
    assert ours == {stockade.handlers.__name__}, f"kopf handlers registered outside stockade.handlers: {ours}"


def test_every_configured_webhook_has_its_handler() -> None:
    ids = {str(h.id) for h in kopf.get_default_registry()._webhooks.get_all_handlers()}
    configured = {webhook.VALIDATE_ID, webhook.MUTATE_ID, webhook.AGENTRUN_MUTATE_ID, webhook.POLICY_ID,
                  webhook.POLICY_DEFAULTS_ID}
    assert configured <= ids, f"webhooks without a handler: {sorted(configured - ids)}"


def test_one_startup_one_cleanup_and_one_login() -> None:
    registry = kopf.get_default_registry()
    activities = [h for h in registry._activities.get_all_handlers() if h.fn.__module__.startswith("stockade")]
    assert sorted(h.activity.value for h in activities) == ["authentication", "cleanup", "startup"], \
        "the app is built and started in one place, and kopf logs in as the operator does (stockade.kubeconn)"


def test_the_composition_root_hands_each_part_what_it_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    kube = object()
    monkeypatch.setattr(Kube, "connect", classmethod(lambda cls, **_: kube))

    async def scenario() -> None:
        app = build(Settings())
        reconciler = app.reconciler
        # The detector judges every reconciled run: a constructor argument, not a list appended to later.
        assert reconciler.on_reconcile == (app.detector.on_reconcile,)
        assert reconciler.admission_state == app.guard.condition
        # Every Event, whoever emits it, goes through the one poster (no kopf.event path, no second poster).
        assert isinstance(app.events, EventPoster) and app.events.kube is kube
        emitters = [reconciler.emit, reconciler.lifecycle.emit, reconciler.budget.emit, reconciler._egress.emit,
                    app.guard.emit, app.responder.emit, app.recorder.post]
        assert all(emit is app.events for emit in emitters), emitters
        assert {app.kube, app.responder.kube, app.reviews.kube, app.grant_policy.kube, app.budget.kube} == {kube}
        assert {id(p.store) for p in (reconciler, app.responder, app.detector, app.reviews, app.recorder,
                                      app.detection, app.grant_policy, app.budget)} == {id(app.store)}
        assert app.budget.gate is reconciler.budget and app.reviews.recorder is app.recorder
        # The responder triggers reconciles (it is built before the reconciler, which takes the detector).
        triggered: list[tuple[str, str]] = []
        monkeypatch.setattr(reconciler, "trigger_soon", triggered.append)
        app.responder.trigger(("team", "rome"))
        assert triggered == [("team", "rome")]

    asyncio.run(scenario())


def test_the_events_of_the_last_moments_are_posted_at_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    """App.stop (kopf's clean-up) flushes the poster: an Event emitted just before is posted before it returns."""
    kube = FakeKube()
    monkeypatch.setattr(Kube, "connect", classmethod(lambda cls, **_: kube))
    run = {"metadata": {"name": "rome", "namespace": "team", "uid": "u1"}}

    async def scenario() -> None:
        app = build(Settings())

        async def stopped() -> None:
            return None

        for part in (app.layer, app.guard, app.detection):
            monkeypatch.setattr(part, "stop", stopped)
        app.reconciler.emit(run, "Normal", "PhaseRunning", "phase Pending -> Running")
        app.responder.emit(run, "Warning", "Quarantined", "applied isolate")
        await app.stop()
        assert [(e["type"], e["reason"]) for e in kube.bodies("CREATE")] == [
            ("Normal", "PhaseRunning"), ("Warning", "Quarantined")]

    asyncio.run(scenario())
