"""The reconciler's budget gate over a real Store and policy index (no API server: the gate makes no calls):
admission recorded at once, queued runs re-triggered when capacity frees, Events, narrowing."""

from __future__ import annotations

from typing import Any

from stockade.api.models import AgentRunSpec
from stockade.budget_gate import BudgetGate
from stockade.grantpolicy.index import PolicyIndex
from stockade.store import RunKey, Store

TEAM = "team-a"


def body(name: str, second: int = 0, cpu: str = "1", **status: Any) -> dict[str, Any]:
    return {"apiVersion": "stockade.io/v1alpha1", "kind": "AgentRun",
            "metadata": {"name": name, "namespace": TEAM, "uid": f"uid-{name}", "generation": 1,
                         "resourceVersion": "1", "creationTimestamp": f"2026-01-01T00:00:{second:02d}Z"},
            "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x"}]}},
                     "grant": {"cpu": cpu, "memory": "1Gi", "duration": "1h"}},
            "status": status}


class World:
    def __init__(self, runs: int = 2, **ceilings: Any) -> None:
        self.store, self.index = Store(), PolicyIndex()
        self.index.put_namespace({"metadata": {"name": TEAM, "labels": {"team": "a"}}})
        self.index.put_policy({"metadata": {"name": "p", "resourceVersion": "1"},
                               "spec": {"namespaceSelector": {"matchLabels": {"team": "a"}}, "ceilings": ceilings,
                                        "budgets": {"perNamespace": {"runs": runs}}}})
        self.events: list[tuple[str, str, str]] = []
        self.triggered: list[RunKey] = []
        self.gate = BudgetGate(self.store, lambda b, kind, reason, msg: self.events.append(
            (b["metadata"]["name"], reason, msg)), self.triggered.append, lambda key, b: None, self.index)

    def add(self, name: str, second: int = 0, **kw: Any) -> dict[str, Any]:
        found = body(name, second, **kw)
        self.store.put_agentrun(found)
        return found

    def admit(self, run: dict[str, Any]) -> Any:
        return self.gate.admit((TEAM, run["metadata"]["name"]), run, AgentRunSpec.model_validate(run["spec"]))


def test_the_first_runs_are_admitted_the_rest_queued_and_started_when_one_ends() -> None:
    world = World(runs=2)
    runs = [world.add(f"r{i}", i) for i in range(4)]
    # Reconciles come in any order: r3 first is still queued behind r0..r1, which have not been reconciled yet.
    assert not world.admit(runs[3]).admitted
    assert world.admit(runs[1]).admitted and world.admit(runs[0]).admitted
    waiting = world.admit(runs[2])
    assert not waiting.admitted and waiting.decision.reason == "BudgetExhausted"
    assert ("r2", "Queued", "BudgetExhausted: " + waiting.decision.message) in world.events
    assert [e[1] for e in world.events if e[0] == "r0"] == ["Admitted"]
    assert world.gate.queued == [(TEAM, "r3"), (TEAM, "r2")]

    world.triggered.clear()
    world.gate.note_phase((TEAM, "r0"), "Succeeded")  # terminal: its share is free at once
    assert set(world.triggered) == {(TEAM, "r2"), (TEAM, "r3")}
    assert world.admit(runs[2]).admitted and not world.admit(runs[3]).admitted


def test_admission_is_recorded_at_once_so_two_reconciles_cannot_take_one_slot() -> None:
    world = World(runs=1)
    a, b = world.add("a", 0), world.add("b", 0)
    assert world.admit(a).admitted
    world.store.put_agentrun({**a, "metadata": {**a["metadata"], "creationTimestamp": "2026-01-01T00:00:09Z"}})
    assert not world.admit(b).admitted  # "a" holds its share though it now sorts later: sticky


def test_a_deleted_run_frees_its_share_once_its_pods_are_gone() -> None:
    world = World(runs=1)
    a, b = world.add("a", 0), world.add("b", 1)
    world.gate.owned = lambda key, _: "team-a-a" if key == (TEAM, "a") else None
    world.store.put({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "team-a-a",
                                                                     "resourceVersion": "1"},
                     "status": {"phase": "Running"}})
    assert world.admit(a).admitted and not world.admit(b).admitted
    deleting = {**a, "metadata": {**a["metadata"], "deletionTimestamp": "2026-01-01T00:01:00Z", "resourceVersion": "2"}}
    world.store.put_agentrun(deleting)
    world.gate.deleting((TEAM, "a"), deleting)
    assert not world.admit(b).admitted, "its pod still runs"
    world.store.remove({"kind": "Pod", "metadata": {"name": "a", "namespace": "team-a-a"}})
    world.triggered.clear()
    world.gate.deleting((TEAM, "a"), deleting)
    assert world.triggered == [(TEAM, "b")]
    assert world.admit(b).admitted


def test_a_raised_quota_retriggers_the_queued_runs() -> None:
    world = World(runs=5)
    quota = {"metadata": {"name": "q", "namespace": TEAM}, "spec": {"hard": {"requests.cpu": "1"}},
             "status": {"used": {"requests.cpu": "0"}}}
    world.gate.put_quota(quota)
    a, b = world.add("a", 0), world.add("b", 1)
    assert world.admit(a).admitted
    queued = world.admit(b)
    assert queued.decision.reason == "TeamQuotaExceeded"
    world.triggered.clear()
    world.gate.put_quota({**quota, "spec": {"hard": {"requests.cpu": "2"}}})
    assert world.triggered == [(TEAM, "b")]
    assert world.admit(b).admitted


def test_a_narrowed_policy_is_reported_and_stops_the_run_if_it_says_so() -> None:
    world = World(runs=5, cpu="4")
    run = world.add("wide", 0, cpu="2")
    admitted = world.admit(run)
    assert admitted.compliance is not None and admitted.compliance[0] and admitted.stop is None
    world.index.put_policy({"metadata": {"name": "p", "resourceVersion": "2"},
                            "spec": {"namespaceSelector": {"matchLabels": {"team": "a"}}, "ceilings": {"cpu": "1"},
                                     "budgets": {"perNamespace": {"runs": 5}}}})
    narrowed = world.admit(run)
    assert narrowed.admitted and narrowed.compliance is not None and not narrowed.compliance[0]
    assert narrowed.compliance[1] == "NarrowedBelowGrant" and "spec.grant.cpu" in narrowed.compliance[2]
    assert narrowed.stop is None and [e[1] for e in world.events].count("NarrowedBelowGrant") == 1
    world.admit(run)
    assert [e[1] for e in world.events].count("NarrowedBelowGrant") == 1, "one Warning, not one per reconcile"
    world.index.put_policy({"metadata": {"name": "p", "resourceVersion": "3"},
                            "spec": {"namespaceSelector": {"matchLabels": {"team": "a"}}, "ceilings": {"cpu": "1"},
                                     "onNarrowed": "Stop"}})
    stopped = world.admit(run)
    assert stopped.stop is not None and stopped.stop[0] == "NarrowedBelowGrant"
