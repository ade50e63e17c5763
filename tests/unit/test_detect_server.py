"""The signal endpoint over real HTTP (aiohttp's test server on loopback): auth, ownership, answers."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from stockade.detect import respond
from stockade.detect.config import DetectSettings
from stockade.detect.respond import Incident
from stockade.detect.server import SignalServer
from stockade.kube import object_path
from stockade.store import Store

from .fakes import FakeKube
from .test_detect_falco import SSH_NONSTD, event
from .test_detect_respond import RUN_NS, agentrun, pod

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Queue:
    """The responder's intake as the server sees it: submit, and the acknowledgement it awaits."""

    def __init__(self, outcome: str = respond.RECORDED) -> None:
        self.submitted: list[tuple[tuple[str, str], Incident]] = []
        self.outcome = outcome

    def submit(self, key: tuple[str, str], incidents: Any) -> asyncio.Future[str]:
        self.submitted += [(key, i) for i in incidents]
        ack: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        if self.outcome:
            ack.set_result(self.outcome)
        return ack


def gets(kube: FakeKube) -> list[tuple[str, str]]:
    """(namespace, name) of each pod the server looked up."""
    return [(path.split("/")[4], path.split("/")[6]) for verb, path in kube.calls if verb == "GET"]


def store_with_runs() -> Store:
    """One AgentRun (team/rome), its run namespace and its pod, as the watches would have stored them."""
    store = Store()
    store.put_agentrun({**agentrun(), "metadata": {**agentrun()["metadata"], "resourceVersion": "5"}})
    store.put({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": RUN_NS, "resourceVersion": "1",
                            "labels": {"stockade.io/agentrun": "rome", "stockade.io/agentrun-namespace": "team"}}})
    store.put({**pod("rome"), "metadata": {**pod("rome")["metadata"], "resourceVersion": "7"}})
    return store


def world() -> tuple[Store, Queue, FakeKube, SignalServer]:
    store = store_with_runs()
    queue, kube = Queue(), FakeKube()
    settings = DetectSettings(_env_file=None, signal_token=TOKEN)  # type: ignore[call-arg]
    server = SignalServer(settings, store, kube, queue, now=lambda: "t")  # type: ignore[arg-type]
    return store, queue, kube, server


def with_client(test: Callable[[TestClient[Any, Any], Queue, FakeKube], Awaitable[None]]) -> None:
    async def main() -> None:
        _, queue, kube, server = world()
        async with TestClient(TestServer(server.app())) as client:
            await test(client, queue, kube)

    asyncio.run(main())


def ssh_event(namespace: str = RUN_NS, pod_name: str = "rome") -> dict[str, Any]:
    payload = dict(SSH_NONSTD)
    payload["output_fields"] = {**SSH_NONSTD["output_fields"], "k8s.ns.name": namespace, "k8s.pod.name": pod_name}
    return payload


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                                     {"Authorization": f"Basic {TOKEN}"}])
def test_unauthenticated_callers_are_refused(headers: dict[str, str]) -> None:
    async def test(client: TestClient[Any, Any], queue: Queue, kube: FakeKube) -> None:
        for path, body in (("/falco", ssh_event()), ("/signal", {})):
            resp = await client.post(path, json=body, headers=headers)
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert queue.submitted == [] and gets(kube) == []

    with_client(test)


def test_falco_event_for_a_runs_pod_is_queued() -> None:
    async def test(client: TestClient[Any, Any], queue: Queue, _: FakeKube) -> None:
        resp = await client.post("/falco", json=ssh_event(), headers=AUTH)
        assert resp.status == 202
        body = await resp.json()
        assert body["agentRun"] == "team/rome"
        assert body["violation"]["kind"] == "SSHConnection"
        [(key, incident)] = queue.submitted
        assert key == ("team", "rome") and incident.violation.pod == "rome"
        assert incident.signal == ssh_event()

    with_client(test)


