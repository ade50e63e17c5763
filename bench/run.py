"""Apply-to-Ready latency of Stockade beside its floor, on the local cluster (`make bench`).

* stockade: create an AgentRun, wait (on a watch) until Ready=True with its pod Running.
* floor: a minimal client creates the same objects directly (namespace, ServiceAccount, quota,
  LimitRange, NetworkPolicies, then the pod once the quota is enforced) and waits for the pod to run.

Both run in the same process against the same cluster in the same session, one at a time and then
N at once (--concurrent 100,500 adds 500 at once). Then, with --memory-runs AgentRuns made (1000 by default,
checkpoint by checkpoint: the operator's RSS and one more run's latency at each), the idle window (CPU seconds
and API writes per minute, bench/idle.py), quarantine signal -> isolation (bench/quarantine.py; also measured
idle, first) and an operator restart (bench/restart.py). Figures are printed and written to bench/results/
(results.json, results.md, the plots: bench/results.py, bench/plots.py), never asserted.

On a cluster with an audit log (`make bench` starts it with bench/audit-policy.yaml), the API requests
each run cost from creation to Ready, by client, verb and resource (bench/api_requests.py): the
operator runs as a ServiceAccount of its own so that its requests can be told from the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import signal
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))

import yaml  # noqa: E402
from kubernetes import watch  # noqa: E402

import bench_policy  # noqa: E402
import idle  # noqa: E402
import official_client  # noqa: E402
import plots  # noqa: E402
import quarantine  # noqa: E402
import restart  # noqa: E402
import results  # noqa: E402
from api_requests import CLIENT_AGENT, OPERATOR_ACCOUNT, AuditLog, Window, as_json, audit_log_path, count  # noqa: E402
from api_requests import report as report_requests  # noqa: E402
from operator_proc import Operator  # noqa: E402
from stats import percentiles, ratio  # noqa: E402
from stockade.api.models import AgentRunSpec  # noqa: E402
from stockade.kube import Kube, KubeError  # noqa: E402
from stockade.plan import PlanSettings, RunRef, build  # noqa: E402

SPEC: dict[str, Any] = {
    "template": {"spec": {"containers": [{"name": "agent", "image": "registry.example/agent:1",
                                          "resources": {"limits": {"cpu": "100m", "memory": "256Mi"}}}]}},
    "grant": {"cpu": "2", "memory": "4Gi", "pods": 1, "dns": True,
              "egress": [{"cidr": "10.42.0.0/16", "ports": [443]}]},
}


class Watcher:
    """One watch stream; records the first moment each object satisfies ``done``."""

    def __init__(self, kube: Kube, path: str, selector: str, done: Callable[[dict[str, Any]], bool]) -> None:
        self.kube, self.path, self.selector, self.done = kube, path, selector, done
        self.seen: dict[str, float] = {}
        self.seen_wall: dict[str, float] = {}  # the same moments by the wall clock (the audit log's)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from kubernetes import client

        shared = official_client.shared()
        api = client.CustomObjectsApi(shared) if "agentruns" in self.path else client.CoreV1Api(shared)
        while not self._stop.is_set():
            stream = watch.Watch()
            func = (lambda **kw: api.list_cluster_custom_object("stockade.io", "v1alpha1", "agentruns", **kw)) \
                if "agentruns" in self.path else api.list_pod_for_all_namespaces
            try:
                for event in stream.stream(func, label_selector=self.selector, timeout_seconds=60,
                                           _preload_content=True):
                    obj = event["object"]
                    body = obj if isinstance(obj, dict) else official_client.shared().sanitize_for_serialization(obj)
                    key = f"{body['metadata']['namespace']}/{body['metadata']['name']}"
                    if key not in self.seen and self.done(body):
                        self.seen[key] = time.perf_counter()
                        self.seen_wall[key] = time.time()
                    if self._stop.is_set():
                        break
            except Exception:  # a dropped watch is re-opened
                time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()


def agentrun_ready(body: dict[str, Any]) -> bool:
    status = body.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    return ready and status.get("phase") == "Running"


def pod_running(body: dict[str, Any]) -> bool:
    return (body.get("status") or {}).get("phase") == "Running"


async def stockade_one(kube: Kube, team: str, name: str, label: str) -> None:
    await kube.create({"apiVersion": "stockade.io/v1alpha1", "kind": "AgentRun",
                       "metadata": {"name": name, "namespace": team, "labels": {"bench": label}}, "spec": SPEC})


async def floor_one(kube: Kube, name: str, label: str) -> None:
    """What any client must do for the same fence: objects, then the pod once the quota is enforced."""
    spec = AgentRunSpec.model_validate(SPEC)
    plan = build(RunRef("floor", name), spec, {}, PlanSettings())
    for obj in [*plan.guardrails, plan.workload]:
        # The same objects, but not labelled as Stockade's, so the operator under test ignores them.
        assert obj is not None
        obj["metadata"]["labels"] = {k: v for k, v in obj["metadata"]["labels"].items() if "stockade" not in k}
    ns, *rest = plan.guardrails
    await kube.create(ns)
    await asyncio.gather(*(kube.create(obj) for obj in rest))
    pod = plan.workload
    assert pod is not None
    pod["metadata"]["labels"]["bench"] = label
    while True:
        try:
            await kube.create(pod)
            return
        except KubeError as err:
            if "status unknown for quota" not in err.message:
                raise
            await asyncio.sleep(0.005)


async def measure(kube: Kube, mode: str, count: int, concurrent: bool, team: str) -> dict[str, Any]:
    label = f"{mode}-{uuid.uuid4().hex[:6]}"
    if mode == "stockade":
        watcher = Watcher(kube, "agentruns", f"bench={label}", agentrun_ready)
    else:
        watcher = Watcher(kube, "pods", f"bench={label}", pod_running)
    await asyncio.sleep(0.5)  # let the watch open
    names = [f"b{uuid.uuid4().hex[:8]}" for _ in range(count)]
    started: dict[str, float] = {}

    async def one(name: str) -> None:
        started[name] = time.perf_counter()
        if mode == "stockade":
            await stockade_one(kube, team, name, label)
        else:
            await floor_one(kube, name, label)

    def key(name: str) -> str:
        return f"{team}/{name}" if mode == "stockade" else f"floor-{name}/{name}"

    if concurrent:
        await asyncio.gather(*(one(n) for n in names))
        await wait_all(watcher, [key(n) for n in names])
    else:
        for name in names:
            await one(name)
            await wait_all(watcher, [key(name)])
    watcher.stop()
    samples = [watcher.seen[key(n)] - started[n] for n in names]
    return {**percentiles(samples), "samples": samples}


async def wait_all(watcher: Watcher, keys: list[str], limit: float = 180) -> None:
    deadline = time.monotonic() + limit
    while any(k not in watcher.seen for k in keys):
        if time.monotonic() > deadline:
            missing = [k for k in keys if k not in watcher.seen]
            raise TimeoutError(f"{len(missing)} never became ready, e.g. {missing[:3]}")
        await asyncio.sleep(0.002)


def read_when_written(path: Path, limit: float = 600) -> str:
    """A file another process writes (and renames into place), once it is there."""
    deadline = time.monotonic() + limit
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    return path.read_text() if path.exists() else f"{path}: not written within {limit:.0f} s"


async def cleanup(kube: Kube, team: str) -> None:
    """Delete what the benchmark made, while the operator still runs to finalize the AgentRuns."""
    print("cleaning up ...", file=sys.stderr)
    runs = await kube.list_objects("stockade.io/v1alpha1", "AgentRun", team)
    sem = asyncio.Semaphore(32)

    async def delete(kind: str, api_version: str, namespace: str | None, name: str) -> None:
        async with sem:
            await kube.delete(api_version, kind, namespace, name)

    await asyncio.gather(*(delete("AgentRun", "stockade.io/v1alpha1", team, r["metadata"]["name"]) for r in runs))
    deadline = time.monotonic() + 600
    while await kube.list_objects("stockade.io/v1alpha1", "AgentRun", team) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(1)
    floors = [n["metadata"]["name"] for n in await kube.list_objects("v1", "Namespace")
              if n["metadata"]["name"].startswith("floor-b")]
    await asyncio.gather(*(delete("Namespace", "v1", None, n) for n in [*floors, team]))


async def requests_per_run(kube: Kube, audit: AuditLog, mode: str, runs: int, *, team: str,
                           operator_user: str, settle: float = 1.0) -> tuple[list[str], dict[str, Any]]:
    """``runs`` runs one at a time, each followed by a quiet ``settle`` seconds; their requests from the audit log."""
    label = f"{mode}-{uuid.uuid4().hex[:6]}"
    watcher = Watcher(kube, "agentruns" if mode == "stockade" else "pods", f"bench={label}",
                      agentrun_ready if mode == "stockade" else pod_running)
    await asyncio.sleep(0.5)
    offset = audit.mark()
    windows = []
    start_one: Callable[[str], Awaitable[None]] = (
        (lambda name: stockade_one(kube, team, name, label)) if mode == "stockade"
        else (lambda name: floor_one(kube, name, label)))
    for _ in range(runs):
        name = f"b{uuid.uuid4().hex[:8]}"
        key = f"{team}/{name}" if mode == "stockade" else f"floor-{name}/{name}"
        started = time.time()
        await start_one(name)
        await wait_all(watcher, [key])
        await asyncio.sleep(settle)
        windows.append(Window(started, watcher.seen_wall[key], time.time()))
    watcher.stop()
    await asyncio.sleep(0.5)  # the last requests written to the log
    counts = count(audit.since(offset), windows, operator_user)
    return report_requests("floor client" if mode == "floor" else "Stockade", counts,
                           clients=("client",) if mode == "floor" else ("client", "stockade")), as_json(counts)


async def operator_kubeconfig(kube: Kube, path: Path) -> str:
    """A kubeconfig whose credential is a token of a ServiceAccount of the operator's own (bound to cluster-admin,
    as the kubeconfig's user is): its requests are then its own in the audit log. Returns the username."""
    namespace, name = OPERATOR_ACCOUNT
    for call in (
        lambda: kube.create({"apiVersion": "v1", "kind": "ServiceAccount",
                             "metadata": {"name": name, "namespace": namespace}}),
        lambda: kube.call("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]}),
    ):
        try:
            await call()
        except KubeError as err:
            if not err.conflict:
                raise
    token = await kube.call("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 21600}})
    write_kubeconfig(path, token["status"]["token"])
    return f"system:serviceaccount:{namespace}:{name}"


def write_kubeconfig(path: Path, token: str) -> None:
    """The current kubeconfig's cluster and context with ``token`` as the only credential."""
    source = Path(os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep)[0]).expanduser()
    config = yaml.safe_load(source.read_text())
    current = next(c for c in config["contexts"] if c["name"] == config["current-context"])
    current["context"]["user"] = "bench-operator"
    config["users"] = [{"name": "bench-operator", "user": {"token": token}}]
    config["contexts"] = [current]
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)


