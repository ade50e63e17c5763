"""A real NetworkPolicy dataplane for the wire tests (e2e/test_wire.py): network namespaces and packets.

`e2e/cluster.sh dataplane up` makes the node: a network namespace (stockade-<cluster>-node) with a
bridge, no default route, and kube-router enforcing the cluster's NetworkPolicies in it. This module
adds what a kubelet and a CNI plugin would: for each pod a test uses, a network namespace holding the
addresses kwok gave it (status.podIPs), and test hosts beside them; then it opens real connections
from those namespaces with `ip netns exec`.

Every namespace is named after the cluster, so two clusters on one machine never meet, and every
address lives inside them; nothing is added to the machine's own namespace.

IPv4 only: kube-router v2.1.0's dual-stack has two bugs fixed after that release (IPv6 rules name
ipsets without their `inet6:` prefix, kube-router #1653; each family's ipset handler restores the other
family's stale sets, #1665), which made both families' enforcement wrong in about half the rounds.
IPv6 policies stay covered by the evaluator (e2e/test_network.py, cyclonus).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = os.environ.get("STOCKADE_CLUSTER_NAME", "stockade")
PREFIX = f"stockade-{CLUSTER}"
NODE = f"{PREFIX}-node"
GATEWAY = "169.254.1.1"  # on the node's bridge (cluster.sh): every namespace's default gateway

# A listener in a namespace: TCP echoes what it reads until the peer closes; UDP answers each datagram.
_SERVE = r"""
import socket, sys, threading
proto, port = sys.argv[1], int(sys.argv[2])
if proto == "UDP":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    print("listening", flush=True)
    while True:
        data, peer = s.recvfrom(4096)
        s.sendto(data, peer)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
s.listen(64)
print("listening", flush=True)
def echo(c):
    with c:
        while data := c.recv(4096):
            c.sendall(data)
while True:
    threading.Thread(target=echo, args=(s.accept()[0],), daemon=True).start()
"""

# One bounded client call: "open" once the listener answered, "refused" (a REJECT or nothing listening),
# "timeout" (dropped), or the errno.
_PROBE = r"""
import socket, sys
proto, host, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
try:
    if proto == "UDP":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(timeout)
        s.connect((host, port))
        s.send(b"probe")
        s.recv(64)
    else:
        s = socket.create_connection((host, port), timeout=timeout)
        s.sendall(b"probe")
        s.recv(64)
    print("open")
except ConnectionRefusedError:
    print("refused")
except (TimeoutError, socket.timeout):
    print("timeout")
except OSError as err:
    print(f"errno {err.errno}")
"""

# A long-lived connection (an SSH tunnel's shape): each line on stdin sends a byte and reports whether
# the echo came back.
_HOLD = r"""
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((host, port), timeout=2)
print("connected", flush=True)
for _ in sys.stdin:
    try:
        s.sendall(b"x")
        print("ok" if s.recv(1) == b"x" else "closed", flush=True)
    except OSError as err:
        print(f"cut {err.errno}", flush=True)
