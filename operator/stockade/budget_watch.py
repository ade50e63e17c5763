"""kopf registration for budgets: team ResourceQuotas into the budget gate, and re-evaluation of queued runs
when a policy, a namespace's labels or a team quota changes; the AgentPolicy status writer.

The policy index itself is fed by the admission side (stockade.admission.grant_policy); the handlers here
put the same objects into it too (idempotent: it keeps one parse per resourceVersion), so whichever
handler kopf runs first, the gate decides on the new state.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from stockade import labels
from stockade.api.models import GROUP, VERSION
from stockade.api.policy import POLICY_PLURAL
from stockade.grantpolicy.index import INDEX
from stockade.policy_status import PolicyStatusWriter
from stockade.runtime import RUNTIME

log = logging.getLogger("stockade.budget")


class _State:
    writer: PolicyStatusWriter | None = None
    generations: dict[str, int | None] = {}  # policy -> generation last acted on
    namespace_labels: dict[str, dict[str, str]] = {}  # team namespace -> labels last acted on


STATE = _State()


def _team(namespace: str | None) -> bool:
    return bool(namespace) and not RUNTIME.store.is_run_namespace(namespace or "")


@kopf.on.startup()
async def budget_startup(**_: Any) -> None:
    """Team quotas in the gate before the first reconcile (the store and policy index are primed before)."""
    gate = RUNTIME.reconciler.budget
    STATE.writer = PolicyStatusWriter(RUNTIME.kube, gate)
    gate.listeners.append(STATE.writer.schedule)
    quotas = await RUNTIME.kube.list_objects("v1", "ResourceQuota")
    for quota in quotas:
        if _team((quota.get("metadata") or {}).get("namespace")):
            gate.put_quota(quota)
    log.info("budgets: %d team ResourceQuotas", len(gate.quotas))


@kopf.on.event(GROUP, VERSION, POLICY_PLURAL)
async def policy_event(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
    name = str(body["metadata"]["name"])
    gate = RUNTIME.reconciler.budget
    if event.get("type") == "DELETED":
        INDEX.forget_policy(name)
        STATE.generations.pop(name, None)
        if STATE.writer is not None:
            STATE.writer.forget(name)
        gate.policies_changed()
        return
    INDEX.put_policy(body)
    if STATE.writer is not None:
        STATE.writer.observe(body)
    generation = body["metadata"].get("generation")
    if STATE.generations.get(name, -1) != generation:  # a status write (ours) changes no generation
        STATE.generations[name] = generation
        gate.policies_changed()


@kopf.on.event("", "v1", "namespaces", labels={labels.AGENTRUN: kopf.ABSENT})
async def team_namespace_event(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
    name = str(body["metadata"]["name"])
    if event.get("type") == "DELETED":
        INDEX.forget_namespace(name)
        STATE.namespace_labels.pop(name, None)
        return
    found = dict(body["metadata"].get("labels") or {})
    INDEX.put_namespace(body)
    if STATE.namespace_labels.get(name) != found:
        first = name not in STATE.namespace_labels
        STATE.namespace_labels[name] = found
        if not first or event.get("type") is not None:  # kopf's initial listing changes nothing
            RUNTIME.reconciler.budget.policies_changed()


@kopf.on.event("", "v1", "resourcequotas", labels={labels.AGENTRUN: kopf.ABSENT})
async def team_quota_event(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
    if not _team(body["metadata"].get("namespace")):
        return
    obj = {"metadata": dict(body["metadata"]), "spec": dict(body.get("spec") or {}),
           "status": dict(body.get("status") or {})}
    if event.get("type") == "DELETED":
        RUNTIME.reconciler.budget.forget_quota(obj)
    else:
        RUNTIME.reconciler.budget.put_quota(obj)
