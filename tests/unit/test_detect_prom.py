"""The Prometheus poller against a fake Prometheus HTTP API on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from stockade.detect import prom
from stockade.detect.config import DetectSettings

from .test_detect_respond import RUN_NS
from .test_detect_server import Queue, store_with_runs


def series(metric: dict[str, str], value: float) -> dict[str, Any]:
    return {"metric": metric, "value": [1717243200.0, str(value)]}


DCGM = {"__name__": "DCGM_FI_DEV_GPU_UTIL", "gpu": "0", "UUID": "GPU-1", "modelName": "NVIDIA H100"}


def fake_prometheus(answers: dict[str, list[dict[str, Any]]], seen: list[str]) -> web.Application:
    async def query(request: web.Request) -> web.Response:
        promql = request.query["query"]
        seen.append(promql)
        if promql not in answers:
            return web.json_response({"status": "error", "errorType": "bad_data", "error": "parse error"}, status=400)
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": answers[promql]}})

    app = web.Application()
    app.router.add_get("/api/v1/query", query)
    return app


def poll(answers: dict[str, list[dict[str, Any]]], **settings: Any) -> tuple[Queue, list[str]]:
    queue: Queue = Queue()
    seen: list[str] = []

    async def main() -> None:
        async with TestServer(fake_prometheus(answers, seen)) as server:
            config = DetectSettings(_env_file=None, prometheus_url=str(server.make_url("/")),  # type: ignore[call-arg]
                                    **settings)
            store = store_with_runs()
            poller = prom.Poller(config, store, queue, lambda: "t")  # type: ignore[arg-type]
            await poller.poll_once()
            await poller.poll_once()  # the same finding again: not reported twice
            await poller.stop()

    asyncio.run(main())
    return queue, seen


def test_gpu_use_in_a_pod_without_a_gpu_request_is_reported_once() -> None:
    answers = {
        prom.GPU_UTIL: [series({**DCGM, "namespace": RUN_NS, "pod": "rome"}, 87),
                        series({**DCGM, "namespace": "other-team", "pod": "x"}, 99)],  # not a run namespace
        prom.GPU_MEMORY: [series({**DCGM, "namespace": RUN_NS, "pod": "rome"}, 4096)],
    }
    queue, seen = poll(answers)
    [(key, incident)] = queue.submitted
    assert key == ("team", "rome")
    assert incident.violation.kind == "GPUNotGranted" and incident.violation.source == "metrics"
    assert "87% util, 4096 MiB" in incident.violation.detail
    assert incident.signal["queries"] == [prom.GPU_UTIL, prom.GPU_MEMORY]
    assert seen.count(prom.GPU_UTIL) == 2


def test_exported_labels_and_unknown_pods() -> None:
    answers = {
        prom.GPU_UTIL: [series({**DCGM, "exported_namespace": RUN_NS, "exported_pod": "rome",
                                "namespace": "gpu-operator", "pod": "dcgm-exporter-x"}, 50),
                        series({**DCGM, "namespace": RUN_NS, "pod": "ghost"}, 50)],
        prom.GPU_MEMORY: [],
    }
    queue, _ = poll(answers)
    assert [(i.violation.kind, i.violation.pod) for _, i in queue.submitted] == [("GPUNotGranted", "rome")]


def test_network_rate_is_checked_when_a_limit_is_set() -> None:
    rate = prom.TX_RATE.format(window="30s")
    answers = {prom.GPU_UTIL: [], prom.GPU_MEMORY: [],
               rate: [series({"namespace": RUN_NS, "pod": "rome"}, 5_000_000)]}
    queue, seen = poll(answers, network_bytes_rate_limit=1_000_000, network_rate_window="30s")
    assert rate in seen
    [(_, incident)] = queue.submitted
    assert incident.violation.kind == "EgressRateExceeded"


def test_no_rate_query_without_a_limit() -> None:
    _, seen = poll({prom.GPU_UTIL: [], prom.GPU_MEMORY: []})
    assert all("container_network" not in q for q in seen)