"""


def ip(*args: str, check: bool = True) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
    return result.stdout


def in_netns(netns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", netns, *cmd]


def _mac(netns: str, device: str) -> str:
    return ip("-n", netns, "-br", "link", "show", device).split()[2]


@dataclass
class Endpoint:
    """A network namespace on the node's bridge: a pod's sandbox or a test host."""

    netns: str
    addresses: list[str]
    name: str = ""
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    def listen(self, port: int, proto: str = "TCP") -> None:
        proc = subprocess.Popen(in_netns(self.netns, sys.executable, "-c", _SERVE, proto, str(port)),
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.processes.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "listening", \
            f"listener {proto}/{port} in {self.netns} did not start"

    def connect(self, host: str, port: int, proto: str = "TCP", timeout: float = 1.0) -> str:
        out = subprocess.run(in_netns(self.netns, sys.executable, "-c", _PROBE, proto, host, str(port), str(timeout)),
                             capture_output=True, text=True, timeout=timeout + 30, check=False)
        return out.stdout.strip() or f"failed: {out.stderr.strip()}"

    def hold(self, host: str, port: int) -> Held:
        proc = subprocess.Popen(in_netns(self.netns, sys.executable, "-u", "-c", _HOLD, host, str(port)),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.processes.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "connected", \
            f"no connection from {self.netns} to {host}:{port}"
        return Held(proc)


@dataclass
class Held:
    proc: subprocess.Popen[str]

    def passes(self) -> bool:
        """A byte there and back over the open connection (False once the connection or its process is gone)."""
        import select

        if self.proc.poll() is not None or self.proc.stdin is None or self.proc.stdout is None:
            return False
        try:
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
        except OSError:
            return False
        ready, _, _ = select.select([self.proc.stdout], [], [], 3)
        return bool(ready) and self.proc.stdout.readline().strip() == "ok"


class Dataplane:
    """The node namespace (made by cluster.sh) and the endpoints a test adds to it."""

    def __init__(self) -> None:
        self.endpoints: dict[str, Endpoint] = {}
        self.node = Endpoint(NODE, [])  # probes from the node see listeners as no pod policy does

    def attach(self, name: str, addresses: list[str]) -> Endpoint:
        """A namespace with these /32 addresses behind a veth on the bridge, routed both ways with static
        neighbour entries (no ARP needed through the pods' firewall chains)."""
        netns = f"{PREFIX}-{name}"
        peer = "v" + hashlib.sha256(netns.encode()).hexdigest()[:12]  # device names: 15 characters at most
        ip("netns", "add", netns)
        endpoint = Endpoint(netns, addresses, name)
        self.endpoints[name] = endpoint
        ip("-n", netns, "link", "set", "lo", "up")
        ip("-n", NODE, "link", "add", peer, "type", "veth", "peer", "name", "eth0", "netns", netns)
        ip("-n", NODE, "link", "set", peer, "master", "br0", "up")
        ip("-n", netns, "link", "set", "eth0", "up")
        for address in addresses:
            ip("-n", netns, "addr", "add", f"{address}/32", "dev", "eth0")
        ip("-n", netns, "route", "add", GATEWAY, "dev", "eth0", "scope", "link")
        ip("-n", netns, "route", "add", "default", "via", GATEWAY, "dev", "eth0")
        ip("-n", netns, "neigh", "replace", GATEWAY, "lladdr", _mac(NODE, "br0"), "dev", "eth0", "nud", "permanent")
        mac = _mac(netns, "eth0")
        for address in addresses:
            ip("-n", NODE, "route", "replace", f"{address}/32", "dev", "br0")
            ip("-n", NODE, "neigh", "replace", address, "lladdr", mac, "dev", "br0", "nud", "permanent")
        return endpoint

    def sandbox(self, pod: dict[str, Any]) -> Endpoint:
        """What a kubelet and CNI plugin make for a pod: its namespace with the addresses kwok gave it."""
        addresses = [a["ip"] for a in pod["status"].get("podIPs") or []
                     if ipaddress.ip_address(a["ip"]).version == 4]
        assert addresses, f"pod {pod['metadata']['name']} has no IPv4 address: {pod['status']}"
        return self.attach(f"pod-{pod['metadata']['uid'][:8]}", addresses)

    def detach(self, name: str) -> None:
        """What a kubelet does when a pod goes: its processes are killed and its sandbox removed."""
        endpoint = self.endpoints.pop(name, None)
        if endpoint is None:
            return
        for proc in endpoint.processes:
            proc.kill()
            proc.wait(timeout=10)
        for pid in ip("netns", "pids", endpoint.netns, check=False).split():
            subprocess.run(["kill", "-KILL", pid], check=False, capture_output=True)
        ip("netns", "delete", endpoint.netns, check=False)
        for address in endpoint.addresses:
            ip("-n", NODE, "neigh", "del", address, "dev", "br0", check=False)
            ip("-n", NODE, "route", "del", f"{address}/32", check=False)

    def conntrack_established(self, source: str) -> list[str]:
        """The node's ESTABLISHED TCP conntrack entries from this address."""
        out = subprocess.run(in_netns(NODE, "conntrack", "-L", "-p", "tcp", "-s", source, "--state", "ESTABLISHED"),
                             capture_output=True, text=True, timeout=30, check=False)
        return [line for line in out.stdout.splitlines() if line.strip()]

    def close(self) -> None:
        for name in list(self.endpoints):
            self.detach(name)


def kube_router_log(lines: int = 40) -> str:
    """The end of kube-router's log (cluster.sh keeps it beside its pid file), for a failure message."""
    cache = Path(os.environ.get("STOCKADE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                 / "stockade")
    path = cache / "dataplane" / CLUSTER / "kube-router.log"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else f"no {path}"


def cluster_sh(*args: str) -> str:
    out = subprocess.run([str(ROOT / "e2e/cluster.sh"), *args], capture_output=True, text=True, timeout=900,
                         check=False, env={**os.environ, "STOCKADE_CLUSTER_NAME": CLUSTER})
    if out.returncode != 0:
        raise RuntimeError(f"cluster.sh {' '.join(args)} exited {out.returncode}:\n{out.stderr[-3000:]}")
    return out.stdout
