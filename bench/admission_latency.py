"""Admission latency as the API server measures it, under concurrent pod creations.

    KUBECONFIG=... .venv/bin/python bench/admission_latency.py [--pods 50] [--rounds 3]

Starts the operator (``stockade run``) unless --no-operator, makes an AgentRun whose agent may
create pods, then creates ``--pods`` pods at once as the agent's ServiceAccount, ``--rounds``
times. It reads ``apiserver_admission_webhook_admission_duration_seconds`` from the API server's
/metrics before and after and reports, for each Stockade webhook, how many calls finished within
each bucket and p50/p99 estimated the way Prometheus' histogram_quantile does. The API server's
buckets are coarse (5 ms, 25 ms, 100 ms, ...): "p99 < 25 ms" holds exactly when at least 99 % of
the calls fall in the 25 ms bucket, which the table shows directly. The operator's own finer
histograms (time in the handler; time from reading a request to answering it) are printed alongside.

``--floor`` then repeats the bursts against a trivial allow-everything HTTPS webhook in a process
of its own, with the operator still running: what any webhook costs on this machine at this load,
the baseline to read Stockade's figures against.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))

from stockade.kube import Kube  # noqa: E402

METRIC = "apiserver_admission_webhook_admission_duration_seconds"
LINE = re.compile(r'^(?P<name>[a-z_]+)_bucket\{(?P<labels>[^}]*)\} (?P<value>\S+)$')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kubectl(*args: str, stdin: str | None = None) -> str:
    binary = os.environ.get("STOCKADE_BIN", "")
    cmd = [str(Path(binary) / "kubectl") if binary else "kubectl", *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=True, timeout=120).stdout


def buckets(text: str, metric: str, webhooks: set[str]) -> dict[tuple[str, str], dict[float, float]]:
    """(webhook name, type) -> {upper bound: cumulative count}, CREATE operations only."""
    out: dict[tuple[str, str], dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for line in text.splitlines():
        match = LINE.match(line)
        if not match or match["name"] != metric:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        name = found.get("name") or found.get("webhook", "")
        if name not in webhooks or found.get("operation", "CREATE") != "CREATE":
            continue
        bound = float("inf") if found["le"] == "+Inf" else float(found["le"])
        out[(name, found.get("type", ""))][bound] += float(match["value"])
    return out


def quantile(q: float, cumulative: dict[float, float]) -> float:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket holding the rank."""
    bounds = sorted(cumulative)
    total = cumulative[bounds[-1]]
    if total == 0:
        return float("nan")
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = bound, count
    return lower


def diff(after: dict[Any, dict[float, float]], before: dict[Any, dict[float, float]]) -> dict[Any, dict[float, float]]:
    return {key: {b: v - before.get(key, {}).get(b, 0.0) for b, v in series.items()} for key, series in after.items()}


def report(title: str, series: dict[tuple[str, str], dict[float, float]]) -> None:
    print(f"\n{title}")
    for (name, kind), cumulative in sorted(series.items()):
        total = cumulative[max(cumulative)]
        within = ", ".join(f"<={b * 1000:g}ms: {cumulative[b]:.0f}" for b in sorted(cumulative)
                           if b != float("inf") and b <= 0.1)
        print(f"  {name} {kind}: {total:.0f} calls; p50 {quantile(0.5, cumulative) * 1000:.1f} ms, "
              f"p99 {quantile(0.99, cumulative) * 1000:.1f} ms; {within}")


FLOOR_SERVER = """
import json, ssl, sys
from pathlib import Path
from aiohttp import web
sys.path.insert(0, sys.argv[3])
from stockade.admission import certs
paths = certs.ensure(Path(sys.argv[2]), ["localhost"], ["127.0.0.1"])
async def allow(request):
    review = await request.json()
    return web.json_response({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                              "response": {"uid": review["request"]["uid"], "allowed": True}})
app = web.Application()
app.add_routes([web.post("/{id:.*}", allow)])
context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(str(paths.cert), str(paths.key))
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), ssl_context=context, print=None, access_log=None)
"""


def agentrun(team: str, pods: int) -> dict[str, Any]:
    return {
        "apiVersion": "stockade.io/v1alpha1", "kind": "AgentRun", "metadata": {"name": "bench", "namespace": team},
        "spec": {
            "template": {"spec": {"containers": [{"name": "agent", "image": "registry.example/agent:1"}]}},
            "grant": {"cpu": str(pods), "memory": f"{pods}Gi", "ephemeralStorage": f"{pods}Gi", "pods": pods,
                      "kubernetesAPI": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}]},
        },
    }


def pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {
            "serviceAccountName": "agent",
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "image": "registry.example/agent:1",
                            "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}},
                            "securityContext": {"allowPrivilegeEscalation": False,
                                                "capabilities": {"drop": ["ALL"]}}}],
        },
    }


async def burst(kube: Kube, namespace: str, count: int, tag: str) -> tuple[int, float]:
    async def one(index: int) -> bool:
        body = pod(f"bench-{tag}-{index}")
        body["metadata"]["namespace"] = namespace
        try:
            await kube.create(body)
        except Exception as err:  # report, do not stop the burst
            print(f"  create failed: {err}", file=sys.stderr)
            return False
        return True

    started = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(count)))
    return sum(results), time.perf_counter() - started