@pytest.mark.parametrize(("namespace", "pod_name", "status"), [
    ("kube-system", "coredns", 404),  # no AgentRun owns the namespace
    (RUN_NS, "ghost", 404),  # the run namespace, no such pod
])
def test_signals_for_pods_no_agentrun_owns_are_refused(namespace: str, pod_name: str, status: int) -> None:
    async def test(client: TestClient[Any, Any], queue: Queue, kube: FakeKube) -> None:
        resp = await client.post("/falco", json=ssh_event(namespace, pod_name), headers=AUTH)
        assert resp.status == status
        assert "nothing done" in (await resp.json())["error"]
        generic = {"detector": "tetragon", "namespace": namespace, "pod": pod_name, "kind": "PrivEsc",
                   "detail": "setuid"}
        resp = await client.post("/signal", json=generic, headers=AUTH)
        assert resp.status == status
        assert queue.submitted == []
        assert gets(kube) == ([(RUN_NS, "ghost")] * 2 if namespace == RUN_NS else [])

    with_client(test)


@pytest.mark.parametrize(("path", "body", "status"), [
    ("/falco", "not json", 400),
    ("/falco", {"output_fields": {}}, 400),
    ("/falco", event("Terminal shell in container") | {"output_fields": {"proc.name": "bash"}}, 422),
    ("/signal", {"detector": "x", "namespace": RUN_NS, "pod": "rome", "kind": "lowercase", "detail": "d"}, 400),
    ("/signal", {"detector": "x", "namespace": RUN_NS, "pod": "rome", "kind": "K1", "detail": "d", "extra": 1}, 400),
])
def test_malformed_signals_are_refused(path: str, body: Any, status: int) -> None:
    async def test(client: TestClient[Any, Any], queue: Queue, _: FakeKube) -> None:
        if isinstance(body, str):
            resp = await client.post(path, data=body, headers=AUTH)
        else:
            resp = await client.post(path, json=body, headers=AUTH)
        assert resp.status == status
        assert queue.submitted == []

    with_client(test)


def test_generic_signal_within_the_grant_is_answered_without_a_violation() -> None:
    async def test(client: TestClient[Any, Any], queue: Queue, _: FakeKube) -> None:
        granted = {"detector": "hubble", "namespace": RUN_NS, "pod": "rome", "kind": "Connection",
                   "detail": "flow", "destination": {"ip": "10.42.1.1", "port": 443, "protocol": "TCP"}}
        resp = await client.post("/signal", json=granted, headers=AUTH)
        assert resp.status == 200 and (await resp.json())["violation"] is None
        denied = {**granted, "destination": {"ip": "198.51.100.1", "port": 22, "protocol": "TCP"}}
        resp = await client.post("/signal", json=denied, headers=AUTH)
        assert resp.status == 202 and (await resp.json())["violation"]["kind"] == "UngrantedEgress"
        assert len(queue.submitted) == 1

    with_client(test)


def test_schema_and_health() -> None:
    async def test(client: TestClient[Any, Any], _: Queue, __: FakeKube) -> None:
        assert (await client.get("/healthz")).status == 200
        schema = await (await client.get("/signal/schema", headers=AUTH)).json()
        assert set(schema["required"]) == {"detector", "namespace", "pod", "kind", "detail"}
        assert (await client.get("/signal/schema")).status == 401

    with_client(test)


def test_endpoint_stays_off_without_a_way_to_authenticate() -> None:
    store, queue, kube, _ = world()
    settings = DetectSettings(_env_file=None)  # type: ignore[call-arg]
    server = SignalServer(settings, store, kube, queue, now=lambda: "t")  # type: ignore[arg-type]
    assert server.enabled() is not None and "TOKEN" in (server.enabled() or "")


def test_a_storm_of_concurrent_events_is_answered() -> None:
    async def test(client: TestClient[Any, Any], queue: Queue, _: FakeKube) -> None:
        answers = await asyncio.gather(*(client.post("/falco", json=ssh_event(), headers=AUTH) for _ in range(300)))
        statuses = [a.status for a in answers]
        assert set(statuses) <= {202, 429}
        assert statuses.count(202) == len(queue.submitted) > 0, "every 202 was handed to the responder"
        assert all(a.headers["Retry-After"] == "1" for a in answers if a.status == 429)

    with_client(test)


OTHER_NS = "team-naples"


