"""E2e fixtures: the real local cluster, the operator as a process, a real DNS server.

Every assertion reads what the API server holds (kubectl against the live cluster); nothing here
fakes the API.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from . import chart
from .chart import free_port

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def _bin_dir() -> Path:
    found = os.environ.get("STOCKADE_BIN")
    if found:
        return Path(found)
    out = subprocess.run([str(ROOT / "e2e/cluster.sh"), "bindir"], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


BIN = _bin_dir()


def _kubeconfig() -> str:
    found = os.environ.get("KUBECONFIG")
    if found:
        return found
    out = subprocess.run([str(ROOT / "e2e/cluster.sh"), "up"], check=True, capture_output=True, text=True)
    os.environ["KUBECONFIG"] = out.stdout.strip().splitlines()[-1]
    return os.environ["KUBECONFIG"]


KUBECONFIG = _kubeconfig()


class KubectlError(Exception):
    def __init__(self, args: list[str], code: int, stderr: str) -> None:
        super().__init__(f"kubectl {' '.join(args)} exited {code}: {stderr}")
        self.stderr = stderr


# Break-glass: the chart is installed with this group exempt from Stockade's admission, and BREAK_GLASS
# (a user in it, and in system:masters for RBAC) stands for a platform admin changing a fence by hand.
BREAK_GLASS_GROUP = "stockade:e2e-break-glass"
BREAK_GLASS = "e2e-platform-admin"


def kubectl(*args: str, stdin: str | None = None, as_user: str | None = None, check: bool = True) -> str:
    cmd = [str(BIN / "kubectl"), "--kubeconfig", KUBECONFIG, *args]
    if as_user:
        cmd += ["--as", as_user]
        if as_user == BREAK_GLASS:
            cmd += ["--as-group", BREAK_GLASS_GROUP, "--as-group", "system:masters"]
    result = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60, check=False)
    if check and result.returncode != 0:
        raise KubectlError(list(args), result.returncode, result.stderr)
    return result.stdout


def apply(obj: dict[str, Any] | list[dict[str, Any]], as_user: str | None = None, server_side: bool = False) -> str:
    docs = obj if isinstance(obj, list) else [obj]
    args = ["apply", "-f", "-"] + (["--server-side", "--field-manager=e2e"] if server_side else [])
    # JSON, not PyYAML: PyYAML leaves a string such as 0924e7 (a uuid's hex) unquoted, which kubectl reads as
    # a number (a label value that is no string: the apply fails now and then).
    return kubectl(*args, stdin="\n---\n".join(json.dumps(doc) for doc in docs), as_user=as_user)


def create(obj: dict[str, Any], as_user: str | None = None) -> str:
    return kubectl("create", "-f", "-", stdin=yaml.safe_dump(obj), as_user=as_user)


def get(kind: str, name: str | None = None, namespace: str | None = None, selector: str | None = None) -> Any:
    args = ["get", kind]
    if name:
        args.append(name)
    if namespace:
        args += ["-n", namespace]
    if selector:
        args += ["-l", selector]
    args += ["-o", "json"] + (["--ignore-not-found"] if name else [])
    out = kubectl(*args)
    return json.loads(out) if out.strip() else None


def wait_for(check: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.1, what: str = "") -> T:
    """Poll until ``check`` returns something truthy; fail with the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except KubectlError as err:
            last = err
        if last:
            return last  # type: ignore[return-value]
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or check}: last value {last!r}")


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == kind:
            return dict(cond)
    return {}


def answers_ok(url: str, timeout: float = 1) -> bool:
    """A readiness probe: True on HTTP 200, False while nothing (or an error) answers."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def wait_established(*objects: str, tries: int = 30) -> subprocess.CompletedProcess[str]:
    """`make run`'s wait for CRDs (e2e/cluster.sh established): tolerates the empty status right after an apply."""
    return subprocess.run([str(ROOT / "e2e/cluster.sh"), "established", str(BIN / "kubectl"), *objects],
                          env={**os.environ, "KUBECONFIG": KUBECONFIG, "STOCKADE_ESTABLISHED_TRIES": str(tries)},
                          capture_output=True, text=True, timeout=tries * 4 + 30, check=False)


def established(*objects: str) -> None:
    done = wait_established(*objects)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="session")
def crds() -> None:
    kubectl("apply", "--server-side", "--field-manager=stockade-install", "-f", str(ROOT / "crds"))
    established("crd/agentruns.stockade.io", "crd/agentpolicies.stockade.io")


