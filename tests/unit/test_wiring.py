"""The operator's wiring: every kopf registration is in stockade.handlers (which hands each event to the app
built by stockade.app), and every webhook the configurations name has its handler there."""

from __future__ import annotations

import kopf

import stockade.handlers
from stockade.admission import webhook


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


def test_one_startup_and_one_cleanup() -> None:
    registry = kopf.get_default_registry()
    activities = [h for h in registry._activities.get_all_handlers() if h.fn.__module__.startswith("stockade")]
    assert sorted(h.activity.value for h in activities) == ["cleanup", "startup"], \
        "the app is built and started in one place"
