"""The store parses each AgentRun's spec once per generation, for every reader (reconciler, admission,
detection, the budget gate), and says why an invalid one does not parse."""

from __future__ import annotations

import copy
from typing import Any

from stockade.api.models import AgentRunSpec
from stockade.store import SpecError, Store
from tests.unit.fixtures import GPU_RUN

KEY = ("team", "rome")


def run(generation: int, spec: dict[str, Any], *, uid: str = "u1", rv: str | None = None) -> dict[str, Any]:
    return {"apiVersion": "stockade.io/v1alpha1", "kind": "AgentRun", "spec": spec,
            "metadata": {"namespace": KEY[0], "name": KEY[1], "uid": uid, "generation": generation,
                         "resourceVersion": rv or str(generation)}}


def test_one_parse_per_generation() -> None:
    store = Store()
    store.put_agentrun(run(1, GPU_RUN))
    first = store.spec_of(KEY)
    assert isinstance(first, AgentRunSpec) and first.grant.cpu == "8"
    # A status write or a label: a new resourceVersion, the same generation; the parse is kept.
    store.put_agentrun(run(1, GPU_RUN, rv="7"))
    assert store.spec_of(KEY) is first, "parsed again within one generation"
    assert store.valid_spec(KEY) is first
    edited = copy.deepcopy(GPU_RUN)
    edited["grant"]["cpu"] = "2"
    store.put_agentrun(run(2, edited, rv="8"))
    second = store.spec_of(KEY)
    assert isinstance(second, AgentRunSpec) and second.grant.cpu == "2", "a new generation is parsed anew"


def test_a_recreated_run_is_parsed_anew() -> None:
    store = Store()
    store.put_agentrun(run(1, GPU_RUN))
    first = store.spec_of(KEY)
    store.forget_agentrun(KEY)
    assert store.spec_of(KEY) is None and store.valid_spec(KEY) is None
    edited = copy.deepcopy(GPU_RUN)
    edited["grant"]["pods"] = 1
    store.put_agentrun(run(1, edited, uid="u2", rv="20"))  # same name and generation, another object
    again = store.spec_of(KEY)
    assert isinstance(again, AgentRunSpec) and again is not first and again.grant.pods == 1


def test_an_invalid_spec_says_where_and_grants_nothing() -> None:
    store = Store()
    broken = copy.deepcopy(GPU_RUN)
    broken["grant"]["pods"] = "many"
    store.put_agentrun(run(1, broken))
    found = store.spec_of(KEY)
    assert isinstance(found, SpecError)
    assert found.problems.startswith("spec.grant.pods: "), found.problems
    assert store.spec_of(KEY) is found, "the error is kept for the generation too"
    assert store.valid_spec(KEY) is None