async def scaling(kube: Kube, op: Operator, team: str, *, memory_runs: int, checkpoints: int, probe: int
                  ) -> list[dict[str, Any]]:
    """Make ``memory_runs`` AgentRuns, checkpoint by checkpoint (0, 1/4, ... of them with 4); at each, once they
    are Ready: the operator's RSS, and ``probe`` more runs one at a time (their apply -> Ready)."""
    sem = asyncio.Semaphore(32)

    async def make(i: int) -> None:
        async with sem:
            await stockade_one(kube, team, f"m{i:05d}", "memory")

    watcher = Watcher(kube, "agentruns", "bench=memory", agentrun_ready)
    points, made = [], 0
    try:
        for target in sorted({round(memory_runs * i / max(checkpoints, 1)) for i in range(checkpoints + 1)}):
            started = time.monotonic()
            await asyncio.gather(*(make(i) for i in range(made, target)))
            await wait_all(watcher, [f"{team}/m{i:05d}" for i in range(target)], limit=3600)
            ready_after = time.monotonic() - started
            made = target
            await asyncio.sleep(5)
            present = len(await kube.list_objects("stockade.io/v1alpha1", "AgentRun", team))
            point = {"memory_runs": made, "runs_present": present, "rss_mb": op.rss_mb(),
                     "seconds_to_ready": ready_after, "load_average": os.getloadavg()[0],
                     "probe": await measure(kube, "stockade", probe, False, team) if probe else percentiles([])}
            points.append(point)
            print(f"{made} memory runs Ready after {ready_after:.0f} s, {present} AgentRuns present "
                  f"(load {point['load_average']:.2f}): operator RSS {point['rss_mb']:.0f} MB, one more run "
                  f"p50 {point['probe']['p50']:.3f} s max {point['probe']['max']:.3f} s", flush=True)
    finally:
        watcher.stop()
    return points


