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

``--floor`` interleaves each burst with one against a trivial allow-everything webhook: the webhook
configurations are replaced by the same webhooks pointing at the operator's own /stockade-floor endpoint
(STOCKADE_ADMISSION_FLOOR_ENDPOINT, served by the same thread, event loop, TLS set-up and certificate as
the real ones), so that the ratio of the two isolates what Stockade's handlers and kopf's dispatch cost.
With --no-operator the trivial webhook runs in a process of its own instead. Each pod creation is also
timed by the client (end to end, both webhooks and the API server's own work included): those are the
fine-grained p50/p99 figures; the API server's admission histogram has 5/25/100 ms buckets only.
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
import signal
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

import bench_policy  # noqa: E402
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


async def burst(kube: Kube, namespace: str, count: int, tag: str) -> tuple[list[float], float]:
    """``count`` pods created at once: each successful creation's own time, and the whole burst's."""
    async def one(index: int) -> float | None:
        body = pod(f"bench-{tag}-{index}")
        body["metadata"]["namespace"] = namespace
        started = time.perf_counter()
        try:
            await kube.create(body)
        except Exception as err:  # report, do not stop the burst
            print(f"  create failed: {err}", file=sys.stderr)
            return None
        return time.perf_counter() - started

    started = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(count)))
    return [r for r in results if r is not None], time.perf_counter() - started


def exact(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


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
    parser.add_argument("--py-spy", help="this py-spy binary samples the operator meanwhile ($PROFILE_OUT)")
    args = parser.parse_args()

    operator = None
    metrics_port = free_port()
    kubectl("apply", "--server-side", "--field-manager=stockade-bench", "--force-conflicts", "-f", "-",
            stdin=json.dumps(bench_policy.POLICY))
    if not args.no_operator:
        health = free_port()
        log = Path(os.environ.get("TMPDIR", "/tmp")) / f"stockade-bench-{os.getpid()}.log"
        operator = subprocess.Popen(
            [sys.executable, "-m", "stockade.cli", "run", "--liveness", f"http://127.0.0.1:{health}/healthz"],
            env={**os.environ, "STOCKADE_METRICS_PORT": str(metrics_port), "PYTHONPATH": str(ROOT / "operator"),
                 "STOCKADE_WEBHOOK_CONFIGURATION": CONFIGURATION, "STOCKADE_ADMISSION_RECREATE_WEBHOOKS": "false",
                 "STOCKADE_ADMISSION_FLOOR_ENDPOINT": "true"},
            stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT)
        wait(lambda: urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=1).status == 200,
             60, "the operator")
        print(f"operator started (log: {log})")
    team = f"bench-{uuid.uuid4().hex[:6]}"
    total = args.pods * args.rounds * (2 if args.floor else 1)
    try:
        kubectl("create", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "Namespace",
                                                       "metadata": {"name": team, "labels": bench_policy.LABEL}}))
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
        measure(kube, namespace, args, metrics_port if operator else None, in_process=operator is not None,
                profile=(args.py_spy, operator.pid) if args.py_spy and operator else None)
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


Series = dict[tuple[str, str], dict[float, float]]
OPERATOR_METRICS = {"stockade_admission_handler_duration_seconds": "time inside the handler",
                    "stockade_admission_request_duration_seconds": "request read to answer, kopf included"}


def _add(total: Series, part: Series) -> None:
    for key, series in part.items():
        mine = total.setdefault(key, defaultdict(float))
        for bound, value in series.items():
            mine[bound] += value


