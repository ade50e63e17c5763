"""Planning is pure and depends only on the generation (and the run namespace, resolved addresses and
freeze): the many reconciles a run gets from child events reuse the plan instead of redoing it. (The
parsed spec is the store's: :meth:`stockade.store.Store.spec_of`.) Pure.

The cache holds the runs reconciled most recently only: a plan is about 14 KB of dicts and takes about
0.2 ms to build, so keeping one for each of thousands of idle runs cost more memory than it saved time.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from stockade.api.models import AgentRunSpec
from stockade.plan import Plan, PlanSettings, RunRef, build
from stockade.store import RunKey

PLANS_KEPT = 256  # runs; more than reconcile at once in every benchmark (100, 500 at once reuse within a pass)


def digest(obj: Mapping[str, Any]) -> int:
    """A stand-in for comparing a desired object with one planned before, within this process."""
    return hash(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str))


class PlanCache:
    def __init__(self, settings: PlanSettings, kept: int = PLANS_KEPT) -> None:
        self.settings = settings
        self.kept = kept
        self._plans: OrderedDict[RunKey, tuple[object, Plan]] = OrderedDict()

    def plan(self, key: RunKey, generation: int, run: RunRef, spec: AgentRunSpec,
             resolved: Mapping[str, list[str]], *, frozen: bool) -> Plan:
        token = (generation, frozen, run, tuple(sorted((h, tuple(a)) for h, a in resolved.items())))
        cached = self._plans.get(key)
        if cached is not None and cached[0] == token:
            self._plans.move_to_end(key)
            return cached[1]
        plan = build(run, spec, resolved, self.settings, frozen=frozen)
        self._plans[key] = (token, plan)
        self._plans.move_to_end(key)
        while len(self._plans) > self.kept:
            self._plans.popitem(last=False)
        return plan

    def forget(self, key: RunKey) -> None:
        self._plans.pop(key, None)
