"""status.violations has one owner (stockade.violations): the same folding and the same caps whoever writes,
and both writers (admission's recorder, detection's responder) keep what the other wrote meanwhile."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from stockade.admission import record
from stockade.admission.policy import Decision, Request
from stockade.admission.record import Recorder
from stockade.grantcheck import Finding
from stockade.kube import STATUS_ATTEMPTS, object_path
from stockade.store import Store
from stockade.violations import merge

from .fakes import Events, FakeKube, conflict
from .test_detect_respond import AR_PATH, STATUS_PATH, World, agentrun, pod, run, ssh

KEY = ("team", "rome")


def detected(detail: str, action: str = "isolate", **extra: Any) -> dict[str, Any]:
    return {"time": "t1", "kind": "SSHConnection", "pod": "rome", "detail": detail, "source": "runtime",
            "action": action, "evidence": {"rule": "ssh", "signal": {"big": "x" * 100}, "pod": {"uid": "u"}}, **extra}


def refused(detail: str, time: str = "t1") -> dict[str, Any]:
    return {"time": time, "kind": "KindNotGranted", "detail": detail, "source": "admission", "action": "denied",
            "evidence": {"operation": "CREATE", "resource": "roles"}}


def test_a_detected_repeat_folds_only_when_nothing_was_done() -> None:
    old = [detected("ssh", "isolate")]
    merged = merge(old, [detected("ssh", "none (already quarantined)", count=3, time="t2"),
                         detected("ssh", "isolate", time="t3")], keep=20)
    assert [(v["action"], v.get("count"), v.get("lastTime")) for v in merged] == [
        ("isolate", 4, "t2"), ("isolate", None, None)], "a repeat acted on is an entry of its own"


def test_the_newest_keep_entries_stay_and_only_the_newest_keep_bulky_evidence() -> None:
    merged = merge([], [detected(f"ssh {i}") for i in range(30)], keep=8)
    assert [v["detail"] for v in merged] == [f"ssh {i}" for i in range(22, 30)]
    assert [bool(v["evidence"].get("compacted")) for v in merged] == [True] * 3 + [False] * 5
    assert merged[0]["evidence"] == {"rule": "ssh", "pod": {"uid": "u"}, "compacted": True}


def test_admission_writes_compact_older_evidence_too_and_leave_their_own_as_it_is() -> None:
    """Either writer carries the whole list: the caps hold whoever writes last."""
    merged = merge([detected(f"ssh {i}") for i in range(5)], [refused("a")], keep=20)
    assert merged[0]["evidence"].get("compacted") is True and "signal" in merged[1]["evidence"]
    assert merged[-1]["evidence"] == refused("a")["evidence"], "nothing bulky in an admission record"


def request() -> Request:
    return Request("CREATE", "rbac.authorization.k8s.io", "roles", "Role", "team-rome", "r", {}, None, "alice", ())


def decision() -> Decision:
    finding = Finding("KindNotGranted", "kind", "a Role is not granted", "")
    return Decision(False, "Stockade refused CREATE of Role r", findings=(finding,), action="denied")


def recorder_world(monkeypatch: pytest.MonkeyPatch) -> tuple[FakeKube, Store, Events]:
    monkeypatch.setattr(record, "BATCH_SECONDS", 0.0)
    kube, store = FakeKube(), Store()
    store.put_agentrun(kube.seed(agentrun()))
    return kube, store, Events()


def test_admission_keeps_what_detection_wrote_meanwhile(monkeypatch: pytest.MonkeyPatch) -> None:
    kube, store, events = recorder_world(monkeypatch)
    # The responder's write landed; the watch has not shown it yet (the store lags the API server).
    kube.put(AR_PATH, {**kube.objects[AR_PATH], "status": {"violations": [detected("ssh")]}})

    async def main() -> None:
        recorder = Recorder(kube, store, keep=20, post=events)
        recorder.record(KEY, request(), decision())
        recorder.record(KEY, request(), decision())  # the same refusal again: one write, folded
        await asyncio.sleep(0.05)

    asyncio.run(main())
    kept = kube.objects[AR_PATH]["status"]["violations"]
    assert [(v["source"], v.get("count")) for v in kept] == [("runtime", None), ("admission", 2)]
    assert kube.verbs(skip_get=False) == [("PATCH", STATUS_PATH), ("GET", AR_PATH), ("PATCH", STATUS_PATH)]
    assert store.agentruns[KEY]["status"]["violations"] == kept, "the store holds what was written"
    assert events.posted == [("Warning", "AdmissionRefused", "Stockade refused CREATE of Role r")], \
        "one Event per window, through the poster it was given"


def test_admission_gives_up_after_repeated_conflicts_with_its_warning(monkeypatch: pytest.MonkeyPatch,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    kube, store, events = recorder_world(monkeypatch)
    kube.fail("PATCH", STATUS_PATH, *[conflict()] * STATUS_ATTEMPTS)

    async def main() -> None:
        recorder = Recorder(kube, store, keep=20, post=events)
        recorder.record(KEY, request(), decision())
        await asyncio.sleep(0.5)

    with caplog.at_level(logging.WARNING, logger="stockade.admission"):
        asyncio.run(main())
    assert "gave up recording admission violations on AgentRun team/rome after repeated conflicts" in caplog.text
    assert kube.verbs().count(("PATCH", STATUS_PATH)) == STATUS_ATTEMPTS


def test_detection_keeps_what_admission_wrote_meanwhile() -> None:
    world = World(agentrun(response=["isolate"]), [pod("rome")])
    live = world.kube.objects[AR_PATH]
    world.kube.put(AR_PATH, {**live, "status": {**live["status"], "violations": [refused("a")]}})  # not yet seen

    async def scenario() -> None:
        world.submit(ssh())
        await world.responder.idle()

    run(scenario())
    kept = world.kube.objects[AR_PATH]["status"]["violations"]
    assert [(v["source"], v["action"]) for v in kept] == [("admission", "denied"), ("runtime", "isolate")]
    assert world.kube.objects[AR_PATH]["status"]["quarantine"]["pods"] == ["rome"]
    assert world.kube.verbs().count(("PATCH", object_path("v1", "Pod", "team-rome", "rome"))) == 1, \
        "decided again, acted once"
