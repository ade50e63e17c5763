"""Signal -> isolation latency: Stockade's path beside its floor, on the local cluster.

    KUBECONFIG=... .venv/bin/python bench/signal_latency.py [--signals 200] [--runs 1]
    KUBECONFIG=... .venv/bin/python bench/signal_latency.py --signals 200 --runs 500

* stockade: POST a Falco event (SSH to an address the grant lacks) to the operator's signal endpoint;
  done when the watches show the pod labelled ``stockade.io/quarantined=true`` AND the
  ``stockade-quarantine`` NetworkPolicy present. Between signals the quarantine is released (the
  ``stockade.io/release`` annotation) and the bench waits until label, policy and annotation are gone
  and the operator has settled, so every signal finds an unquarantined pod.
* floor: the same label merge patch and policy create, issued at once by the bench itself against a
  plain pod in a plain namespace (no operator involved), timed on the same kind of watches.

``--runs N`` makes N AgentRuns present (the target is one of them) before measuring. The operator is
started here, otherwise idle. The operator's own histogram (stockade_detection_to_isolation_seconds,
from arrival to both calls answered) is shown alongside. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT / "bench"))

from kubernetes import client, watch  # noqa: E402

import official_client  # noqa: E402
from stats import percentiles  # noqa: E402
from stockade.detect.respond import quarantine_policy  # noqa: E402
from stockade.kube import Kube, KubeError, object_path  # noqa: E402

SPEC: dict[str, Any] = {
    "template": {"spec": {"containers": [{"name": "agent", "image": "registry.example/agent:1",
                                          "resources": {"limits": {"cpu": "100m", "memory": "256Mi"}}}]}},
    "grant": {"cpu": "1", "memory": "1Gi", "pods": 1, "egress": [{"cidr": "10.42.0.0/16", "ports": [443]}]},
    "response": ["isolate"],
}
QUARANTINED = "stockade.io/quarantined"
POLICY = "stockade-quarantine"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Isolation:
    """Two watches (the pod, the quarantine policy); records when 'isolated' last changed."""

    def __init__(self, api: client.ApiClient, namespace: str, pod: str) -> None:
        self.namespace, self.pod = namespace, pod
        self.labelled = self.policy = False
        self.changed_at = 0.0
        self.cond = threading.Condition()
        self._stop = threading.Event()
        core, net = client.CoreV1Api(api), client.NetworkingV1Api(api)
        self._threads = [
            threading.Thread(target=self._watch, daemon=True, args=(
                core.list_namespaced_pod, f"metadata.name={pod}",
                lambda kind, obj: kind != "DELETED" and (obj.metadata.labels or {}).get(QUARANTINED) == "true",
                "labelled")),
            threading.Thread(target=self._watch, daemon=True, args=(
                net.list_namespaced_network_policy, f"metadata.name={POLICY}",
                lambda kind, obj: kind != "DELETED", "policy")),
        ]
        for thread in self._threads:
            thread.start()

    def _watch(self, func: Callable[..., Any], selector: str, state: Callable[[str, Any], bool], attr: str) -> None:
        while not self._stop.is_set():
            try:
                for event in watch.Watch().stream(func, self.namespace, field_selector=selector, timeout_seconds=60):
                    value = state(event["type"], event["object"])
                    with self.cond:
                        if getattr(self, attr) != value:
                            setattr(self, attr, value)
                            self.changed_at = time.perf_counter()
                            self.cond.notify_all()
                    if self._stop.is_set():
                        return
            except Exception:  # a dropped watch is re-opened
                time.sleep(0.05)

    def wait(self, isolated: bool, timeout: float = 30) -> float:
        with self.cond:
            ok = self.cond.wait_for(lambda: (self.labelled and self.policy) if isolated
                                    else not (self.labelled or self.policy), timeout)
            if not ok:
                raise TimeoutError(f"{self.namespace}/{self.pod}: isolated={isolated} not reached in {timeout}s "
                                   f"(labelled={self.labelled}, policy={self.policy})")
            return self.changed_at

    def stop(self) -> None:
        self._stop.set()


def falco_ssh(namespace: str, pod: str) -> bytes:
    fields = {"k8s.ns.name": namespace, "k8s.pod.name": pod, "fd.name": "10.0.0.9:40112->198.51.100.7:443",
              "fd.l4proto": "tcp", "evt.type": "connect", "proc.name": "ssh",
              "proc.cmdline": "ssh -p 443 x@198.51.100.7"}
    return json.dumps({"rule": "Disallowed SSH Connection Non Standard Port", "priority": "Notice",
                       "time": time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime()),
                       "output": "bench", "output_fields": fields}).encode()


def post(url: str, token: str, body: bytes) -> int:
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


HISTOGRAM = re.compile(r'^stockade_detection_to_isolation_seconds_bucket\{le="([^"]+)",source="runtime"\} (\S+)$')


def operator_histogram(metrics_port: int) -> dict[float, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        match = HISTOGRAM.match(line)
        if match:
            out[float(match[1])] = float(match[2])
    return out


def reconcile_count(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
        return next((float(line.split()[-1]) for line in resp.read().decode().splitlines()
                     if line.startswith("stockade_reconcile_duration_seconds_count")), 0.0)


def histogram_quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float:
    """Prometheus' histogram_quantile over the difference of two cumulative bucket snapshots."""
    buckets = sorted((le, after.get(le, 0.0) - before.get(le, 0.0)) for le in after)
    total = buckets[-1][1] if buckets else 0.0
    if not total:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * ((rank - below) / max(count - below, 1e-12))
        lower, below = le, count
    return lower


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.kube = Kube.connect(workers=64)
        self.team = f"bench-sig-{uuid.uuid4().hex[:5]}"
        self.token = secrets.token_urlsafe(16)
        self.signal_port, self.metrics_port = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    # Set-up ------------------------------------------------------------------------------------------
    def start_operator(self, extra: dict[str, str]) -> None:
        log = Path(f"/tmp/stockade-signal-bench-{self.team}.log").open("ab")  # noqa: SIM115 (the child keeps it)
        env = {**os.environ, "STOCKADE_METRICS_PORT": str(self.metrics_port), "STOCKADE_SIGNAL_HOST": "127.0.0.1",
               "STOCKADE_SIGNAL_PORT": str(self.signal_port), "STOCKADE_SIGNAL_TOKEN": self.token,
               # Loopback only: plain HTTP (an explicit opt-out), so the figures leave TLS handshakes out.
               "STOCKADE_SIGNAL_TLS": "false", **extra}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stockade.cli", "run", "--liveness", f"http://127.0.0.1:{free_port()}/healthz"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.signal_port}/healthz", timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"the operator did not start; see {log.name}") from None
                time.sleep(0.2)

    def stop_operator(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=60)
            self.proc = None

    async def make_runs(self) -> None:
        """--runs AgentRuns in the team namespace (made once), all Running."""
        gate = asyncio.Semaphore(16)
        names = ["target"] + [f"r{i:04d}" for i in range(self.args.runs - 1)]
        existing = {r["metadata"]["name"] for r in await self.kube.list_objects("stockade.io/v1alpha1", "AgentRun",
                                                                                 self.team)}

        async def make(name: str) -> None:
            async with gate:
                await self.kube.create({"apiVersion": "stockade.io/v1alpha1", "kind": "AgentRun",
                                        "metadata": {"name": name, "namespace": self.team}, "spec": SPEC})

        await asyncio.gather(*(make(n) for n in names if n not in existing))
        started = time.monotonic()
        while True:
            runs = await self.kube.list_objects("stockade.io/v1alpha1", "AgentRun", self.team)
            running = sum(1 for r in runs if (r.get("status") or {}).get("phase") == "Running")
            if running == len(names):
                break
            if time.monotonic() - started > self.args.ready_timeout:
                raise TimeoutError(f"only {running}/{len(names)} AgentRuns Running")
            await asyncio.sleep(1)
        print(f"{len(names)} AgentRuns Running after {time.monotonic() - started:.0f} s", flush=True)

    async def make_floor_pod(self) -> tuple[str, str]:
        namespace = f"{self.team}-floor"
        await self.kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        await self.kube.create({"apiVersion": "v1", "kind": "Pod",
                                "metadata": {"name": "plain", "namespace": namespace},
                                "spec": {"containers": [{"name": "c", "image": "registry.example/agent:1"}]}})
        return namespace, "plain"

    # Measurements ---------------------------------------------------------------------------------------
    async def operator_path(self) -> list[float]:
        namespace = f"{self.team}-target"
        tracker = Isolation(official_client.shared(), namespace, "target")
        url = f"http://127.0.0.1:{self.signal_port}/falco"
        ar_path = object_path("stockade.io/v1alpha1", "AgentRun", self.team, "target")
        out = []
        try:
            await asyncio.sleep(0.5)
            tracker.wait(False)
            for _ in range(self.args.signals):
                body = falco_ssh(namespace, "target")
                started = time.perf_counter()
                status = await asyncio.to_thread(post, url, self.token, body)
                assert status == 202, status
                done = await asyncio.to_thread(tracker.wait, True)
                out.append(done - started)
                await self.kube.merge_patch(ar_path, {"metadata": {"annotations": {"stockade.io/release": "bench"}}})
                try:
                    await asyncio.to_thread(tracker.wait, False)
                    await self._released(ar_path)
                except TimeoutError:
                    run = await self.kube.call("GET", ar_path)
                    print("release did not complete:", json.dumps({"annotations": run["metadata"].get("annotations"),
                          "quarantine": (run.get("status") or {}).get("quarantine")}), file=sys.stderr)
                    raise
        finally:
            tracker.stop()
        return out

    async def _released(self, path: str) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            run = await self.kube.call("GET", path)
            annotations = run["metadata"].get("annotations") or {}
            status = run.get("status") or {}
            if "stockade.io/release" not in annotations and status.get("phase") == "Running" and \
                    not (status.get("quarantine") or {}).get("active"):
                await asyncio.sleep(self.args.settle)  # let the reconcile the release caused finish
                return
            await asyncio.sleep(0.01)
        raise TimeoutError("the release did not complete")

    async def floor(self, namespace: str, pod: str) -> list[float]:
        tracker = Isolation(official_client.shared(), namespace, pod)
        policy = quarantine_policy(namespace, "floor", "floor")
        policy["metadata"]["labels"] = {"bench": "floor"}
        pod_path = object_path("v1", "Pod", namespace, pod)
        out = []
        try:
            await asyncio.sleep(0.5)
            tracker.wait(False)
            for _ in range(self.args.signals):
                started = time.perf_counter()
                await asyncio.gather(self.kube.merge_patch(pod_path, {"metadata": {"labels": {QUARANTINED: "true"}}}),
                                     self.kube.create(policy))
                done = await asyncio.to_thread(tracker.wait, True)
                out.append(done - started)
                await asyncio.gather(self.kube.merge_patch(pod_path, {"metadata": {"labels": {QUARANTINED: None}}}),
                                     self.kube.delete("networking.k8s.io/v1", "NetworkPolicy", namespace, POLICY))
                await asyncio.to_thread(tracker.wait, False)
                await asyncio.sleep(self.args.settle)
        finally:
            tracker.stop()
        return out

    async def cleanup(self) -> None:
        if self.args.keep:
            return
        with contextlib.suppress(KubeError):
            await self.kube.call("DELETE", object_path("stockade.io/v1alpha1", "AgentRun", self.team),
                                 {"propagationPolicy": "Background"})
        for _ in range(900):  # the operator's finalizer removes the run namespaces first
            if not await self.kube.list_objects("stockade.io/v1alpha1", "AgentRun", self.team):
                break
            await asyncio.sleep(1)
        for namespace in (self.team, f"{self.team}-floor"):
            await self.kube.delete("v1", "Namespace", None, namespace)

    async def settled(self) -> None:
        """Until the operator's reconcile count stands still for 3 s (a restart re-reconciles every run)."""
        last, still = -1.0, 0
        while still < 3:
            await asyncio.sleep(1)
            count = await asyncio.to_thread(reconcile_count, self.metrics_port)
            still = still + 1 if count == last else 0
            last = count

    async def measure(self, order: str, floor_ns: str, floor_pod: str) -> dict[str, Any]:
        self.start_operator({"STOCKADE_EVIDENCE_BEFORE_ISOLATION": order})
        try:
            await self.make_runs()
            await self.settled()
            floor = percentiles(await self.floor(floor_ns, floor_pod))
            before = operator_histogram(self.metrics_port)
            ours = percentiles(await self.operator_path())
            after = operator_histogram(self.metrics_port)
        finally:
            self.stop_operator()
        inside = {"p50": histogram_quantile(0.5, before, after), "p99": histogram_quantile(0.99, before, after)}
        return {"evidence_before_isolation": order, "load_average": os.getloadavg()[0], "floor": floor,
                "stockade": ours, "operator_histogram": inside}

    async def run(self) -> None:
        await self.kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.team}})
        floor_ns, floor_pod = await self.make_floor_pod()
        results = []
        try:
            for order in self.args.evidence_before_isolation.split(","):
                results.append(await self.measure(order.strip(), floor_ns, floor_pod))
        finally:
            self.start_operator({})  # the finalizers need an operator
            await self.cleanup()
            self.stop_operator()
        print(f"\nsignal -> isolation (seconds), {self.args.runs} AgentRun(s) present, {self.args.signals} signals, "
              f"local kwok cluster, {time.strftime('%F %T')}")
        print(f"{'':<44}{'n':>5}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}{'mean':>9}")
        for result in results:
            order, floor, ours = result["evidence_before_isolation"], result["floor"], result["stockade"]
            print(f"STOCKADE_EVIDENCE_BEFORE_ISOLATION={order} (load average {result['load_average']:.1f})")
            for who, fig in (("  floor (label patch + policy create)", floor),
                             ("  stockade (POST /falco -> both seen)", ours)):
                print(f"{who:<44}{fig['n']:>5.0f}{fig['p50']:>9.4f}{fig['p90']:>9.4f}{fig['p99']:>9.4f}"
                      f"{fig['max']:>9.4f}{fig['mean']:>9.4f}")
            inside = result["operator_histogram"]
            print(f"{'  operator histogram (bucket-interpolated)':<44}{'':>5}{inside['p50']:>9.4f}{'':>9}"
                  f"{inside['p99']:>9.4f}")
        out = ROOT / "bench" / "results"
        out.mkdir(exist_ok=True)
        (out / f"signal_latency-{self.args.runs}runs-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(
            json.dumps({"runs": self.args.runs, "signals": self.args.signals, "results": results}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--signals", type=int, default=200, help="signals measured (each on an unquarantined pod)")
    parser.add_argument("--runs", type=int, default=1, help="AgentRuns present, the target included")
    parser.add_argument("--settle", type=float, default=0.1, help="seconds between measurements")
    parser.add_argument("--ready-timeout", type=float, default=1800)
    parser.add_argument("--keep", action="store_true", help="leave the namespaces and AgentRuns behind")
    parser.add_argument("--evidence-before-isolation", default="true",
                        help="STOCKADE_EVIDENCE_BEFORE_ISOLATION for the operator; a list (true,false) measures each "
                             "with the same runs present, restarting the operator in between")
    asyncio.run(Bench(parser.parse_args()).run())


if __name__ == "__main__":
    main()
