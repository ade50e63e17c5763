"""Real peers for the detection tests: Prometheus (Debian's package) scraping an exporter the tests
control, and a client for the operator's signal endpoint. Everything listens on loopback only."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from .conftest import Operator, answers_ok, apply, free_port, kubectl, operator_instead, wait_for

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
    """Debian's prometheus on 127.0.0.1, scraping every second, its TSDB in a temp dir: the DCGM exporter, or
    the scrape configs and rule groups given (e2e/test_monitoring.py: the operator, with the chart's alerts)."""

    def __init__(self, workdir: Path, exporter: DcgmExporter | None = None, *,
                 scrape: list[dict[str, Any]] | None = None, rules: dict[str, Any] | None = None) -> None:
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        self.port = free_port()
        config = workdir / "prometheus.yml"
        jobs = list(scrape or [])
        if exporter is not None:
            jobs.append({"job_name": "dcgm", "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}]})
        settings: dict[str, Any] = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                                    "scrape_configs": jobs}
        if rules is not None:
            (workdir / "rules.yml").write_text(json.dumps(rules))
            settings["rule_files"] = [str(workdir / "rules.yml")]
        config.write_text(json.dumps(settings))  # YAML is a superset of JSON
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_for(self._ready, timeout=30, what="Prometheus to be ready")
        for name in [job["job_name"] for job in jobs]:
            wait_for(lambda name=name: self.query(f"up{{job='{name}'}} == 1"), timeout=30,
                     what=f"Prometheus to scrape {name}")

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending or firing), as Prometheus's API lists them."""
        with urllib.request.urlopen(f"{self.url}/api/v1/alerts", timeout=5) as resp:
            return list(json.load(resp)["data"]["alerts"])

    def check(self, promql: str) -> dict[str, Any]:
        """The whole answer to an instant query (status, and errorType/error when it is not valid)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return dict(json.load(resp))
        except urllib.error.HTTPError as err:
            return dict(json.load(err))

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


SIGNAL_SERVICE = "stockade-signal.stockade-system.svc"  # the name the chart's certificate is for


def chart_signal_ca(kubectl: Callable[..., str] | None = None) -> bytes | None:
    """The CA of the chart's signal certificate (Secret stockade-signal-tls), None when the chart serves
    plain HTTP (signal.tls.enabled=false: no such Secret)."""
    from .conftest import kubectl as cluster_kubectl

    out = (kubectl or cluster_kubectl)("get", "secret", "stockade-signal-tls", "--namespace", "stockade-system",
                                       "--ignore-not-found", "-o", "json")
    return base64.b64decode(json.loads(out)["data"]["ca.crt"]) if out.strip() else None


class Signals:
    """A client for the operator's signal endpoint on loopback. By default it speaks as the chart deploys
    the endpoint: HTTPS, verifying the server against the chart's CA under the Service's name (the
    operator here serves the chart's certificate); plain HTTP when the chart has TLS turned off."""

    def __init__(self, port: int, token: str, ca: bytes | str | None = "chart",
                 server_name: str = SIGNAL_SERVICE) -> None:
        self.port = port
        self.token = token
        self.server_name = server_name
        self.ca = chart_signal_ca() if ca == "chart" else ca
        self.context = ssl.create_default_context(cadata=self.ca.decode()) if isinstance(self.ca, bytes) else None
        self.base = f"{'https' if self.context else 'http'}://127.0.0.1:{port}"

    def connection(self, timeout: float = 10) -> http.client.HTTPConnection:
        if self.context is None:
            return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        # Connect to loopback, verify the certificate for the Service's name (SNI and hostname check).
        conn = http.client.HTTPSConnection(self.server_name, self.port, timeout=timeout, context=self.context)
        conn._create_connection = (  # type: ignore[attr-defined]
            lambda address, *args, **kwargs: socket.create_connection(("127.0.0.1", address[1]), *args, **kwargs))
        return conn

    def request(self, method: str, path: str, body: bytes | None = None, token: str | None = "default",
                timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
        headers = {"Content-Type": "application/json"}
        bearer = self.token if token == "default" else token
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        conn = self.connection(timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def post(self, path: str, body: Any, token: str | None = "default") -> tuple[int, dict[str, Any]]:
        status, _, raw = self.request("POST", path, json.dumps(body).encode(), token)
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, {"raw": raw.decode(errors="replace")}

    def healthy(self) -> bool:
        try:
            return self.request("GET", "/healthz", timeout=2)[0] == 200
        except (OSError, http.client.HTTPException):
            return False


def falco_event(rule: str, namespace: str, pod: str, priority: str = "Notice", **fields: Any) -> dict[str, Any]:
    """A Falco event as Falcosidekick's webhook output posts it."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
    output_fields = {"k8s.ns.name": namespace, "k8s.pod.name": pod, "container.id": "0123456789ab",
                     "evt.time": time.time_ns(), **fields}
    return {"uuid": f"e2e-{time.time_ns()}", "rule": rule, "priority": priority, "time": now, "source": "syscall",
            "hostname": "gpu-0", "tags": ["maturity_stable", "container"],
            "output": f"{now}: {priority} {rule} | " + " ".join(f"{k}={v}" for k, v in fields.items()),
            "output_fields": output_fields}


@contextlib.contextmanager
def signal_operator(operator: Operator, home: Path, token: str, **env: str) -> Iterator[tuple[Operator, Signals]]:
    """The session operator replaced (operator_instead) by one serving signals on loopback with ``token``."""
    port = free_port()
    with operator_instead(operator, home, STOCKADE_SIGNAL_HOST="127.0.0.1", STOCKADE_SIGNAL_PORT=str(port),
                          STOCKADE_SIGNAL_TOKEN=token, **env) as mine:
        client = Signals(port, token)
        wait_for(client.healthy, timeout=30, what="the signal endpoint")
        yield mine, client


@contextlib.contextmanager
def releaser_bound(user: str, binding: str) -> Iterator[str]:
    """``user`` bound to the chart's releaser ClusterRole: the only way to hold the verb 'release'."""
    apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": binding},
           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "stockade-releaser"},
           "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]})
    try:
        yield user
    finally:
        kubectl("delete", "clusterrolebinding", binding, "--ignore-not-found")
