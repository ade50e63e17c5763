"""stockade_fences_confirmed: the AgentRuns whose fence this process has seen complete (bench/restart.py
times a restart by it): 0 in a fresh process, 1 once a pass found the run's fence in place, 0 again when
the run is gone."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY

from .test_reconcile import KEY, World, agentrun


def confirmed() -> float | None:
    return REGISTRY.get_sample_value("stockade_fences_confirmed")


def test_counts_the_runs_whose_fence_a_pass_of_this_process_found_complete() -> None:
    world = World(agentrun(finalizer=False), ())
    assert confirmed() == 0
    asyncio.run(world.reconciler.trigger(KEY))
    assert confirmed() == 1
    world.restart()  # a new process remembers nothing: the run is confirmed again by its first pass
    assert confirmed() == 0
    asyncio.run(world.reconciler.trigger(KEY))
    assert confirmed() == 1
    world.store.forget_agentrun(KEY)
    asyncio.run(world.reconciler.deleted(KEY, "uid-rome"))
    assert confirmed() == 0
