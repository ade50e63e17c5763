"""Budgets: team ResourceQuotas into the budget gate, and re-evaluation of queued runs when a policy, a
namespace's labels or a team quota changes; the AgentPolicy status writer. (Registered with kopf by
:mod:`stockade.handlers`; built by :mod:`stockade.app`.)

The policy index itself is fed by the admission side (stockade.admission.grant_policy); the handlers here
put the same objects into it too (idempotent: it keeps one parse per resourceVersion), so whichever
handler kopf runs first, the gate decides on the new state.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from stockade.budget_gate import BudgetGate
from stockade.grantpolicy.index import INDEX
from stockade.kube import Kube
from stockade.policy_status import PolicyStatusWriter
from stockade.store import Store

log = logging.getLogger("stockade.budget")


class BudgetWatch:
    def __init__(self, kube: Kube, store: Store, gate: BudgetGate) -> None:
        self.kube = kube
        self.store = store
        self.gate = gate
        self.writer = PolicyStatusWriter(kube, gate)
        gate.listeners.append(self.writer.schedule)
        self.generations: dict[str, int | None] = {}  # policy -> generation last acted on
        self.namespace_labels: dict[str, dict[str, str]] = {}  # team namespace -> labels last acted on

    def team(self, namespace: str | None) -> bool:
        return bool(namespace) and not self.store.is_run_namespace(namespace or "")

    async def start(self) -> None:
        """Team quotas in the gate before the first reconcile (the store and policy index are primed before)."""
        for quota in await self.kube.list_objects("v1", "ResourceQuota"):
            if self.team((quota.get("metadata") or {}).get("namespace")):
                self.gate.put_quota(quota)
        log.info("budgets: %d team ResourceQuotas", len(self.gate.quotas))

    def policy_event(self, event: Mapping[str, Any], body: Mapping[str, Any]) -> None:
        name = str(body["metadata"]["name"])
        if event.get("type") == "DELETED":
            INDEX.forget_policy(name)
            self.generations.pop(name, None)
            self.writer.forget(name)
            self.gate.policies_changed()
            return
        INDEX.put_policy(body)
        self.writer.observe(body)
        generation = body["metadata"].get("generation")
        if self.generations.get(name, -1) != generation:  # a status write (ours) changes no generation
            self.generations[name] = generation
            self.gate.policies_changed()

    def team_namespace_event(self, event: Mapping[str, Any], body: Mapping[str, Any]) -> None:
        name = str(body["metadata"]["name"])
        if event.get("type") == "DELETED":
            INDEX.forget_namespace(name)
            self.namespace_labels.pop(name, None)
            return
        found = dict(body["metadata"].get("labels") or {})
        INDEX.put_namespace(body)
        if self.namespace_labels.get(name) != found:
            first = name not in self.namespace_labels
            self.namespace_labels[name] = found
            if not first or event.get("type") is not None:  # kopf's initial listing changes nothing
                self.gate.policies_changed()

    def team_quota_event(self, event: Mapping[str, Any], body: Mapping[str, Any]) -> None:
        if not self.team(body["metadata"].get("namespace")):
            return
        obj = {"metadata": dict(body["metadata"]), "spec": dict(body.get("spec") or {}),
               "status": dict(body.get("status") or {})}
        if event.get("type") == "DELETED":
            self.gate.forget_quota(obj)
        else:
            self.gate.put_quota(obj)
