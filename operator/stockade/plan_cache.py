"""Planning is pure and depends only on the generation (and the run namespace, resolved addresses and
freeze): the many reconciles a run gets from child events reuse the plan instead of redoing it. (The
parsed spec is the store's: :meth:`stockade.store.Store.spec_of`.) Pure."""

from __future__ import annotations

from collections.abc import Mapping

from stockade.api.models import AgentRunSpec
from stockade.plan import Plan, PlanSettings, RunRef, build
from stockade.store import RunKey


class PlanCache:
    def __init__(self, settings: PlanSettings) -> None:
        self.settings = settings
        self._plans: dict[RunKey, tuple[object, Plan]] = {}

    def plan(self, key: RunKey, generation: int, run: RunRef, spec: AgentRunSpec,
             resolved: Mapping[str, list[str]], *, frozen: bool) -> Plan:
        token = (generation, frozen, run, tuple(sorted((h, tuple(a)) for h, a in resolved.items())))
        cached = self._plans.get(key)
        if cached is not None and cached[0] == token:
            return cached[1]
        plan = build(run, spec, resolved, self.settings, frozen=frozen)
        self._plans[key] = (token, plan)
        return plan

    def forget(self, key: RunKey) -> None:
        self._plans.pop(key, None)
