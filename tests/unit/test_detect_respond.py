"""The quarantine ladder against an in-memory API server: order, dedup, audit, storms, release."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Coroutine
from typing import Any

import pytest
from prometheus_client import REGISTRY

from stockade import labels
from stockade.api.models import Violation
from stockade.detect import respond, rules
from stockade.detect.config import DetectSettings
from stockade.detect.respond import Incident, Responder
from stockade.kube import KubeError, object_path
from stockade.store import Store

from .fakes import Events, FakeKube, conflict, merge
from .fixtures import GPU_RUN

RUN_NS = "team-rome"
AR_PATH = object_path("stockade.io/v1alpha1", "AgentRun", "team", "rome")


def agentrun(**spec_changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(GPU_RUN)
    spec.update(spec_changes)
    return {"apiVersion": "stockade.io/v1alpha1", "kind": "AgentRun",
            "metadata": {"name": "rome", "namespace": "team", "uid": "run-uid", "generation": 1},
            "spec": spec, "status": {"phase": "Running", "runNamespace": RUN_NS}}


def pod(name: str, **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": RUN_NS, "uid": f"uid-{name}", "labels": {"app": "agent"},
                         **meta},
            "spec": {"containers": [{"name": "agent", "image": "a:1"}], "nodeName": "gpu-0"},
            "status": {"phase": "Running", "podIP": "10.244.1.5"}}


def scheduled(pod_name: str) -> dict[str, Any]:
    """The pod's Event the API server holds (evidence reads a pod's last Events)."""
    return {"apiVersion": "v1", "kind": "Event", "metadata": {"name": f"{pod_name}.1", "namespace": RUN_NS},
            "involvedObject": {"kind": "Pod", "name": pod_name}, "type": "Normal", "reason": "Scheduled",
            "message": "assigned to gpu-0", "lastTimestamp": "2025-06-01T11:00:00Z"}


RUN_NAMESPACE = {"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": RUN_NS, "resourceVersion": "1",
                              "labels": {labels.AGENTRUN: "rome", labels.AGENTRUN_NAMESPACE: "team"}}}


class World:
    def __init__(self, run: dict[str, Any], pods: list[dict[str, Any]], **settings: Any) -> None:
        self.kube = FakeKube()
        self.store = Store()
        self.events = Events()
        self.store.put_agentrun(self.kube.put(AR_PATH, run))
        self.store.put(RUN_NAMESPACE)  # the run namespace, labelled for this run, as the watch shows it
        for item in pods:
            self.store.put(self.kube.seed(item))
            self.kube.seed(scheduled(item["metadata"]["name"]))
        self.settings = DetectSettings(_env_file=None, **settings)  # type: ignore[call-arg]
        self.triggered: list[tuple[str, str]] = []
        self.responder = Responder(self.kube, self.store, self.events, settings=self.settings,  # type: ignore[arg-type]
                                   trigger=self.triggered.append, now=lambda: "2025-06-01T12:00:00Z")

    @property
    def run(self) -> dict[str, Any]:
        return self.store.agentruns[("team", "rome")]

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.run["status"])

    def submit(self, *incidents: Incident) -> None:
        self.responder.submit(("team", "rome"), incidents)


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


def ssh(pod_name: str | None = "rome", detail: str = "ssh to 198.51.100.7:22", severity: str = "high") -> Incident:
    found = rules.violation("SSHConnection", detail, "runtime", "2025-06-01T12:00:00Z", pod=pod_name,
                            severity=severity,  # type: ignore[arg-type]
                            evidence={"rule": "Disallowed SSH Connection"})
    return Incident(found, signal={"rule": "Disallowed SSH Connection", "output_fields": {"k8s.pod.name": pod_name}})


POD_PATH = object_path("v1", "Pod", RUN_NS, "rome")
POLICY_PATH = object_path("networking.k8s.io/v1", "NetworkPolicy", RUN_NS, labels.POLICY_QUARANTINE)
STATUS_PATH = AR_PATH + "/status"


def latency_count() -> float:
    return REGISTRY.get_sample_value("stockade_detection_to_isolation_seconds_count", {"source": "runtime"}) or 0.0


def test_isolate_and_evict_record_evidence_first() -> None:
    world = World(agentrun(), [pod("rome")])
    before = latency_count()

    async def scenario() -> None:
        world.submit(ssh())
        await world.responder.idle()

    run(scenario())
    assert world.kube.calls[0] == ("LIST", object_path("v1", "Event", RUN_NS)), "the pod's events, first"
    assert world.kube.verbs() == [
        ("PATCH", STATUS_PATH), ("APPLY", POLICY_PATH), ("PATCH", POD_PATH), ("DELETE", POD_PATH)]
    quarantine = world.status["quarantine"]
    assert quarantine == {"active": True, "reason": "SSHConnection", "message": "ssh to 198.51.100.7:22",
                          "since": "2025-06-01T12:00:00Z", "pods": ["rome"], "steps": ["isolate", "evict"]}
    [recorded] = world.status["violations"]
    assert recorded["action"] == "isolate+evict" and recorded["kind"] == "SSHConnection"
    evidence = recorded["evidence"]
    assert evidence["signal"]["rule"] == "Disallowed SSH Connection"
    assert evidence["pod"]["uid"] == "uid-rome" and evidence["pod"]["nodeName"] == "gpu-0"
    assert evidence["events"][0]["reason"] == "Scheduled"
    policy = world.kube.objects[POLICY_PATH]
    assert policy["spec"] == {"podSelector": {"matchLabels": {labels.QUARANTINED: "true"}},
                              "policyTypes": ["Ingress", "Egress"]}
    assert [e[1] for e in world.events.posted] == ["Violation", "Quarantined"]
    assert latency_count() == before + 1
    assert world.triggered == [("team", "rome")], "the reconciler follows (its watch echo is skipped)"


def test_isolation_may_run_beside_the_evidence_write_but_eviction_waits_for_it() -> None:
    world = World(agentrun(), [pod("rome")], evidence_before_isolation=False)

    async def scenario() -> None:
        world.submit(ssh())
        await world.responder.idle()

    run(scenario())
    calls = world.kube.verbs()
    assert sorted(calls[:3]) == sorted([("PATCH", STATUS_PATH), ("APPLY", POLICY_PATH), ("PATCH", POD_PATH)])
    assert calls[3:] == [("DELETE", POD_PATH)]
    assert world.status["quarantine"]["steps"] == ["isolate", "evict"]


def test_older_violations_keep_compact_evidence() -> None:
    world = World(agentrun(response=["isolate"]), [pod("rome")])

    async def scenario() -> None:
        for index in range(8):
            world.submit(ssh(detail=f"attempt {index}"))
            await world.responder.idle()

    run(scenario())
    kept = world.status["violations"]
    assert len(kept) == 8
    assert [bool(v["evidence"].get("compacted")) for v in kept] == [True] * 3 + [False] * 5
    assert kept[0]["evidence"]["pod"] == {"uid": "uid-rome"} and "signal" in kept[-1]["evidence"]


def test_audit_records_and_reports_without_acting() -> None:
    world = World(agentrun(enforcement="audit"), [pod("rome")])

    async def scenario() -> None:
        world.submit(ssh())
        await world.responder.idle()

    run(scenario())
    assert world.kube.verbs() == [("PATCH", STATUS_PATH)]
    assert "quarantine" not in world.status
    assert world.status["violations"][0]["action"] == "none (audit)"
    assert world.events.posted[0][:2] == ("Warning", "Violation")


def test_a_quarantined_pod_gets_its_violation_recorded_and_no_second_action() -> None:
    world = World(agentrun(response=["isolate"]), [pod("rome")])

    async def scenario() -> None:
        world.submit(ssh())
        await world.responder.idle()
        world.submit(ssh())
        await world.responder.idle()
        world.submit(ssh(detail="another thing"))
        await world.responder.idle()

    run(scenario())
    assert sum(1 for c in world.kube.calls if c == ("PATCH", POD_PATH)) == 1
    assert sum(1 for c in world.kube.calls if c == ("APPLY", POLICY_PATH)) == 1
    first, second = world.status["violations"]
    assert first["action"] == "isolate" and first["count"] == 2 and first["lastTime"]
    assert second["action"] == "none (already quarantined)" and second["detail"] == "another thing"


def test_a_storm_for_one_pod_is_one_status_write_and_one_isolation() -> None:
    world = World(agentrun(response=["isolate"]), [pod("rome")])

    async def scenario() -> None:
        for _ in range(300):
            world.submit(ssh())
        for index in range(300):
            world.submit(ssh(detail=f"ssh attempt {index}"))
        await world.responder.idle()

    run(scenario())
    assert world.kube.verbs().count(("PATCH", STATUS_PATH)) == 1
    assert world.kube.verbs().count(("PATCH", POD_PATH)) == 1
    kept = world.status["violations"]
    assert len(kept) == 20, "bounded"
    assert kept[-1]["detail"] == "ssh attempt 299"


def test_storm_beyond_the_pending_bound_is_dropped_and_counted() -> None:
    world = World(agentrun(response=["isolate"]), [pod("rome")], pending_per_run=10)

    async def scenario() -> None:
        for index in range(50):
            world.submit(ssh(detail=f"attempt {index}"))
        await world.responder.idle()

    run(scenario())
    assert world.kube.verbs().count(("PATCH", STATUS_PATH)) == 1
    assert len(world.status["violations"]) == 10


def test_freeze_revokes_rbac_once() -> None:
    world = World(agentrun(response=["freeze"]), [pod("rome")])

    async def scenario() -> None:
        world.submit(ssh())
        await world.responder.idle()
        world.submit(ssh(detail="again"))
        await world.responder.idle()

    run(scenario())
    binding = object_path("rbac.authorization.k8s.io/v1", "RoleBinding", RUN_NS, labels.ROLE_BINDING)
    assert world.kube.verbs().count(("DELETE", binding)) == 1
    assert world.status["quarantine"]["steps"] == ["freeze"]
    assert ("PATCH", POD_PATH) not in world.kube.calls


@pytest.mark.parametrize(("spec_changes", "incident", "action"), [
    ({}, Incident(rules.violation("ServiceNotGranted", "svc", "api", "t"), attributable=False),
     "none (not attributable to the agent)"),
    ({"response": []}, ssh(), "none (spec.response is empty)"),
    ({}, ssh(severity="low"), "none (below medium severity)"),
])
def test_recorded_without_action(spec_changes: dict[str, Any], incident: Incident, action: str) -> None:
    world = World(agentrun(**spec_changes), [pod("rome")], quarantine_min_severity="medium")

    async def scenario() -> None:
        world.submit(incident)
        await world.responder.idle()

    run(scenario())
    assert world.status["violations"][0]["action"] == action
    assert "quarantine" not in world.status
    assert world.kube.verbs() == [("PATCH", STATUS_PATH)]


def test_a_run_level_violation_puts_every_live_pod_on_the_ladder() -> None:
    world = World(agentrun(response=["isolate"]), [pod("rome"), pod("helper"),
                                                   pod("going", deletionTimestamp="2025-01-01T00:00:00Z")])

    async def scenario() -> None:
        world.submit(Incident(rules.violation("WorkloadNotGranted", "Deployment x", "api", "t"), attributable=True))
        await world.responder.idle()

    run(scenario())
    assert world.status["quarantine"]["pods"] == ["helper", "rome"]
    labelled = [c for c in world.kube.calls if c[0] == "PATCH" and "/pods/" in c[1]]
    assert len(labelled) == 2


def after_a_status_conflict() -> World:
    """An SSH violation answered while the first status write meets a conflict (decided again on a re-read)."""
    world = World(agentrun(response=["isolate"]), [pod("rome")])
    world.kube.fail("PATCH", STATUS_PATH, conflict())

    async def scenario() -> None:
        world.submit(ssh())
        await world.responder.idle()

    run(scenario())
    return world


def test_a_status_conflict_is_read_again_and_retried() -> None:
    world = after_a_status_conflict()
    assert ("GET", AR_PATH) in world.kube.calls
    assert world.status["quarantine"]["active"] is True
    assert world.kube.verbs().count(("PATCH", POD_PATH)) == 1


def test_a_failing_label_is_retried() -> None:
    world = World(agentrun(response=["isolate"]), [pod("rome")])
    world.kube.fail("PATCH", POD_PATH, *[KubeError(500, "InternalError", "etcd is sad")] * 2)

    async def scenario() -> None:
        world.submit(ssh())
        await world.responder.idle()

    run(scenario())
    assert world.kube.calls.count(("PATCH", POD_PATH)) == 3
    assert world.store.get("Pod", RUN_NS, "rome")["metadata"]["labels"][labels.QUARANTINED] == "true"


def test_forced_reisolation_relabels_without_evicting() -> None:
    world = World(agentrun(), [pod("rome")])

    async def scenario() -> None:
        world.submit(ssh())
        await world.responder.idle()
        path = object_path("v1", "Pod", RUN_NS, "back")
        world.store.put(world.kube.put(path, pod("back")))
        world.store.put_agentrun(world.kube.put(AR_PATH, merge(world.run, {"status": {"quarantine": {
            "pods": ["back", "rome"]}}})))
        world.kube.calls.clear()
        tamper = rules.violation("QuarantineTampered", "label gone", "api", "t", pod="back")
        world.submit(Incident(tamper, force=True))
        await world.responder.idle()

    run(scenario())
    back = object_path("v1", "Pod", RUN_NS, "back")
    assert ("PATCH", back) in world.kube.calls
    assert ("DELETE", back) not in world.kube.calls


def test_evicting_a_jobs_pod_suspends_the_job_first() -> None:
    owned = pod("rome-abcde", ownerReferences=[{"kind": "Job", "name": "rome"}])
    world = World(agentrun(response=["evict"], workload="Job"), [owned])
    job_path = object_path("batch/v1", "Job", RUN_NS, "rome")
    world.kube.put(job_path, {"metadata": {"name": "rome"}, "spec": {}})

    async def scenario() -> None:
        world.submit(ssh("rome-abcde"))
        await world.responder.idle()

    run(scenario())
    calls = [c for c in world.kube.verbs() if c[1] in (job_path, object_path("v1", "Pod", RUN_NS, "rome-abcde"))]
    assert calls == [("PATCH", job_path), ("DELETE", object_path("v1", "Pod", RUN_NS, "rome-abcde"))]
    assert world.kube.objects[job_path]["spec"]["suspend"] is True


def test_release_lifts_the_quarantine_and_records_who() -> None:
    world = World(agentrun(response=["isolate"]), [pod("rome")])

    async def scenario() -> None:
        world.submit(ssh())
        await world.responder.idle()
        world.store.put_agentrun(world.kube.put(AR_PATH, merge(world.run, {"metadata": {"annotations": {
            labels.RELEASE_ANNOTATION: "alice"}}})))
        world.kube.calls.clear()
        await world.responder.release(("team", "rome"), "alice")
        await world.responder.release(("team", "rome"), "alice")  # a second event for the same request

    run(scenario())
    quarantine = world.status["quarantine"]
    assert quarantine["active"] is False
    assert (quarantine["releasedBy"], quarantine["releasedAt"]) == ("alice", "2025-06-01T12:00:00Z")
    assert quarantine["pods"] == ["rome"], "the record of what was quarantined stays"
    assert world.kube.verbs() == [("PATCH", STATUS_PATH), ("PATCH", POD_PATH), ("DELETE", POLICY_PATH),
                                  ("PATCH", AR_PATH)]
    assert labels.QUARANTINED not in world.store.get("Pod", RUN_NS, "rome")["metadata"]["labels"]
    assert labels.RELEASE_ANNOTATION not in (world.run["metadata"].get("annotations") or {})
    assert world.events.posted[-1][1] == "Released" and "alice" in world.events.posted[-1][2]
    assert world.triggered[-1] == ("team", "rome")


def test_violations_for_a_deleted_run_are_dropped() -> None:
    world = World(agentrun(), [pod("rome")])
    world.store.forget_agentrun(("team", "rome"))

    async def scenario() -> None:
        world.submit(ssh())
        await world.responder.idle()

    run(scenario())
    assert world.kube.verbs() == []


def test_violation_model_round_trips_count() -> None:
    found = Violation(time="t", kind="K", detail="d", source="api", count=3, lastTime="u")
    assert found.model_dump(exclude_none=True)["count"] == 3


# Confinement -----------------------------------------------------------------------------------------
def test_a_pod_outside_the_run_namespace_is_never_acted_on() -> None:
    """A violation naming a pod the run namespace does not hold (another namespace's, or a path) changes
    nothing anywhere: no label, no delete, no policy; the violation is recorded as not acted on."""
    victim = {**pod("probe-victim"), "metadata": {**pod("probe-victim")["metadata"], "namespace": "kube-system"}}
    world = World(agentrun(), [pod("rome")])
    world.store.put(victim)
    incidents = [ssh("probe-victim"), ssh("../../kube-system/pods/probe-victim", detail="traversal"),
                 Incident(ssh("probe-victim", detail="verified elsewhere").violation, pod=victim)]

    async def scenario() -> None:
        for incident in incidents:
            world.submit(incident)
        await world.responder.idle()

    run(scenario())
    assert world.kube.verbs() == [("PATCH", STATUS_PATH)], "only the record"
    assert {v["action"] for v in world.status["violations"]} == {"none (the pod is not one of this run's)"}
    assert not (world.status.get("quarantine") or {}).get("active")


def test_a_pod_labelled_as_another_runs_is_not_this_runs() -> None:
    other = pod("rome", labels={labels.AGENTRUN: "other", labels.AGENTRUN_NAMESPACE: "team"})
    world = World(agentrun(), [other])

    async def scenario() -> None:
        world.submit(ssh("rome"))
        await world.responder.idle()

    run(scenario())
    assert world.kube.verbs() == [("PATCH", STATUS_PATH)]


def test_nothing_is_acted_on_where_the_run_namespace_is_not_confirmed_by_its_labels() -> None:
    world = World(agentrun(), [pod("rome")])
    world.store.remove(RUN_NAMESPACE)  # status says team-rome, but no namespace labelled for the run

    async def scenario() -> None:
        world.submit(ssh())
        world.submit(ssh(None, detail="run-level"))
        await world.responder.idle()

    run(scenario())
    assert world.kube.verbs() == [("PATCH", STATUS_PATH)]
    assert {v["action"] for v in world.status["violations"]} == {
        "none (the run namespace is not confirmed by its labels)"}


def test_the_last_guard_refuses_another_namespace() -> None:
    world = World(agentrun(), [pod("rome")])

    async def scenario() -> None:
        from stockade.detect.respond import ConfinementError
        with pytest.raises(ConfinementError):
            await world.responder._isolate(("team", "rome"), "kube-system", {"coredns": ssh("coredns")})
        with pytest.raises(ConfinementError):
            await world.responder._act(("team", "rome"), "default", ["evict"], {"x": ssh("x")}, forced=set(),
                                       freeze=False)

    run(scenario())
    assert world.kube.verbs() == []


# Acknowledgements ------------------------------------------------------------------------------------
def test_acks_resolve_only_after_the_status_write_and_a_storm_shares_it() -> None:
    world = World(agentrun(response=["isolate"]), [pod("rome")])
    seen_at_write: list[bool] = []
    write = world.kube.merge_patch

    async def watching(path: str, patch: dict[str, Any]) -> dict[str, Any]:
        if path == STATUS_PATH:
            seen_at_write.append(any(a.done() for a in acks))
        return await write(path, patch)

    world.kube.merge_patch = watching  # type: ignore[method-assign]
    acks: list[asyncio.Future[str]] = []

    async def scenario() -> None:
        acks.extend(world.responder.submit(("team", "rome"), [ssh()]) for _ in range(200))
        assert not any(a.done() for a in acks)
        await world.responder.idle()

    run(scenario())
    assert seen_at_write == [False], "one write, and no sender was answered before it"
    assert {a.result() for a in acks} == {respond.RECORDED}
    assert world.status["violations"][0]["count"] == 200


def test_acks_say_failed_dropped_and_gone() -> None:
    world = World(agentrun(response=["isolate"]), [pod("rome")], pending_per_run=2)

    async def failing(path: str, patch: dict[str, Any]) -> dict[str, Any]:
        raise KubeError(500, "InternalError", "etcd is sad")

    async def scenario() -> tuple[list[str], str]:
        world.kube.merge_patch = failing  # type: ignore[method-assign]
        acks = [world.responder.submit(("team", "rome"), [ssh(detail=f"attempt {i}")]) for i in range(3)]
        assert acks[2].done() and acks[2].result() == respond.DROPPED, "beyond the bound: answered at once"
        await world.responder.idle()
        world.store.forget_agentrun(("team", "rome"))
        gone = world.responder.submit(("team", "rome"), [ssh()])
        await world.responder.idle()
        return [a.result() for a in acks], gone.result()

    outcomes, gone = asyncio.run(scenario())
    assert outcomes == [respond.FAILED, respond.FAILED, respond.DROPPED]
    assert gone == respond.GONE
