"""Apply-to-Ready latency of Stockade beside its floor, on the local cluster (`make bench`).

* stockade: create an AgentRun, wait (on a watch) until Ready=True with its pod Running.
* floor: a minimal client creates the same objects directly (namespace, ServiceAccount, quota,
  LimitRange, NetworkPolicies, then the pod once the quota is enforced) and waits for the pod to run.

Both run in the same process against the same cluster in the same session, one at a time and then
N at once. Optionally the operator's RSS with M AgentRuns present. Figures are printed, never asserted.

On a cluster with an audit log (`make bench` starts it with bench/audit-policy.yaml), the API requests
each run cost from creation to Ready, by client, verb and resource (bench/api_requests.py): the
operator runs as a ServiceAccount of its own so that its requests can be told from the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
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
from api_requests import CLIENT_AGENT, OPERATOR_ACCOUNT, AuditLog, Window, audit_log_path, count  # noqa: E402
from api_requests import report as report_requests  # noqa: E402
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

        api = client.CustomObjectsApi(self.kube.api) if "agentruns" in self.path else client.CoreV1Api(self.kube.api)
        while not self._stop.is_set():
            stream = watch.Watch()
            func = (lambda **kw: api.list_cluster_custom_object("stockade.io", "v1alpha1", "agentruns", **kw)) \
                if "agentruns" in self.path else api.list_pod_for_all_namespaces
            try:
                for event in stream.stream(func, label_selector=self.selector, timeout_seconds=60,
                                           _preload_content=True):
                    obj = event["object"]
                    body = obj if isinstance(obj, dict) else self.kube.api.sanitize_for_serialization(obj)
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


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]  # noqa: E731
    return {"n": len(values), "p50": statistics.median(ordered), "p90": pick(0.9), "p99": pick(0.99),
            "max": ordered[-1]}


async def measure(kube: Kube, mode: str, count: int, concurrent: bool, team: str) -> dict[str, float]:
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
    return percentiles([watcher.seen[key(n)] - started[n] for n in names])


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


def operator_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


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
                           operator_user: str, settle: float = 1.0) -> list[str]:
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
                           clients=("client",) if mode == "floor" else ("client", "stockade"))


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


def start_operator(team: str, kubeconfig: Path | None = None, *, traced: bool = False) -> subprocess.Popen[bytes]:
    log = Path(f"/tmp/stockade-bench-operator-{team}.log").open("wb")  # noqa: SIM115 (the child keeps it)
    # This checkout's operator, whichever checkout the virtual environment was installed from.
    env = {**os.environ, "STOCKADE_METRICS_PORT": "0", "PYTHONPATH": str(ROOT / "operator")}
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    for stale in Path("/tmp").glob("stockade-tracemalloc.*") if traced else ():
        stale.unlink()
    command = [str(ROOT / "bench/traced_operator.py")] if traced else ["-m", "stockade.cli"]
    # A free port of its own: kopf reads port 0 as port 80, which a second operator on the machine then lacks.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        liveness = f"http://127.0.0.1:{sock.getsockname()[1]}/healthz"
    return subprocess.Popen([sys.executable, *command, "run", "--liveness", liveness],
                            env=env, stdout=log, stderr=subprocess.STDOUT)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sequential", type=int, default=30, help="runs one at a time")
    parser.add_argument("--concurrent", type=int, default=100, help="runs applied at once")
    parser.add_argument("--memory-runs", type=int, default=0, help="AgentRuns present for the RSS figure (e.g. 1000)")
    parser.add_argument("--operator-pid", type=int, help="measure an operator already running (else one is started)")
    parser.add_argument("--operator-user", help="that operator's username (for the request counts)")
    parser.add_argument("--no-cleanup", action="store_true", help="leave what it made (the cluster is thrown away)")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="run the operator under tracemalloc (bench/traced_operator.py) and print where the "
                             "memory with --memory-runs went (its RSS is then not the figure)")
    parser.add_argument("--request-runs", type=int, default=10,
                        help="runs one at a time whose API requests are counted (needs the audit log)")
    args = parser.parse_args()

    kube = Kube.connect(workers=64)
    kube.api.user_agent = CLIENT_AGENT
    team = f"bench-{uuid.uuid4().hex[:5]}"
    await kube.create({"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": team, "labels": bench_policy.LABEL}})
    await kube.call("PATCH", bench_policy.PATH, bench_policy.POLICY, content_type="application/apply-patch+yaml",
                    query=[("fieldManager", "stockade-bench"), ("force", "true")])
    proc = None
    pid = args.operator_pid
    operator_user = args.operator_user or ""
    if pid is None:
        kubeconfig = Path(f"/tmp/stockade-bench-operator-{team}.kubeconfig")
        operator_user = await operator_kubeconfig(kube, kubeconfig)
        proc = start_operator(team, kubeconfig, traced=args.tracemalloc)
        pid = proc.pid
        await asyncio.sleep(20 if args.tracemalloc else 4)  # traced, the start takes several times longer
    print(f"operator RSS at start: {operator_rss_mb(pid):.0f} MB")
    audit_path = audit_log_path() if args.request_runs else None
    try:
        rows = []
        for label, count, concurrent in (("one at a time", args.sequential, False),
                                         (f"{args.concurrent} at once", args.concurrent, True)):
            if not count:
                continue
            floor = await measure(kube, "floor", count, concurrent, team)
            ours = await measure(kube, "stockade", count, concurrent, team)
            rows.append((label, floor, ours))
        print(f"\napply -> Ready with the pod Running (seconds), local kwok cluster, {time.strftime('%F %T')}")
        print(f"{'scenario':<16}{'':>4}{'n':>6}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}")
        for label, floor, ours in rows:
            for who, fig in (("floor", floor), ("stockade", ours)):
                print(f"{label:<16}{who:>10}{fig['n']:>4.0f}{fig['p50']:>9.3f}{fig['p90']:>9.3f}"
                      f"{fig['p99']:>9.3f}{fig['max']:>9.3f}")
            print(f"{'':<16}{'ratio':>10}{'':>4}{ours['p50'] / floor['p50']:>9.2f}{'':>9}"
                  f"{ours['p99'] / floor['p99']:>9.2f}")
        if audit_path is None:
            print("\nAPI requests per run: not counted (no audit log; start the cluster with "
                  "STOCKADE_AUDIT_POLICY=bench/audit-policy.yaml, as `make bench` does)")
        elif not operator_user:
            print("\nAPI requests per run: not counted (--operator-user is needed with --operator-pid)")
        else:
            audit = AuditLog(audit_path)
            for mode in ("floor", "stockade"):
                print("\n".join(await requests_per_run(kube, audit, mode, args.request_runs, team=team,
                                                          operator_user=operator_user)))
        print(f"\noperator RSS after the runs above: {operator_rss_mb(pid):.0f} MB")
        if args.memory_runs and args.tracemalloc:
            os.kill(pid, signal.SIGUSR2)  # the baseline
        if args.memory_runs:
            sem = asyncio.Semaphore(32)

            async def make(i: int) -> None:
                async with sem:
                    await stockade_one(kube, team, f"m{i:05d}", "memory")

            await asyncio.gather(*(make(i) for i in range(args.memory_runs)))
            watcher = Watcher(kube, "agentruns", "bench=memory", agentrun_ready)
            await wait_all(watcher, [f"{team}/m{i:05d}" for i in range(args.memory_runs)], limit=1800)
            watcher.stop()
            await asyncio.sleep(5)
            print(f"operator RSS with {args.memory_runs} more AgentRuns Ready: {operator_rss_mb(pid):.0f} MB")
            if args.tracemalloc:
                os.kill(pid, signal.SIGUSR2)
                print(await asyncio.to_thread(read_when_written, Path("/tmp/stockade-tracemalloc.1")))
    finally:
        if not args.no_cleanup:
            await cleanup(kube, team)
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    asyncio.run(main())