def wait(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except (subprocess.CalledProcessError, OSError):
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=50, help="pods created at once")
    parser.add_argument("--rounds", type=int, default=3, help="bursts, each of --pods new pods")
    parser.add_argument("--no-operator", action="store_true", help="use an operator that is already running")
    parser.add_argument("--floor", action="store_true", help="also measure a trivial webhook as the baseline")
    args = parser.parse_args()

    operator = None
    metrics_port = free_port()
    if not args.no_operator:
        health = free_port()
        log = Path(os.environ.get("TMPDIR", "/tmp")) / f"stockade-bench-{os.getpid()}.log"
        operator = subprocess.Popen(
            [sys.executable, "-m", "stockade.cli", "run", "--liveness", f"http://127.0.0.1:{health}/healthz"],
            env={**os.environ, "STOCKADE_METRICS_PORT": str(metrics_port), "PYTHONPATH": str(ROOT / "operator"),
                 "STOCKADE_WEBHOOK_CONFIGURATION": CONFIGURATION, "STOCKADE_ADMISSION_RECREATE_WEBHOOKS": "false"},
            stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT)
        wait(lambda: urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=1).status == 200,
             60, "the operator")
        print(f"operator started (log: {log})")
    team = f"bench-{uuid.uuid4().hex[:6]}"
    total = args.pods * args.rounds * (2 if args.floor else 1)
    try:
        kubectl("create", "namespace", team)
        kubectl("apply", "-f", "-", stdin=json.dumps(agentrun(team, total + 1)))
        run = wait(lambda: (r := json.loads(kubectl("get", "agentrun", "bench", "-n", team, "-o", "json")))
                   .get("status", {}).get("phase") == "Running" and r, 90, "the AgentRun to run")
        namespace = run["status"]["runNamespace"]
        # The webhook answers once kopf's server is up: a dry run as the agent proves it is.
        wait(lambda: kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-",
                             f"--as=system:serviceaccount:{namespace}:agent", stdin=json.dumps(pod("probe"))),
             60, "the webhook to answer")
        kube = Kube.connect(workers=args.pods + 8, impersonate=f"system:serviceaccount:{namespace}:agent")
        print(f"\n{args.rounds} bursts of {args.pods} concurrent pod creations as system:serviceaccount:"
              f"{namespace}:agent")
        measure(kube, namespace, args, metrics_port if operator else None, "stockade")
        if args.floor:
            with floor_webhook():
                print("\nthe same against a trivial allow-everything webhook (the floor), operator running:")
                measure(kube, namespace, args, None, "floor")
    finally:
        # The AgentRun first, while the operator runs: its finalizer removes the run namespace.
        kubectl("delete", "agentrun", "--all", "-n", team, "--timeout=90s")
        kubectl("delete", "namespace", team, "--wait=false")
        if operator is not None:
            operator.terminate()
            operator.wait(timeout=30)


NAMES = {"allowlist.stockade.io", "gpu-visibility.stockade.io"}
CONFIGURATION = os.environ.get("STOCKADE_WEBHOOK_CONFIGURATION", "stockade-local")  # the local operator's
HANDLERS = {"allowlist", "gpu-visibility"}


def measure(kube: Kube, namespace: str, args: argparse.Namespace, metrics_port: int | None, tag: str) -> None:
    before = buckets(kubectl("get", "--raw", "/metrics"), METRIC, NAMES)
    mine_before = _operator_metrics(metrics_port) if metrics_port else ""
    for round_ in range(args.rounds):
        created, seconds = asyncio.run(burst(kube, namespace, args.pods, f"{tag}-{round_}"))
        print(f"  burst {round_ + 1}: {created}/{args.pods} created in {seconds:.2f} s")
    after = buckets(kubectl("get", "--raw", "/metrics"), METRIC, NAMES)
    report(f"API server: {METRIC} (CREATE)", diff(after, before))
    if metrics_port:
        mine_after = _operator_metrics(metrics_port)
        for metric, what in (("stockade_admission_handler_duration_seconds", "time inside the handler"),
                             ("stockade_admission_request_duration_seconds", "request read to answer, kopf included")):
            report(f"operator: {metric} ({what})",
                   diff(buckets(mine_after, metric, HANDLERS), buckets(mine_before, metric, HANDLERS)))


def _plain(obj: dict[str, Any], name: str) -> dict[str, Any]:
    meta = {"name": name, "labels": obj["metadata"].get("labels") or {}}
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "metadata": meta, "webhooks": obj["webhooks"]}


@contextlib.contextmanager
def floor_webhook() -> Iterator[None]:
    """Stockade's webhooks replaced by the same webhooks pointing at a trivial server for a while, then put back.
    The operator started here does not re-create its deleted configurations (STOCKADE_ADMISSION_RECREATE_WEBHOOKS
    =false; it would restore a changed one at once, which is why they are replaced, not edited)."""
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="stockade-floor-"))
    server = subprocess.Popen([sys.executable, "-c", FLOOR_SERVER, str(port), str(workdir), str(ROOT / "operator")])
    saved = {kind: json.loads(kubectl("get", kind, CONFIGURATION, "-o", "json"))
             for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration")}
    try:
        wait(lambda: (workdir / "ca.crt").exists() and _listening(port), 30, "the floor webhook")
        bundle = base64.b64encode((workdir / "ca.crt").read_bytes()).decode()
        for kind, obj in saved.items():
            floor = _plain(obj, f"{CONFIGURATION}-floor")
            for hook in floor["webhooks"]:
                hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}/floor", "caBundle": bundle}
            kubectl("delete", kind, CONFIGURATION)
            kubectl("create", "-f", "-", stdin=json.dumps(floor))
        yield
    finally:
        for kind, obj in saved.items():
            kubectl("delete", kind, f"{CONFIGURATION}-floor", "--ignore-not-found")
            kubectl("create", "-f", "-", stdin=json.dumps(_plain(obj, CONFIGURATION)))
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _operator_metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


if __name__ == "__main__":
    main()