def print_latency(rows: list[dict[str, Any]]) -> None:
    print(f"\napply -> Ready with the pod Running (seconds), local kwok cluster, {time.strftime('%F %T')}")
    print(f"{'scenario':<16}{'':>4}{'n':>6}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}")
    for row in rows:
        for who in ("floor", "stockade"):
            fig = row[who]
            print(f"{row['scenario']:<16}{who:>10}{fig['n']:>4.0f}{fig['p50']:>9.3f}{fig['p90']:>9.3f}"
                  f"{fig['p99']:>9.3f}{fig['max']:>9.3f}")
        print(f"{'':<16}{'ratio':>10}{'':>4}{row['ratio_p50']:>9.2f}{'':>9}{row['ratio_p99']:>9.2f}"
              f"   (load {row['load_average']:.2f})", flush=True)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    return f"{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}"


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sequential", type=int, default=30, help="runs one at a time")
    parser.add_argument("--concurrent", default="100",
                        help="runs applied at once: a number or a list (100,500 adds the 500 at once)")
    parser.add_argument("--memory-runs", type=int, default=1000,
                        help="AgentRuns made for the figures with runs present (RSS, idle CPU and writes, quarantine, "
                             "restart); 5000 for issue 12's second memory figure; 0 skips those figures")
    parser.add_argument("--checkpoints", type=int, default=4, help="RSS sampled at 0, 1/4, ... of the memory runs")
    parser.add_argument("--probe", type=int, default=5, help="runs one at a time timed at each checkpoint")
    parser.add_argument("--idle-seconds", type=float, default=60, help="the idle window (0 skips it)")
    parser.add_argument("--signals", type=int, default=50, help="quarantine signals, idle and with the runs (0 skips)")
    parser.add_argument("--restart", action=argparse.BooleanOptionalAction, default=True,
                        help="restart the operator with the memory runs present")
    parser.add_argument("--results", type=Path, default=results.OUT,
                        help="where results.json, results.md and the plots go (--no-results: nowhere)")
    parser.add_argument("--no-results", action="store_true")
    parser.add_argument("--no-cleanup", action="store_true", help="leave what it made (the cluster is thrown away)")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="run the operator under tracemalloc (bench/traced_operator.py) and print where the "
                             "memory with --memory-runs went (its RSS is then not the figure)")
    parser.add_argument("--request-runs", type=int, default=10,
                        help="runs one at a time whose API requests are counted (needs the audit log)")
    return parser.parse_args()


