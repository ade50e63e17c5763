"""The operator's log as a security team reads it: JSON lines with the logger's name and the structured
fields of every violation, rung and release; FenceComplete once per generation; Events from `stockade`."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from stockade import audit, events, labels, logconfig
from stockade.api.reasons import FENCE_COMPLETE
from stockade.store import RunKey, Store

from .fakes import Events, FakeKube, merge
from .test_detect_respond import AR_PATH, RUN_NS, World, agentrun, pod, run, ssh

KEY = ("team", "rome")


@pytest.fixture
def json_log() -> Iterator[Any]:
    """The operator's JSON log as `stockade run --json` configures it; yields a reader of its lines."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogger("aiohttp.access").level,
             logging.getLogger("kopf.objects").level)
    logconfig.configure(json_logs=True, verbose=False)
    out = io.StringIO()
    for handler in root.handlers:
        if isinstance(handler, logging.StreamHandler) and handler not in saved[0]:
            handler.setStream(out)  # kopf's handler, writing here instead of stderr

    def lines() -> list[dict[str, Any]]:
        found = [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
        out.seek(0)
        out.truncate()
        return found

    yield lines
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    logging.getLogger("aiohttp.access").setLevel(saved[2])
    logging.getLogger("kopf.objects").setLevel(saved[3])


def test_json_lines_carry_the_logger_name_extra_fields_and_the_context(json_log: Any) -> None:
    log = logging.getLogger("stockade.test")
    with audit.context(agentrun_namespace="team", agentrun_name="rome", reconcile_id="r1"):
        log.warning("one", extra={"pod": "p", "reconcile_id": "given"})
        with audit.context(fresh=True, agentrun_name="other"):
            log.info("two")
    log.info("three")
    one, two, three = json_log()
    assert one["logger"] == "stockade.test" and one["message"] == "one" and one["severity"] == "warn"
    assert (one["agentrun_namespace"], one["agentrun_name"], one["pod"]) == ("team", "rome", "p")
    assert one["reconcile_id"] == "given", "a field given in extra= wins over the context's"
    assert two["agentrun_name"] == "other" and "agentrun_namespace" not in two, "fresh: only its own fields"
    assert "agentrun_name" not in three


def test_probe_access_lines_are_quiet(json_log: Any) -> None:
    logging.getLogger("aiohttp.access").info('127.0.0.1 "GET /healthz HTTP/1.1" 200')
    assert json_log() == []


def violation_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("action") in ("violation", "isolate", "freeze", "evict", "release")]


def test_a_violation_its_rungs_and_its_release_are_logged_with_fields(json_log: Any) -> None:
    world = World(agentrun(response=["isolate", "freeze", "evict"]), [pod("rome")])

    async def scenario() -> None:
        world.submit(ssh())
        await world.responder.idle()
        world.store.put_agentrun(world.kube.put(AR_PATH, merge(world.run, {"metadata": {"annotations": {
            labels.RELEASE_ANNOTATION: "alice"}}})))
        await world.responder.release(KEY, "alice")

    run(scenario())
    found = violation_lines(json_log())
    assert [line["action"] for line in found] == ["violation", "isolate", "freeze", "evict", "release"]
    qid = audit.quarantine_id("run-uid", "2025-06-01T12:00:00Z")
    for line in found:
        assert line["logger"] == "stockade.respond"
        assert (line["agentrun_namespace"], line["agentrun_name"], line["run_namespace"]) == ("team", "rome", RUN_NS)
        assert line["quarantine_id"] == qid, line
        assert line["severity"] in ("warn", "info")
    violation, isolate, freeze, evict, release = found
    assert (violation["pod"], violation["kind"], violation["source"], violation["violation_severity"]) == \
        ("rome", "SSHConnection", "runtime", "high")
    assert violation["severity"] == "warn"
    assert violation["response"] == "isolate+freeze+evict"
    assert isolate["incident_id"] == violation["incident_id"] == evict["incident_id"] == freeze["incident_id"]
    assert (isolate["pod"], isolate["kind"], isolate["source"]) == ("rome", "SSHConnection", "runtime")
    assert "pod" not in freeze, "freeze acts on the RoleBinding"
    assert (release["by"], release["pods"], release["kind"], release["severity"]) == \
        ("alice", ["rome"], "SSHConnection", "info")


def test_a_violation_decided_again_after_a_conflict_is_logged_once(json_log: Any) -> None:
    from .test_detect_respond import after_a_status_conflict

    world = after_a_status_conflict()
    assert [line["action"] for line in violation_lines(json_log())] == ["violation", "isolate"]
    assert world.status["quarantine"]["active"] is True