def with_server(test: Callable[[TestClient[Any, Any], Queue, FakeKube], Awaitable[None]], queue: Queue,
                second_run: bool = False, **settings: Any) -> None:
    async def main() -> None:
        store = store_with_runs()
        if second_run:  # team/naples, its run namespace and its pod
            run = agentrun()
            run["metadata"] = {**run["metadata"], "name": "naples", "resourceVersion": "5"}
            run["status"] = {**run["status"], "runNamespace": OTHER_NS}
            store.put_agentrun(run)
            store.put({"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": OTHER_NS, "resourceVersion": "1",
                                    "labels": {"stockade.io/agentrun": "naples",
                                               "stockade.io/agentrun-namespace": "team"}}})
            store.put({**pod("naples"), "metadata": {**pod("naples")["metadata"], "namespace": OTHER_NS,
                                                      "resourceVersion": "7"}})
        kube = FakeKube()
        config = DetectSettings(_env_file=None, signal_token=TOKEN, **settings)  # type: ignore[call-arg]
        server = SignalServer(config, store, kube, queue, now=lambda: "t")  # type: ignore[arg-type]
        async with TestClient(TestServer(server.app())) as client:
            await test(client, queue, kube)

    asyncio.run(main())


GENERIC = {"detector": "tetragon", "namespace": RUN_NS, "pod": "rome", "kind": "PrivEsc", "detail": "setuid"}


@pytest.mark.parametrize(("namespace", "pod_name"), [
    (RUN_NS, "../../kube-system/pods/probe-victim"),
    (RUN_NS, "../default/pods/victim"),
    (RUN_NS, "rome/../../../kube-system/pods/x"),
    (RUN_NS, "%2e%2e%2fkube-system"),
    (RUN_NS, "Rome"),
    ("../kube-system", "coredns"),
    ("team-rome/pods/rome/../../../kube-system", "coredns"),
])
def test_names_that_are_paths_are_refused_before_any_lookup(namespace: str, pod_name: str) -> None:
    async def test(client: TestClient[Any, Any], queue: Queue, kube: FakeKube) -> None:
        resp = await client.post("/falco", json=ssh_event(namespace, pod_name), headers=AUTH)
        assert resp.status == 400, await resp.text()
        resp = await client.post("/signal", json={**GENERIC, "namespace": namespace, "pod": pod_name}, headers=AUTH)
        assert resp.status == 400, await resp.text()
        assert queue.submitted == [] and gets(kube) == [], "refused before anything was looked up"

    with_client(test)


def test_a_pod_the_store_shows_elsewhere_is_not_the_runs() -> None:
    """The API answers for a name in the run namespace with a pod of another namespace (a proxy, a bug):
    it is not taken for the run's pod."""
    async def main() -> None:
        store, queue = store_with_runs(), Queue()
        kube = FakeKube()
        elsewhere = {**pod("probe-victim"), "metadata": {**pod("probe-victim")["metadata"], "namespace": "kube-system"}}
        kube.put(object_path("v1", "Pod", RUN_NS, "probe-victim"), elsewhere)  # the answer for the run's name
        config = DetectSettings(_env_file=None, signal_token=TOKEN)  # type: ignore[call-arg]
        server = SignalServer(config, store, kube, queue, now=lambda: "t")  # type: ignore[arg-type]
        async with TestClient(TestServer(server.app())) as client:
            resp = await client.post("/signal", json={**GENERIC, "pod": "probe-victim"}, headers=AUTH)
            assert resp.status == 404
        assert queue.submitted == [] and gets(kube) == [(RUN_NS, "probe-victim")]

    asyncio.run(main())

    asyncio.run(main())


# Evidence nested 5,000 levels inside an otherwise valid signal (built as bytes: json.dumps would recurse).
DEEP_EVIDENCE = json.dumps(GENERIC).encode()[:-1] + b', "evidence": ' + b'{"x": ' * 5000 + b"{}" + b"}" * 5001


@pytest.mark.parametrize("body", [b"[" * 200_000, b'{"a":' * 5000 + b"1" + b"}" * 5000, DEEP_EVIDENCE],
                         ids=["200k-brackets", "5000-objects", "5000-evidence"])
def test_deeply_nested_json_is_refused_with_400(body: bytes) -> None:
    async def test(client: TestClient[Any, Any], queue: Queue, _: FakeKube) -> None:
        for path in ("/falco", "/signal"):
            resp = await client.post(path, data=body, headers={**AUTH, "Content-Type": "application/json"})
            assert resp.status == 400
            assert "nested deeper than 32 levels" in (await resp.json())["error"]
        assert queue.submitted == []

    with_client(test)