async def main() -> None:
    args = arguments()
    began = time.monotonic()
    doc: dict[str, Any] = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "git": results.git_head(),
                           "machine": machine(), "command": " ".join(["bench/run.py", *sys.argv[1:]]),
                           "args": {k: str(v) for k, v in vars(args).items()},
                           "load_average": {"start": os.getloadavg()[0]}, "rss_mb": {}}
    kube = Kube.connect(workers=64)
    kube.connection.user_agent = CLIENT_AGENT
    team = f"bench-{uuid.uuid4().hex[:5]}"
    await kube.create({"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": team, "labels": bench_policy.LABEL}})
    await kube.call("PATCH", bench_policy.PATH, bench_policy.POLICY, content_type="application/apply-patch+yaml",
                    query=[("fieldManager", "stockade-bench"), ("force", "true")])
    kubeconfig = Path(f"/tmp/stockade-bench-operator-{team}.kubeconfig")
    operator_user = await operator_kubeconfig(kube, kubeconfig)
    op = Operator(team, kubeconfig, traced=args.tracemalloc)
    await asyncio.to_thread(op.start)
    await asyncio.sleep(20 if args.tracemalloc else 2)  # traced, the start takes several times longer
    doc["rss_mb"]["at start"] = op.rss_mb()
    print(f"operator RSS at start: {op.rss_mb():.0f} MB (load {os.getloadavg()[0]:.2f})", flush=True)
    audit_path = audit_log_path()
    audit = AuditLog(audit_path) if audit_path else None
    try:
        if args.signals:
            await quarantine.make_target(kube, team)
            doc["quarantine"] = [await quarantine.measure(kube, op, team, args.signals, runs_present=1)]
            print(quarantine.line(doc["quarantine"][-1]), flush=True)
        rows = doc["latency"] = []
        at_once = [int(c) for c in args.concurrent.split(",") if c.strip()]
        for label, n, concurrent in [("one at a time", args.sequential, False),
                                     *((f"{c} at once", c, True) for c in at_once)]:
            if n:
                floor = await measure(kube, "floor", n, concurrent, team)
                ours = await measure(kube, "stockade", n, concurrent, team)
                rows.append({"scenario": label, "count": n, "concurrent": concurrent, "floor": floor,
                             "stockade": ours, "ratio_p50": ratio(ours["p50"], floor["p50"]),
                             "ratio_p99": ratio(ours["p99"], floor["p99"]), "load_average": os.getloadavg()[0]})
        print_latency(rows)
        if audit is None:
            print("\nAPI requests per run: not counted (no audit log; start the cluster with "
                  "STOCKADE_AUDIT_POLICY=bench/audit-policy.yaml, as `make bench` does)")
        elif args.request_runs:
            doc["requests"] = {}
            for mode in ("floor", "stockade"):
                lines, doc["requests"][mode] = await requests_per_run(kube, audit, mode, args.request_runs, team=team,
                                                                      operator_user=operator_user)
                print("\n".join(lines))
        doc["rss_mb"]["after the runs above"] = op.rss_mb()
        print(f"\noperator RSS after the runs above: {op.rss_mb():.0f} MB", flush=True)
        if args.memory_runs:
            if args.tracemalloc:
                os.kill(op.pid, signal.SIGUSR2)  # the baseline
            doc["scaling"] = await scaling(kube, op, team, memory_runs=args.memory_runs, checkpoints=args.checkpoints,
                                          probe=args.probe)
            present = doc["scaling"][-1]["runs_present"]
            if args.tracemalloc:
                os.kill(op.pid, signal.SIGUSR2)
                print(await asyncio.to_thread(read_when_written, Path("/tmp/stockade-tracemalloc.1")))
            if args.idle_seconds:
                doc["idle"] = await idle.measure(op, audit, operator_user, args.idle_seconds, present)
                print(idle.line(doc["idle"]), flush=True)
            if args.signals:
                doc["quarantine"].append(await quarantine.measure(kube, op, team, args.signals, runs_present=present))
                print(quarantine.line(doc["quarantine"][-1]), flush=True)
            if args.restart:
                doc["restart"] = await restart.measure(kube, op, audit, operator_user, team)
                print(restart.line(doc["restart"]), flush=True)
    finally:
        doc["load_average"]["end"] = os.getloadavg()[0]
        doc["duration_seconds"] = time.monotonic() - began
        if not args.no_results:
            written = results.write(doc, args.results, plots.plot)
            print(f"\nwritten ({doc['duration_seconds']:.0f} s so far): {', '.join(str(w) for w in written)}")
        if not args.no_cleanup:
            started = time.monotonic()
            with contextlib.suppress(Exception):
                if op.proc is None:
                    await asyncio.to_thread(op.start)  # the finalizers need an operator
            await cleanup(kube, team)
            print(f"cleaned up in {time.monotonic() - started:.0f} s", file=sys.stderr)
        await asyncio.to_thread(op.stop)


if __name__ == "__main__":
    asyncio.run(main())
