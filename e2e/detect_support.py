"""Real peers for the detection tests: Prometheus (Debian's package) scraping an exporter the tests
control, and a client for the operator's signal endpoint. Everything listens on loopback only."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from .conftest import answers_ok, free_port, wait_for

DCGM_LABELS = ["gpu", "UUID", "device", "modelName", "Hostname", "namespace", "pod", "container"]


class DcgmExporter:
    """Serves what NVIDIA's dcgm-exporter serves (the two metrics Stockade reads), values set by the test."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.util = Gauge("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", DCGM_LABELS, registry=self.registry)
        self.memory = Gauge("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", DCGM_LABELS,
                            registry=self.registry)
        self.port = free_port()
        self.server, self.thread = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)

    def set_gpu(self, namespace: str, pod: str, gpu: int, util: float, memory_mib: float) -> None:
        labels = self._labels(namespace, pod, gpu)
        self.util.labels(**labels).set(util)
        self.memory.labels(**labels).set(memory_mib)

    def clear(self, namespace: str, pod: str, gpu: int) -> None:
        labels = self._labels(namespace, pod, gpu)
        for gauge in (self.util, self.memory):
            with contextlib.suppress(KeyError):
                gauge.remove(*[labels[n] for n in DCGM_LABELS])

    @staticmethod
    def _labels(namespace: str, pod: str, gpu: int) -> dict[str, str]:
        return {"gpu": str(gpu), "UUID": f"GPU-{gpu:08d}-e2e", "device": f"nvidia{gpu}", "modelName": "NVIDIA H100",
                "Hostname": "gpu-0", "namespace": namespace, "pod": pod, "container": "agent"}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Prometheus:
    """Debian's prometheus on 127.0.0.1, scraping the exporter every second, its TSDB in a temp dir."""

    def __init__(self, workdir: Path, exporter: DcgmExporter) -> None:
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(json.dumps({  # YAML is a superset of JSON
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "dcgm", "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}]}],
        }))
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_for(self._ready, timeout=30, what="Prometheus to be ready")
        wait_for(lambda: self.query("up{job='dcgm'} == 1"), timeout=30, what="Prometheus to scrape the exporter")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}")
        return answers_ok(f"{self.url}/-/ready")

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = json.load(resp)
        return list(body["data"]["result"])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class Signals:
    """A client for the operator's signal endpoint."""

    def __init__(self, port: int, token: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.token = token

    def post(self, path: str, body: Any, token: str | None = "default") -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/json"}
        bearer = self.token if token == "default" else token
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        request = urllib.request.Request(f"{self.base}{path}", data=json.dumps(body).encode(), headers=headers,
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as err:
            return err.code, json.load(err)

    def healthy(self) -> bool:
        return answers_ok(f"{self.base}/healthz", timeout=2)


def falco_event(rule: str, namespace: str, pod: str, priority: str = "Notice", **fields: Any) -> dict[str, Any]:
    """A Falco event as Falcosidekick's webhook output posts it."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
    output_fields = {"k8s.ns.name": namespace, "k8s.pod.name": pod, "container.id": "0123456789ab",
                     "evt.time": time.time_ns(), **fields}
    return {"uuid": f"e2e-{time.time_ns()}", "rule": rule, "priority": priority, "time": now, "source": "syscall",
            "hostname": "gpu-0", "tags": ["maturity_stable", "container"],
            "output": f"{now}: {priority} {rule} | " + " ".join(f"{k}={v}" for k, v in fields.items()),
            "output_fields": output_fields}