def helm(*args: str) -> str:
    result = subprocess.run([str(BIN / "helm"), "--kubeconfig", KUBECONFIG, *args], capture_output=True, text=True,
                            timeout=300, check=False)
    if result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


@pytest.fixture(scope="session")
def installed_chart(crds: None) -> dict[str, Any]:
    """Both charts installed as a user would (the CRD chart takes over the CRDs applied above): the
    operator's ServiceAccount, RBAC, admission policies and (empty) webhook configurations. Returns the
    chart's Deployment, whose pod the operator fixture runs on this machine."""
    helm("upgrade", "--install", chart.CRD_RELEASE, str(ROOT / "charts/stockade-crds"), "--namespace",
         chart.NAMESPACE, "--create-namespace", "--take-ownership")
    established("crd/clusterkopfpeerings.kopf.dev")
    # --take-ownership: `make run` on this cluster leaves the same webhook configurations and policies.
    # e2e/values-policy.yaml: the chart's default AgentPolicy made permissive for the fence tests.
    helm("upgrade", "--install", chart.RELEASE, str(ROOT / "charts/stockade"), "--namespace", chart.NAMESPACE,
         "--take-ownership", "--set", f"admissionPolicy.exemptGroups={{{BREAK_GLASS_GROUP}}}",
         "-f", str(ROOT / "e2e" / "values-policy.yaml"))
    deployment: dict[str, Any] = get("deployment", chart.RELEASE, chart.NAMESPACE)
    return deployment


class Dnsmasq:
    """A real DNS server on loopback whose records the tests change (dnsmasq from Debian)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.hosts = workdir / "hosts"
        self.hosts.write_text("")
        binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        self.proc = subprocess.Popen(
            [binary, "--keep-in-foreground", "--no-resolv", "--no-hosts", f"--addn-hosts={self.hosts}",
             "--local=/test/", "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={self.port}",
             "--local-ttl=1", "--user=root", "--pid-file=", "--log-facility=-"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(self._answers, timeout=10, what="dnsmasq to answer")

    def _answers(self) -> bool:
        import dns.message
        import dns.query

        try:
            dns.query.udp(dns.message.make_query("probe.invalid", "A"), "127.0.0.1", port=self.port, timeout=0.5)
        except (OSError, dns.exception.Timeout):
            return False
        return True

    def set(self, records: dict[str, list[str]]) -> None:
        lines = [f"{address} {host}" for host, addresses in records.items() for address in addresses]
        self.hosts.write_text("\n".join(lines) + "\n")
        self.proc.send_signal(signal.SIGHUP)  # dnsmasq re-reads addn-hosts on SIGHUP

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def dnsmasq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsmasq]:
    server = Dnsmasq(tmp_path_factory.mktemp("dns"))
    yield server
    server.stop()


def die_with_parent() -> None:
    """In the child before exec: SIGKILL it when pytest goes, however pytest ends (a timeout, a kill), so
    that no operator outlives its test run and fights the next one over the same cluster."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class Operator:
    """The operator as a real process (`stockade run` with the chart's arguments), restartable and killable
    mid-flight."""

    def __init__(self, logdir: Path, env: dict[str, str], args: list[str]) -> None:
        self.logdir = logdir
        self.env = env
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = int(env["STOCKADE_METRICS_PORT"])
        self.health_port = free_port()
        self.starts = 0
        self.excused: list[tuple[str, str]] = []

    def start(self) -> None:
        self.starts += 1
        log = (self.logdir / f"operator-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stockade.cli", *self.args, f"--liveness=http://127.0.0.1:{self.health_port}/healthz"],
            env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            preexec_fn=die_with_parent,  # noqa: PLW1509  (one prctl call, no locks taken)
        )
        wait_for(self._healthy, timeout=60, what="the operator's liveness endpoint")

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}: {self.log_tail()}")
        return answers_ok(f"http://127.0.0.1:{self.health_port}/healthz") and self._webhook_listens()

    def _webhook_listens(self) -> bool:
        """Liveness comes up before the webhook server does; AgentRuns (fail-closed) need the webhook."""
        port = self.env.get("STOCKADE_WEBHOOK_PORT")
        if not port:
            return True
        try:
            with socket.create_connection(("127.0.0.1", int(port)), timeout=1):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no cleanup, no graceful exit, as if the node died."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def logs(self) -> list[str]:
        return [line for path in sorted(self.logdir.glob("operator-*.log"))
                for line in path.read_text(errors="replace").splitlines()]

    def excuse(self, start: str, end: str) -> None:
        """Refusals logged between these ISO times do not fail the RBAC check: a restarted API server
        refuses everything until its authorizer has synced (fault tests)."""
        self.excused.append((start, end))

    def _excused(self, line: str) -> bool:
        found = re.search(r'"timestamp": "([^"]+)"', line)
        return bool(found) and any(start <= found.group(1) <= end for start, end in self.excused)

    def assert_never_refused_by_rbac(self) -> None:
        refused = [line for line in chart.rbac_refusals(self.logs()) if not self._excused(line)]
        assert not refused, "the operator was refused with the chart's identity:\n" + "\n".join(refused[:20])

    def log_tail(self, lines: int = 60) -> str:
        logs = sorted(self.logdir.glob("operator-*.log"))
        return "\n".join(logs[-1].read_text(errors="replace").splitlines()[-lines:]) if logs else ""