def test_nesting_within_the_limit_is_parsed() -> None:
    async def test(client: TestClient[Any, Any], queue: Queue, _: FakeKube) -> None:
        evidence = functools.reduce(lambda inner, _: {"x": inner}, range(30), {})
        resp = await client.post("/signal", json={**GENERIC, "evidence": evidence}, headers=AUTH)
        assert resp.status == 202
        assert len(queue.submitted) == 1

    with_client(test)


def test_an_oversized_body_is_refused_with_413() -> None:
    async def test(client: TestClient[Any, Any], queue: Queue, _: FakeKube) -> None:
        resp = await client.post("/signal", json={**GENERIC, "detail": "x" * 300_000}, headers=AUTH)
        assert resp.status == 413
        assert queue.submitted == []

    with_client(test)


@pytest.mark.parametrize(("outcome", "status", "retry"), [
    (respond.RECORDED, 202, False),
    (respond.FAILED, 503, True),
    (respond.DROPPED, 429, True),
    (respond.GONE, 404, False),
    (None, 503, True),  # never recorded within the timeout
])
def test_the_answer_follows_the_status_write(outcome: str | None, status: int, retry: bool) -> None:
    async def test(client: TestClient[Any, Any], queue: Queue, _: FakeKube) -> None:
        resp = await client.post("/falco", json=ssh_event(), headers=AUTH)
        assert resp.status == status
        assert ("Retry-After" in resp.headers) is retry
        if status == 202:
            assert (await resp.json())["result"] == "recorded"

    with_server(test, Queue(outcome or ""), signal_ack_timeout_seconds=0.2)


def test_requests_beyond_a_runs_waiting_bound_are_told_to_come_back_and_other_runs_are_not() -> None:
    """One noisy run fills its share of waiting requests; the next signal for it is refused at once, a
    signal for another run still gets through."""
    async def test(client: TestClient[Any, Any], queue: Queue, _: FakeKube) -> None:
        waiting = [asyncio.ensure_future(client.post("/falco", json=ssh_event(), headers=AUTH)) for _ in range(3)]
        for _ in range(500):  # until all three wait for a status write
            if len(queue.submitted) == 3:
                break
            await asyncio.sleep(0.01)
        refused = await client.post("/falco", json=ssh_event(), headers=AUTH)
        assert refused.status == 429 and refused.headers["Retry-After"] == "1"
        assert len(queue.submitted) == 3, "refused before it was handed on"
        other = await client.post("/falco", json=ssh_event(OTHER_NS, "naples"), headers=AUTH)
        assert other.status == 503, "another run's signal was handed on (its write never came here)"
        assert queue.submitted[-1][0] == ("team", "naples")
        assert {r.status for r in await asyncio.gather(*waiting)} == {503}
        again = await client.post("/falco", json=ssh_event(), headers=AUTH)
        assert again.status == 503, "slots are given back"

    with_server(test, Queue(""), signal_max_waiting_per_run=3, signal_ack_timeout_seconds=0.5, second_run=True)


def test_bodies_beyond_the_reading_bound_are_refused_before_they_are_read() -> None:
    class SlowBody:
        """A body that arrives slowly: its request holds a reading slot meanwhile."""

        def __init__(self, release: asyncio.Event) -> None:
            self.release = release

        async def __aiter__(self) -> Any:
            yield b'{"rule": "x", '
            await self.release.wait()
            yield b'"output_fields": {}}'

    async def test(client: TestClient[Any, Any], queue: Queue, _: FakeKube) -> None:
        release = asyncio.Event()
        slow = [asyncio.ensure_future(client.post("/falco", data=SlowBody(release).__aiter__(), headers=AUTH))
                for _ in range(2)]
        await asyncio.sleep(0.2)
        refused = await client.post("/falco", json=ssh_event(), headers=AUTH)
        assert refused.status == 429 and "Retry-After" in refused.headers
        release.set()
        assert {r.status for r in await asyncio.gather(*slow)} == {422}  # read in the end: it names no pod
        assert queue.submitted == []

    # Room for two bodies of unknown length (each counts as the largest allowed), not for a third.
    with_server(test, Queue(), signal_max_body_bytes=128 * 1024, signal_max_reading_bytes=256 * 1024)


def test_a_reading_budget_smaller_than_one_body_is_refused() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="MAX_READING_BYTES"):
        DetectSettings(_env_file=None, signal_max_body_bytes=1024 * 1024,  # type: ignore[call-arg]
                       signal_max_reading_bytes=512 * 1024)