def measure(kube: Kube, namespace: str, args: argparse.Namespace, metrics_port: int | None, *,
            in_process: bool, profile: tuple[str, int] | None = None) -> None:
    """``args.rounds`` rounds, each a Stockade burst and (--floor) then a floor burst, so both see the same load."""
    tags = ("stockade", "floor") if args.floor else ("stockade",)
    times: dict[str, list[float]] = {tag: [] for tag in tags}
    server: dict[str, Series] = {tag: {} for tag in tags}
    mine: dict[str, Series] = {metric: {} for metric in OPERATOR_METRICS}
    spy = _py_spy(*profile) if profile else None
    for round_ in range(args.rounds):
        for tag in tags:
            with floor_webhook(in_process) if tag == "floor" else contextlib.nullcontext():
                before = buckets(kubectl("get", "--raw", "/metrics"), METRIC, NAMES)
                mine_before = _operator_metrics(metrics_port) if metrics_port and tag == "stockade" else ""
                durations, seconds = asyncio.run(burst(kube, namespace, args.pods, f"{tag}-{round_}"))
                _add(server[tag], diff(buckets(kubectl("get", "--raw", "/metrics"), METRIC, NAMES), before))
                if mine_before:
                    mine_after = _operator_metrics(metrics_port or 0)
                    for metric, series in mine.items():
                        _add(series, diff(buckets(mine_after, metric, HANDLERS),
                                          buckets(mine_before, metric, HANDLERS)))
            times[tag] += durations
            print(f"  round {round_ + 1} {tag}: {len(durations)}/{args.pods} created in {seconds:.2f} s; "
                  f"each p50 {exact(durations, 0.5) * 1000:.1f} ms, p99 {exact(durations, 0.99) * 1000:.1f} ms")
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=120)
    print(f"\npod creation end to end, as the client times it ({args.rounds} bursts of {args.pods} each):")
    for tag in tags:
        print(f"  {tag:<9} n={len(times[tag])}  p50 {exact(times[tag], 0.5) * 1000:.1f} ms  "
              f"p90 {exact(times[tag], 0.9) * 1000:.1f} ms  p99 {exact(times[tag], 0.99) * 1000:.1f} ms")
    if args.floor:
        ratio = {q: exact(times["stockade"], q) / exact(times["floor"], q) for q in (0.5, 0.99)}
        print(f"  ratio     p50 {ratio[0.5]:.2f}x  p99 {ratio[0.99]:.2f}x  "
              f"(floor: {'/stockade-floor in the operator' if in_process else 'a process of its own'})")
    for tag in tags:
        report(f"API server: {METRIC} (CREATE), {tag}", server[tag])
    if metrics_port:
        for metric, what in OPERATOR_METRICS.items():
            report(f"operator: {metric} ({what})", mine[metric])


def _py_spy(binary: str, pid: int) -> subprocess.Popen[bytes]:
    """py-spy sampling the operator (every thread) for the whole measurement, into $PROFILE_OUT (collapsed stacks)."""
    out = os.environ.get("PROFILE_OUT", "/tmp/stockade-admission-profile.txt")
    spy = subprocess.Popen([binary, "record", "--pid", str(pid), "--rate", "500", "--threads", "--idle",
                            "--format", "raw", "--output", out, "--nonblocking"])
    time.sleep(1)
    return spy


def _plain(obj: dict[str, Any], name: str) -> dict[str, Any]:
    meta = {"name": name, "labels": obj["metadata"].get("labels") or {}}
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "metadata": meta, "webhooks": obj["webhooks"]}


@contextlib.contextmanager
def floor_webhook(in_process: bool) -> Iterator[None]:
    """Stockade's webhooks replaced by the same webhooks pointing at a trivial one for a while, then put back:
    the operator's own /stockade-floor (``in_process``) or a server of its own. The operator started here does
    not re-create its deleted configurations (STOCKADE_ADMISSION_RECREATE_WEBHOOKS=false; it would restore a
    changed one at once, which is why they are replaced, not edited)."""
    saved = {kind: json.loads(kubectl("get", kind, CONFIGURATION, "-o", "json"))
             for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration")}
    server = workdir = None
    if in_process:
        # Same host, port and CA as the real webhooks: only the path differs.
        client = saved["validatingwebhookconfiguration"]["webhooks"][0]["clientConfig"]
        url = client["url"].rsplit("/", 1)[0] + "/stockade-floor"  # + "/<id>" below
        bundle = client["caBundle"]
    else:
        port = free_port()
        workdir = Path(tempfile.mkdtemp(prefix="stockade-floor-"))
        server = subprocess.Popen([sys.executable, "-c", FLOOR_SERVER, str(port), str(workdir), str(ROOT / "operator")])
        wait(lambda: (workdir / "ca.crt").exists() and _listening(port), 30, "the floor webhook")
        url = f"https://127.0.0.1:{port}/floor"
        bundle = base64.b64encode((workdir / "ca.crt").read_bytes()).decode()
    try:
        for kind, obj in saved.items():
            floor = _plain(obj, f"{CONFIGURATION}-floor")
            for hook in floor["webhooks"]:
                # One URL per webhook, as Stockade's: the API server keeps a client (and connections) per URL.
                path = hook["clientConfig"].get("url", "").rsplit("/", 1)[-1] if in_process else ""
                hook["clientConfig"] = {"url": f"{url}/{path}" if path else url, "caBundle": bundle}
            kubectl("delete", kind, CONFIGURATION)
            kubectl("create", "-f", "-", stdin=json.dumps(floor))
        time.sleep(1)  # the API server's webhook informer picks the change up
        yield
    finally:
        for kind, obj in saved.items():
            kubectl("delete", kind, f"{CONFIGURATION}-floor", "--ignore-not-found")
            kubectl("create", "-f", "-", stdin=json.dumps(_plain(obj, CONFIGURATION)))
        time.sleep(1)
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _operator_metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


if __name__ == "__main__":
    main()
