"""The operator under test, as a process of the benchmark's: started (and started again) with the same
kubeconfig, metrics port and signal endpoint (plain HTTP on loopback, a bearer token), read from outside."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import stats

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Operator:
    def __init__(self, name: str, kubeconfig: Path | None = None, *, traced: bool = False) -> None:
        self.name, self.kubeconfig, self.traced = name, kubeconfig, traced
        self.metrics_port, self.signal_port = free_port(), free_port()
        self.token = secrets.token_urlsafe(16)
        self.log = Path(f"/tmp/stockade-bench-operator-{name}.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0

    def start(self) -> None:
        """Start it; return once its metrics endpoint answers (its start-up handlers ran)."""
        env = {**os.environ, "PYTHONPATH": str(ROOT / "operator"),  # this checkout's operator, whatever the venv's
               "STOCKADE_METRICS_PORT": str(self.metrics_port), "STOCKADE_SIGNAL_HOST": "127.0.0.1",
               "STOCKADE_SIGNAL_PORT": str(self.signal_port), "STOCKADE_SIGNAL_TOKEN": self.token,
               "STOCKADE_SIGNAL_TLS": "false"}  # loopback only: the figures leave TLS handshakes out
        if self.kubeconfig is not None:
            env["KUBECONFIG"] = str(self.kubeconfig)
        for stale in Path("/tmp").glob("stockade-tracemalloc.*") if self.traced else ():
            stale.unlink()
        command = [str(ROOT / "bench/traced_operator.py")] if self.traced else ["-m", "stockade.cli"]
        # A free liveness port of its own: kopf reads port 0 as port 80, which a second operator then lacks.
        liveness = f"http://127.0.0.1:{free_port()}/healthz"
        log = self.log.open("ab")
        self.proc = subprocess.Popen([sys.executable, *command, "run", "--liveness", liveness],
                                     env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.pid = self.proc.pid
        deadline = time.monotonic() + (120 if self.traced else 60)
        while True:
            try:
                self.metrics()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"the operator did not start; see {self.log}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=60)
            self.proc = None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def metric(self, name: str) -> float:
        """The value of an unlabelled series (NaN when absent)."""
        for line in self.metrics().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return float("nan")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> float:
        return stats.cpu_ticks(Path(f"/proc/{self.pid}/stat").read_text()) / os.sysconf("SC_CLK_TCK")