@contextlib.contextmanager
def operator_instead(operator: Operator, home: Path, **env: str) -> Iterator[Operator]:
    """The session operator stopped, and one with the same identity and settings plus ``env`` in its place
    (a relayed API server, a signal token); the session operator is started again afterwards."""
    operator.stop()
    mine = Operator(home, {**operator.env, **env}, operator.args)
    try:
        mine.start()
        yield mine
    finally:
        mine.stop()
        operator.start()
    mine.assert_never_refused_by_rbac()


def operator_env(deployment: dict[str, Any], dnsmasq: Dnsmasq, kubeconfig: Path) -> dict[str, str]:
    """The chart pod's environment and ServiceAccount, plus what points it at this machine's DNS server."""
    env = chart.operator_env(deployment, kubectl)
    env.update({
        "STOCKADE_DNS_SERVERS": json.dumps([f"127.0.0.1:{dnsmasq.port}"]),
        "STOCKADE_DNS_MIN_REFRESH_SECONDS": "1",
        "KUBECONFIG": str(kubeconfig),
    })
    return env


@pytest.fixture(scope="session")
def operator(installed_chart: dict[str, Any], dnsmasq: Dnsmasq,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """The operator with nothing but the chart's identity: a missing permission fails the suite."""
    home = tmp_path_factory.mktemp("operator")
    kubeconfig = chart.serviceaccount_kubeconfig(kubectl, home / "kubeconfig")
    op = Operator(home, operator_env(installed_chart, dnsmasq, kubeconfig), chart.operator_args(installed_chart))
    op.start()
    yield op
    op.stop()
    op.assert_never_refused_by_rbac()


@pytest.fixture
def team_namespace() -> Iterator[str]:
    """A fresh namespace for the team that owns the AgentRun."""
    name = f"team-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "agentruns", "--all", "-n", name, "--wait=false", check=False)
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def agentrun(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "stockade.io/v1alpha1", "kind": "AgentRun",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def simple_spec(**grant: Any) -> dict[str, Any]:
    base_grant: dict[str, Any] = {"cpu": "2", "memory": "4Gi", "pods": 1}
    base_grant.update(grant)
    return {
        "template": {"spec": {"containers": [{"name": "agent", "image": "registry.example/agent:1"}]}},
        "grant": base_grant,
    }


def gpu_spec(**grant: Any) -> dict[str, Any]:
    spec = simple_spec(gpu=1, gpuResource="nvidia.com/gpu", **grant)
    spec["template"]["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "1", "memory": "2Gi",
                                                                         "nvidia.com/gpu": "1"}}
    return spec


def wait_gpu_charged(run_namespace: str, gpus: str = "1") -> None:
    """Wait for the run's quota to charge its GPUs. Quota admission charges a pod at creation, but the
    quota controller can overwrite that with a count from a pod cache that has not seen the pod yet (a
    Kubernetes race), until its next sync (15 s on the local cluster)."""
    wait_for(lambda: (get("resourcequota", "stockade-grant", run_namespace)["status"].get("used") or {})
             .get("requests.nvidia.com/gpu") == gpus, timeout=40, what="the quota to charge the agent's GPUs")


def ready(namespace: str, name: str) -> dict[str, Any] | None:
    obj = get("agentrun", name, namespace)
    if obj and condition(obj, "Ready").get("status") == "True" and \
            obj["status"].get("observedGeneration") == obj["metadata"]["generation"]:
        return dict(obj)
    return None
