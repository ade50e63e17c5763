"""The one Event poster (stockade.events.EventPoster): the Event it posts, per-run order, tries again while the API
server cannot take a post (and only then), and a flush that waits for what is queued (the app's stop)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stockade import events
from stockade.events import EventPoster, event_body
from stockade.kube import KubeError

from .fakes import FakeKube, invalid, throttled

ROME = {"apiVersion": "stockade.io/v1alpha1", "kind": "AgentRun",
        "metadata": {"name": "rome", "namespace": "team", "uid": "uid-rome", "generation": 2}, "status": {}}
OSLO = {"apiVersion": "stockade.io/v1alpha1", "kind": "AgentRun",
        "metadata": {"name": "oslo", "namespace": "team", "uid": "uid-oslo"}}
AT = "2026-01-01T00:00:00Z"


class Sleeps:
    def __init__(self) -> None:
        self.slept: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)


def posted(kube: FakeKube) -> list[tuple[str, str, str]]:
    return [(e["involvedObject"]["name"], e["type"], e["reason"]) for e in kube.bodies("CREATE")]


def test_the_event_is_the_one_posted_before(monkeypatch: pytest.MonkeyPatch) -> None:
    """Type, reason, message (at most 1000 characters), the AgentRun it is about, and the reporting component and
    instance: what the reconciler's Events (kopf.event) and the responder's carried, in one shape."""
    monkeypatch.setenv("STOCKADE_PEERING_IDENTITY", "stockade-7d9f-abcde")
    assert event_body(ROME, "Warning", "GuardrailRestored", "x" * 1200, AT) == {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": "rome.", "namespace": "team"},
        "involvedObject": {"apiVersion": "stockade.io/v1alpha1", "kind": "AgentRun", "name": "rome",
                           "namespace": "team", "uid": "uid-rome"},
        "type": "Warning", "reason": "GuardrailRestored", "message": "x" * 1000,
        "source": {"component": "stockade"}, "reportingComponent": "stockade",
        "reportingInstance": "stockade-7d9f-abcde",
        "firstTimestamp": AT, "lastTimestamp": AT, "count": 1,
    }


def test_events_of_a_run_are_posted_in_order_and_stamped_when_emitted() -> None:
    kube = FakeKube()
    stamps = iter(["t1", "t2", "t3"])
    poster = EventPoster(kube, lambda: next(stamps))

    async def scenario() -> None:
        poster(ROME, "Normal", "PhasePending", "phase None -> Pending")
        poster(ROME, "Normal", "FenceComplete", "every guardrail")
        poster(ROME, "Normal", "PhaseRunning", "phase Pending -> Running")
        assert kube.bodies("CREATE") == [], "fire and forget: emitting posts nothing yet"
        assert await poster.flush()

    asyncio.run(scenario())
    assert posted(kube) == [("rome", "Normal", "PhasePending"), ("rome", "Normal", "FenceComplete"),
                            ("rome", "Normal", "PhaseRunning")]
    assert [e["firstTimestamp"] for e in kube.bodies("CREATE")] == ["t1", "t2", "t3"]
    assert poster.pending() == 0 and not poster._workers and not poster._queues


def test_a_post_the_api_server_cannot_take_is_tried_again_before_the_next_event_of_the_run() -> None:
    kube = FakeKube()
    kube.fail("CREATE", "*", KubeError(0, "ConnectionError", "refused"), KubeError(503, "ServiceUnavailable", "x"),
              throttled(retry_after=4.0))
    sleeps = Sleeps()
    poster = EventPoster(kube, lambda: AT, sleep=sleeps)

    async def scenario() -> None:
        poster(ROME, "Warning", "Violation", "first")
        poster(ROME, "Warning", "Quarantined", "second")
        await poster.flush()

    asyncio.run(scenario())
    assert posted(kube) == [("rome", "Warning", "Violation")] * 4 + [("rome", "Warning", "Quarantined")]
    assert sleeps.slept == [1.0, 1.0, 4.0], "kopf's backoffs, longer where the API server asks"
    assert [e["message"] for e in kube.bodies("CREATE")][-2:] == ["first", "second"]


def test_a_refusal_is_not_tried_again_and_the_queue_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    kube = FakeKube()
    kube.fail("CREATE", "*", invalid("Event is invalid"), KubeError(403, "Forbidden", "cannot create events"))
    sleeps = Sleeps()
    poster = EventPoster(kube, lambda: AT, sleep=sleeps)

    async def scenario() -> None:
        for reason in ("A", "B", "C"):
            poster(ROME, "Normal", reason, "m")
        await poster.flush()

    asyncio.run(scenario())
    assert [r for _, _, r in posted(kube)] == ["A", "B", "C"] and sleeps.slept == []
    assert len(kube.objects) == 1, "only C was created"
    assert sum("could not post event" in r.message for r in caplog.records) == 2


def test_an_event_into_a_namespace_being_deleted_is_dropped_quietly(caplog: pytest.LogCaptureFixture) -> None:
    kube = FakeKube()
    kube.fail("CREATE", "*", KubeError(403, "Forbidden", 'events "rome.1" is forbidden: unable to create new content '
                                       "in namespace team because it is being terminated", ("NamespaceTerminating",)))
    sleeps = Sleeps()
    poster = EventPoster(kube, lambda: AT, sleep=sleeps)
    asyncio.run(poster.post(ROME, "Normal", "Cleanup", "deleting run namespace team-rome"))
    assert len(kube.bodies("CREATE")) == 1 and sleeps.slept == []
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_it_gives_up_after_the_last_backoff() -> None:
    kube = FakeKube()
    kube.fail("CREATE", "*", *[KubeError(500, "InternalError", "etcd")] * 10)
    sleeps = Sleeps()
    poster = EventPoster(kube, lambda: AT, backoffs=(1.0, 2.0), sleep=sleeps)
    asyncio.run(poster.post(ROME, "Normal", "PhaseRunning", "m"))
    assert len(kube.bodies("CREATE")) == 3 and sleeps.slept == [1.0, 2.0]
    assert events.BACKOFFS == (1.0, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0)


def test_runs_do_not_wait_for_each_other() -> None:
    """One run's post waiting for the API server holds back that run's later Events, not another run's."""
    kube = FakeKube()
    kube.fail("CREATE", "*", KubeError(503, "ServiceUnavailable", "x"))
    async def scenario() -> None:
        gate = asyncio.Event()

        async def held(_: float) -> None:
            await gate.wait()

        poster = EventPoster(kube, lambda: AT, sleep=held)
        poster(ROME, "Normal", "First", "m")
        poster(ROME, "Normal", "Second", "m")
        poster(OSLO, "Normal", "Other", "m")
        for _ in range(5):
            await asyncio.sleep(0)
        assert posted(kube) == [("rome", "Normal", "First"), ("oslo", "Normal", "Other")]
        gate.set()
        await poster.flush()
        assert posted(kube)[2:] == [("rome", "Normal", "First"), ("rome", "Normal", "Second")]

    asyncio.run(scenario())


def test_flush_waits_for_events_emitted_while_it_waits_and_gives_up_at_its_deadline() -> None:
    kube = FakeKube()

    async def scenario() -> None:
        poster = EventPoster(kube, lambda: AT)
        poster(ROME, "Normal", "A", "m")

        original = kube.create

        async def create(obj: dict[str, Any]) -> dict[str, Any]:
            if obj["reason"] == "A":
                poster(OSLO, "Normal", "B", "emitted while flushing")
            return await original(obj)

        kube.create = create  # type: ignore[method-assign]
        assert await poster.flush(5.0)
        assert [r for _, _, r in posted(kube)] == ["A", "B"]

        stuck = asyncio.Event()

        async def never(_: float) -> None:
            await stuck.wait()

        slow = EventPoster(kube, lambda: AT, sleep=never)
        kube.fail("CREATE", "*", KubeError(503, "ServiceUnavailable", "x"))
        slow(ROME, "Normal", "C", "m")
        assert await slow.flush(0.05) is False
        assert not slow._workers, "what was left is cancelled"

    asyncio.run(scenario())
