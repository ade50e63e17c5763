"""The signal endpoint over real HTTP (aiohttp's test server on loopback): auth, ownership, answers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from stockade.detect.config import DetectSettings
from stockade.detect.server import SignalServer
from stockade.detect.watch import ApiDetector
from stockade.respond import Incident
from stockade.store import Store

from .test_detect_falco import SSH_NONSTD, event
from .test_detect_respond import RUN_NS, agentrun, pod

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Queue:
    def __init__(self) -> None:
        self.submitted: list[tuple[tuple[str, str], Incident]] = []

    def submit(self, key: tuple[str, str], incidents: Any) -> None:
        self.submitted += [(key, i) for i in incidents]


class NoKube:
    def __init__(self) -> None:
        self.gets: list[tuple[str, str]] = []

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self.gets.append((namespace, name))


def store_with_runs() -> Store:
    """One AgentRun (team/rome), its run namespace and its pod, as the watches would have stored them."""
    store = Store()
    store.put_agentrun({**agentrun(), "metadata": {**agentrun()["metadata"], "resourceVersion": "5"}})
    store.put({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": RUN_NS, "resourceVersion": "1",
                            "labels": {"stockade.io/agentrun": "rome", "stockade.io/agentrun-namespace": "team"}}})
    store.put({**pod("rome"), "metadata": {**pod("rome")["metadata"], "resourceVersion": "7"}})
    return store


def world() -> tuple[Store, Queue, NoKube, SignalServer]:
    store = store_with_runs()
    queue, kube = Queue(), NoKube()
    settings = DetectSettings(_env_file=None, signal_token=TOKEN)  # type: ignore[call-arg]
    detector = ApiDetector(store, queue, lambda: "t")  # type: ignore[arg-type]
    server = SignalServer(settings, store, kube, queue, spec_of=detector.spec, now=lambda: "t")  # type: ignore[arg-type]
    return store, queue, kube, server


def with_client(test: Callable[[TestClient[Any, Any], Queue, NoKube], Awaitable[None]]) -> None:
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
    async def test(client: TestClient[Any, Any], queue: Queue, kube: NoKube) -> None:
        for path, body in (("/falco", ssh_event()), ("/signal", {})):
            resp = await client.post(path, json=body, headers=headers)
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert queue.submitted == [] and kube.gets == []

    with_client(test)


def test_falco_event_for_a_runs_pod_is_queued() -> None:
    async def test(client: TestClient[Any, Any], queue: Queue, _: NoKube) -> None:
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
    async def test(client: TestClient[Any, Any], queue: Queue, kube: NoKube) -> None:
        resp = await client.post("/falco", json=ssh_event(namespace, pod_name), headers=AUTH)
        assert resp.status == status
        assert "nothing done" in (await resp.json())["error"]
        generic = {"detector": "tetragon", "namespace": namespace, "pod": pod_name, "kind": "PrivEsc",
                   "detail": "setuid"}
        resp = await client.post("/signal", json=generic, headers=AUTH)
        assert resp.status == status
        assert queue.submitted == []
        assert kube.gets == ([(RUN_NS, "ghost")] * 2 if namespace == RUN_NS else [])

    with_client(test)


@pytest.mark.parametrize(("path", "body", "status"), [
    ("/falco", "not json", 400),
    ("/falco", {"output_fields": {}}, 400),
    ("/falco", event("Terminal shell in container") | {"output_fields": {"proc.name": "bash"}}, 422),
    ("/signal", {"detector": "x", "namespace": RUN_NS, "pod": "rome", "kind": "lowercase", "detail": "d"}, 400),
    ("/signal", {"detector": "x", "namespace": RUN_NS, "pod": "rome", "kind": "K1", "detail": "d", "extra": 1}, 400),
])
def test_malformed_signals_are_refused(path: str, body: Any, status: int) -> None:
    async def test(client: TestClient[Any, Any], queue: Queue, _: NoKube) -> None:
        if isinstance(body, str):
            resp = await client.post(path, data=body, headers=AUTH)
        else:
            resp = await client.post(path, json=body, headers=AUTH)
        assert resp.status == status
        assert queue.submitted == []

    with_client(test)


def test_generic_signal_within_the_grant_is_answered_without_a_violation() -> None:
    async def test(client: TestClient[Any, Any], queue: Queue, _: NoKube) -> None:
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
    async def test(client: TestClient[Any, Any], _: Queue, __: NoKube) -> None:
        assert (await client.get("/healthz")).status == 200
        schema = await (await client.get("/signal/schema", headers=AUTH)).json()
        assert set(schema["required"]) == {"detector", "namespace", "pod", "kind", "detail"}
        assert (await client.get("/signal/schema")).status == 401

    with_client(test)


def test_endpoint_stays_off_without_a_way_to_authenticate() -> None:
    store, queue, kube, _ = world()
    settings = DetectSettings(_env_file=None)  # type: ignore[call-arg]
    server = SignalServer(settings, store, kube, queue, spec_of=lambda k, b: None, now=lambda: "t")  # type: ignore[arg-type]
    assert server.enabled() is not None and "TOKEN" in (server.enabled() or "")


def test_a_storm_of_concurrent_events_is_answered() -> None:
    async def test(client: TestClient[Any, Any], queue: Queue, _: NoKube) -> None:
        answers = await asyncio.gather(*(client.post("/falco", json=ssh_event(), headers=AUTH) for _ in range(300)))
        assert {a.status for a in answers} == {202}
        assert len(queue.submitted) == 300

    with_client(test)