def test_a_repeat_on_a_quarantined_pod_is_logged_at_info(json_log: Any) -> None:
    world = World(agentrun(response=["isolate"]), [pod("rome")])

    async def scenario() -> None:
        world.submit(ssh())
        await world.responder.idle()
        world.submit(ssh(detail="again"))
        await world.responder.idle()

    run(scenario())
    lines = [line for line in json_log() if line.get("action") == "violation"]
    assert [(line["severity"], line["response"]) for line in lines] == [
        ("warn", "isolate"), ("info", "none (already quarantined)")]
    assert lines[0]["incident_id"] != lines[1]["incident_id"]
    assert lines[0]["quarantine_id"] == lines[1]["quarantine_id"], "the same quarantine"


class FakeReconciler:
    """What reconcile_pass needs: a store and an emit; each pass writes the status it is given."""

    def __init__(self) -> None:
        self.store = Store()
        self.emit = Events()
        self.next_status: dict[str, Any] = {}

    @audit.reconcile_pass
    async def reconcile(self, key: RunKey) -> None:
        body = self.store.agentruns[key]
        self.store.put_agentrun({**body, "metadata": {**body["metadata"], "resourceVersion": "x"},
                                 "status": self.next_status})


def body(generation: int, ready: bool | None, rv: str = "1", seen: int | None = None) -> dict[str, Any]:
    conditions = [] if ready is None else [{"type": "GuardrailsReady", "status": str(ready),
                                            "observedGeneration": seen or generation}]
    return {"apiVersion": "stockade.io/v1alpha1", "kind": "AgentRun",
            "metadata": {"namespace": "team", "name": "rome", "uid": "u1", "generation": generation,
                         "resourceVersion": rv},
            "status": {"runNamespace": RUN_NS, "conditions": conditions}}


def fence_events(reconciler: FakeReconciler) -> list[str]:
    return [message for _, reason, message in reconciler.emit.posted if reason == FENCE_COMPLETE]


def test_fence_complete_once_per_generation() -> None:
    reconciler = FakeReconciler()

    def step(generation: int, before: bool | None, after: bool, seen: int | None = None) -> None:
        reconciler.store.put_agentrun(body(generation, before, seen=seen))
        reconciler.next_status = body(generation, after)["status"]
        asyncio.run(reconciler.reconcile(KEY))

    step(1, None, False)
    assert fence_events(reconciler) == []
    step(1, False, True)
    assert fence_events(reconciler) == [f"every guardrail of generation 1 is in place in run namespace {RUN_NS}"]
    step(1, True, True)
    step(1, False, True)  # a guardrail removed and restored: the same generation, not announced again
    assert len(fence_events(reconciler)) == 1
    step(2, True, True, seen=1)  # the spec changed: its fence is complete too
    assert len(fence_events(reconciler)) == 2
    assert all(kind == "Normal" for kind, _, _ in reconciler.emit.posted)


def test_no_fence_complete_after_a_restart_for_a_fence_the_status_already_holds() -> None:
    reconciler = FakeReconciler()
    reconciler.store.put_agentrun(body(3, True))
    reconciler.next_status = body(3, True)["status"]
    asyncio.run(reconciler.reconcile(KEY))
    assert fence_events(reconciler) == []


def test_the_fence_complete_line_has_fields(json_log: Any) -> None:
    reconciler = FakeReconciler()
    reconciler.store.put_agentrun(body(1, False))
    reconciler.next_status = body(1, True)["status"]
    asyncio.run(reconciler.reconcile(KEY))
    [line] = [line for line in json_log() if line.get("action") == "fence-complete"]
    assert (line["logger"], line["agentrun_namespace"], line["agentrun_name"], line["run_namespace"]) == \
        ("stockade.reconcile", "team", "rome", RUN_NS)
    assert line["generation"] == 1 and len(line["reconcile_id"]) == 12


def test_events_name_the_stockade_component_and_the_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKADE_PEERING_IDENTITY", "stockade-7d9f-abcde")
    kube = FakeKube()
    asyncio.run(events.EventPoster(kube).post(body(1, True), "Normal", "FenceComplete", "m"))
    [event] = kube.bodies("CREATE")
    assert event["source"] == {"component": "stockade"}
    assert (event["reportingComponent"], event["reportingInstance"]) == ("stockade", "stockade-7d9f-abcde")
