"""The plan cache reuses a plan within a generation and keeps only the runs reconciled most recently."""

from __future__ import annotations

from stockade.api.models import AgentRunSpec
from stockade.plan import PlanSettings, RunRef
from stockade.plan_cache import PlanCache, digest

SPEC = AgentRunSpec.model_validate({"grant": {"cpu": "1", "memory": "1Gi"},
                                    "template": {"containers": [{"name": "agent", "image": "busybox:1.36"}]}})


def _run(i: int) -> RunRef:
    return RunRef("team", f"r{i}", f"uid-{i}", f"team-r{i}-abc")


def test_the_same_generation_reuses_the_plan_and_a_new_one_replans() -> None:
    cache = PlanCache(PlanSettings())
    first = cache.plan(("team", "r0"), 1, _run(0), SPEC, {}, frozen=False)
    assert cache.plan(("team", "r0"), 1, _run(0), SPEC, {}, frozen=False) is first
    assert cache.plan(("team", "r0"), 2, _run(0), SPEC, {}, frozen=False) is not first


def test_only_the_most_recent_runs_are_kept() -> None:
    cache = PlanCache(PlanSettings(), kept=2)
    plans = [cache.plan(("team", f"r{i}"), 1, _run(i), SPEC, {}, frozen=False) for i in range(3)]
    assert cache.plan(("team", "r2"), 1, _run(2), SPEC, {}, frozen=False) is plans[2]
    assert cache.plan(("team", "r1"), 1, _run(1), SPEC, {}, frozen=False) is plans[1]
    rebuilt = cache.plan(("team", "r0"), 1, _run(0), SPEC, {}, frozen=False)
    assert rebuilt is not plans[0] and rebuilt.guardrails == plans[0].guardrails  # evicted, built again alike


def test_a_digest_tells_equal_objects_from_changed_ones() -> None:
    plan = PlanCache(PlanSettings()).plan(("team", "r0"), 1, _run(0), SPEC, {}, frozen=False)
    quota = next(o for o in plan.guardrails if o["kind"] == "ResourceQuota")
    assert digest(quota) == digest({**quota})
    assert digest(quota) != digest({**quota, "spec": {"hard": {"pods": "100"}}})
