"""The API as a signal: pods on every reconcile, other objects from their events, quarantine drift."""

from __future__ import annotations

import asyncio
from typing import Any

from stockade import labels
from stockade.api.models import AgentRunSpec
from stockade.detect.watch import ApiDetector
from stockade.kube import object_path

from .fakes import merge
from .test_detect_respond import AR_PATH, RUN_NS, World, agentrun, pod


def detector(world: World) -> ApiDetector:
    return ApiDetector(world.store, world.responder, lambda: "2025-06-01T12:00:00Z")


def reconcile(world: World, found: ApiDetector) -> None:
    async def scenario() -> None:
        body = world.run
        await found.on_reconcile(("team", "rome"), body, AgentRunSpec.model_validate(body["spec"]))
        await world.responder.idle()

    asyncio.run(scenario())


def greedy(name: str) -> dict[str, Any]:
    found = pod(name)
    found["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "64"}}
    return found


def test_a_pod_beyond_the_grant_is_reported_once() -> None:
    world = World(agentrun(response=["isolate"]), [greedy("rome")])
    found = detector(world)
    reconcile(world, found)
    reconcile(world, found)
    [recorded] = world.status["violations"]
    assert (recorded["kind"], recorded["pod"], recorded["action"]) == ("PodExceedsGrant", "rome", "isolate")
    assert world.kube.verbs().count(("PATCH", object_path("v1", "Pod", RUN_NS, "rome"))) == 1


def test_quarantine_drift_is_isolated_again() -> None:
    world = World(agentrun(response=["isolate"]), [pod("rome"), pod("newcomer")])
    quarantine = {"active": True, "reason": "SSHConnection", "pods": ["rome"], "steps": ["isolate"]}
    world.store.put_agentrun(world.kube.put(AR_PATH, merge(world.run, {"status": {"quarantine": quarantine}})))
    reconcile(world, detector(world))
    kinds = {(v["kind"], v["pod"], v["action"]) for v in world.status["violations"]}
    assert kinds == {("QuarantineTampered", "rome", "isolate"), ("PodStartedWhileQuarantined", "newcomer", "isolate")}
    for name in ("rome", "newcomer"):
        assert world.store.get("Pod", RUN_NS, name)["metadata"]["labels"][labels.QUARANTINED] == "true"


def test_the_release_annotation_is_acted_on_by_the_reconcile_too() -> None:
    world = World(agentrun(response=["isolate"]), [pod("rome")])
    quarantine = {"active": True, "reason": "SSHConnection", "pods": ["rome"], "steps": ["isolate"]}
    body = merge(world.run, {"status": {"quarantine": quarantine},
                             "metadata": {"annotations": {labels.RELEASE_ANNOTATION: "bob"}}})
    world.store.put_agentrun(world.kube.put(AR_PATH, body))
    reconcile(world, detector(world))
    assert world.status["quarantine"]["active"] is False and world.status["quarantine"]["releasedBy"] == "bob"


def test_objects_the_agent_cannot_have_made_are_recorded_without_action() -> None:
    world = World(agentrun(response=["isolate"]), [pod("rome")])
    world.store.put({"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": RUN_NS, "resourceVersion": "1",
                                  "labels": {"stockade.io/agentrun": "rome",
                                             "stockade.io/agentrun-namespace": "team"}}})
    found = detector(world)
    service = {"kind": "Service", "apiVersion": "v1",
               "metadata": {"name": "svc", "namespace": RUN_NS, "uid": "u1", "resourceVersion": "9"},
               "spec": {"type": "NodePort", "ports": [{"port": 22}]}}

    async def scenario() -> None:
        found.on_object(service, "ADDED")
        found.on_object(service, "MODIFIED")  # the same state: reported once
        found.on_object({**service, "metadata": {**service["metadata"], "namespace": "elsewhere"}}, "ADDED")
        await world.responder.idle()

    asyncio.run(scenario())
    [recorded] = world.status["violations"]
    assert (recorded["kind"], recorded["severity"], recorded["action"]) == (
        "ServiceNotGranted", "high", "none (not attributable to the agent)")
