"""AgentPolicy status: use of each budget (``kubectl get agentpolicies``: RUNS 2/5, GPUS 3/8), written by the
operator, coalesced, and not at all when nothing changed; the same figures as metrics.

What counts is what the budget gate has admitted (held runs), so the status shows what is in use, not
what a run still waiting might take.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Mapping
from typing import Any

from stockade import metrics
from stockade.api.models import GROUP, VERSION
from stockade.api.policy import POLICY_PLURAL, AgentPolicyStatus, PolicyCondition, PolicyUsage
from stockade.api.reasons import EVALUABLE, INVALID
from stockade.budget_gate import BudgetGate
from stockade.conditions import condition_status, merge_conditions, status_changed
from stockade.grantpolicy.budget import usage_status
from stockade.grantpolicy.ceilings import Bound
from stockade.grantpolicy.index import INDEX, PolicyIndex
from stockade.kube import KubeError, write_status
from stockade.kubeapi import KubeAPI

log = logging.getLogger("stockade.budget")
FLUSH_DELAY = 0.2  # seconds: a burst of admissions and releases becomes one write per policy


def desired_status(bound: Bound, uses: Mapping[str, Any], *, generation: int | None, selected: int,
                   old: Mapping[str, Any], now: str) -> dict[str, Any]:
    """The status the operator writes, as a merge patch (AgentPolicyStatus; a field set to None is written as
    null)."""
    ok = bound.spec is not None
    ready = PolicyCondition(
        type="Ready", status=condition_status(ok), reason=EVALUABLE if ok else INVALID,
        message="the policy bounds the AgentRuns of the namespaces it selects" if ok
        else f"the policy cannot be evaluated and admits nothing: {bound.error}",
        observedGeneration=generation)
    status = AgentPolicyStatus(observedGeneration=generation, selectedNamespaces=selected,
                               usage=PolicyUsage.model_validate(usage_status(uses)),
                               conditions=merge_conditions(old.get("conditions") or [], [ready], now))
    return status.model_dump(exclude_unset=True)


class PolicyStatusWriter:
    def __init__(self, kube: KubeAPI, gate: BudgetGate, index: PolicyIndex = INDEX) -> None:
        self.kube = kube
        self.gate = gate
        self.index = index
        self._seen: dict[str, tuple[int | None, dict[str, Any]]] = {}  # name -> (generation, status) last seen
        self._pending: asyncio.TimerHandle | None = None
        self._metered: dict[str, set[str]] = {}  # policy -> resources with gauges, removed with the policy

    def observe(self, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        self._seen[str(meta.get("name"))] = (meta.get("generation"), dict(body.get("status") or {}))
        self.schedule()

    def forget(self, name: str) -> None:
        self._seen.pop(name, None)
        for resource in self._metered.pop(name, set()):
            for gauge in (metrics.BUDGET_USED, metrics.BUDGET_LIMIT):
                with contextlib.suppress(KeyError):  # never set for this resource
                    gauge.remove(name, resource)

    def schedule(self) -> None:
        if self._pending is None:
            loop = asyncio.get_running_loop()
            self._pending = loop.call_later(FLUSH_DELAY, lambda: loop.create_task(self.flush()))

    async def flush(self) -> None:
        self._pending = None
        outcome = self.gate.decide(held_only=True)
        teams = [(ns, self.index.namespace_labels(ns) or {}) for ns in self.index.namespaces()
                 if not self.index.is_run_namespace(ns)]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        for bound in self.index.policies():
            uses = outcome.usage.get(bound.name, {})
            self._metered.setdefault(bound.name, set()).update(uses)
            for resource, use in uses.items():
                metrics.BUDGET_USED.labels(policy=bound.name, resource=resource).set(float(use.used))
                if use.limit is not None:
                    metrics.BUDGET_LIMIT.labels(policy=bound.name, resource=resource).set(float(use.limit))
            seen = self._seen.get(bound.name)
            if seen is None:
                continue  # not seen by this watch yet: its event brings it here
            generation, old = seen
            selected = sum(1 for _, found in teams if bound.selects(found))
            new = desired_status(bound, uses, generation=generation, selected=selected, old=old, now=now)
            if status_changed(old, new):
                await self._write(bound.name, new)

    async def _write(self, name: str, status: dict[str, Any]) -> None:
        # The operator owns this status whole: no precondition; a failed write is tried at the next flush.
        path = f"/apis/{GROUP}/{VERSION}/{POLICY_PLURAL}/{name}"
        try:
            result = await write_status(self.kube, path, lambda _: status, current={}, precondition=False, attempts=1)
        except KubeError as err:
            log.warning("could not write the status of AgentPolicy %s: %s", name, err)
            self.schedule()
            return
        if result.written is not None:
            meta = result.written.get("metadata") or {}
            self._seen[name] = (meta.get("generation"), dict(result.written.get("status") or {}))

