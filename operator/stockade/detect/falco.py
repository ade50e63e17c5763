"""Falco events, as Falcosidekick's webhook output posts them, mapped to what they mean for a run.

Pure: a payload in, a ``RuntimeEvent`` out. Falcosidekick posts Falco's JSON unchanged::

    {"uuid": "...", "rule": "Disallowed SSH Connection Non Standard Port", "priority": "Notice",
     "time": "2025-01-01T12:00:00.000000000Z", "source": "syscall", "hostname": "node-1",
     "output": "... Disallowed SSH Connection | connection=10.244.1.5:40112->203.0.113.7:443 ...",
     "output_fields": {"k8s.ns.name": "team-a-run", "k8s.pod.name": "run", "fd.name": "...",
                       "fd.sip": "203.0.113.7", "fd.sport": 443, "fd.l4proto": "tcp",
                       "proc.name": "ssh", "proc.cmdline": "ssh -p 443 user@203.0.113.7"}}

Rule names are those of falcosecurity/rules (stable, incubating, sandbox and the archived
deprecated set). Users rename and write rules, so the stock names are backed by what the fields
show: a Stratum URL or a known miner binary is a miner whatever the rule was called.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from stockade import k8snames

Category = Literal["ssh", "miner", "reverse-shell", "shell", "c2", "connection", "other"]

RULES: dict[str, Category] = {
    # SSH on any port: port 22 to a host not allowed, and the reverse-shell-over-SSH family on others.
    "Disallowed SSH Connection": "ssh",
    "Disallowed SSH Connection Non Standard Port": "ssh",
    # Crypto miners: pool ports and domains, the Stratum protocol, known miner binaries.
    "Detect outbound connections to common miner pool ports": "miner",
    "Detect crypto miners using the Stratum protocol": "miner",
    "Known Cryptominer Process Executed": "miner",
    # Shells: an interactive shell, or a shell whose stdio is a socket (a reverse shell).
    "Terminal shell in container": "shell",
    "Run shell untrusted": "shell",
    "System user interactive": "shell",
    "Redirect STDOUT/STDIN to Network Connection in Container": "reverse-shell",
    "Netcat Remote Code Execution in Container": "reverse-shell",
    "Reverse Shell from Web Server": "reverse-shell",
    # Outbound connections: judged against the run's egress grant, whatever the rule's own lists say.
    "Outbound Connection to C2 Servers": "c2",
    "Unexpected outbound connection destination": "connection",
    "Outbound or Inbound Traffic not to Authorized Server Process and Port": "connection",
    "Network Connection outside Local Subnet": "connection",
    "Interpreted procs outbound network activity": "connection",
    "Unexpected UDP Traffic": "connection",
    "System procs network activity": "connection",
    "Contact K8S API Server From Container": "connection",
    "Contact EC2 Instance Metadata Service From Container": "connection",
    "Contact cloud metadata service from container": "connection",
}
OUTBOUND_RULES = {name for name, cat in RULES.items() if cat in ("ssh", "miner", "c2")} - {
    "Detect crypto miners using the Stratum protocol", "Known Cryptominer Process Executed"}
OUTBOUND_RULES |= {"Unexpected outbound connection destination", "Interpreted procs outbound network activity"}

# falcosecurity/rules falco-sandbox_rules.yaml: miner_binaries, miner_ports; Stratum URL schemes.
MINER_BINARIES = frozenset({
    "xmrig", "xmr-stak", "minerd", "minergate", "cpuminer", "ccminer", "ethminer", "cgminer", "bfgminer",
    "sgminer", "claymore", "nbminer", "t-rex", "gminer", "lolminer", "phoenixminer", "teamredminer",
    "nanominer", "bminer", "wildrig", "srbminer",
})
MINER_PORTS = frozenset({25, 3333, 3334, 3335, 3336, 3357, 4444, 5555, 5556, 5588, 5730, 6099, 6666, 7777,
                         7778, 8000, 8001, 8008, 8080, 8118, 8333, 8888, 8899, 9332, 9999, 14433, 14444,
                         45560, 45700})
STRATUM = ("stratum+tcp", "stratum2+tcp", "stratum+ssl", "stratum2+ssl")
SHELLS = frozenset({"sh", "bash", "ash", "dash", "zsh", "ksh", "csh", "tcsh", "fish", "busybox"})
INBOUND_SYSCALLS = {"accept", "accept4", "listen", "recvfrom", "recvmsg"}
OUTBOUND_SYSCALLS = {"connect", "sendto", "sendmsg"}
PRIORITIES = {"emergency": "critical", "alert": "critical", "critical": "critical", "error": "high",
              "warning": "medium", "notice": "low", "informational": "low", "info": "low", "debug": "low"}


class FalcoPayloadError(ValueError):
    """The body is not a Falco event."""


@dataclass(frozen=True)
class Endpoint:
    ip: str
    port: int | None = None


@dataclass(frozen=True)
class RuntimeEvent:
    rule: str
    priority: str
    time: str
    namespace: str | None
    pod: str | None
    category: Category
    severity: str  # from Falco's priority; the rules raise it for the categories they know
    process: str | None = None
    cmdline: str | None = None
    destination: Endpoint | None = None  # the server end of a connection
    source: Endpoint | None = None  # the client end
    protocol: str | None = None  # TCP | UDP
    outbound: bool | None = None  # None: the event does not say
    output: str = ""
    fields: Mapping[str, Any] = field(default_factory=dict)


def parse(payload: Any) -> RuntimeEvent:
    if not isinstance(payload, Mapping):
        raise FalcoPayloadError("a Falco event is a JSON object")
    rule = payload.get("rule")
    fields = payload.get("output_fields")
    if not isinstance(rule, str) or not rule:
        raise FalcoPayloadError("rule is missing")
    if not isinstance(fields, Mapping):
        raise FalcoPayloadError("output_fields is missing")
    namespace, pod = _k8s_name(fields.get("k8s.ns.name")), _k8s_name(fields.get("k8s.pod.name"))
    # Names as the API server allows them, or the event is refused: they select what is acted on.
    if namespace is not None and not k8snames.is_label(namespace):
        raise FalcoPayloadError(f"k8s.ns.name is not a namespace name (DNS-1123 label): {namespace[:80]!r}")
    if pod is not None and not k8snames.is_subdomain(pod):
        raise FalcoPayloadError(f"k8s.pod.name is not a pod name (DNS-1123 subdomain): {pod[:80]!r}")
    priority = str(payload.get("priority") or "Notice")
    process = _text(fields.get("proc.name"))
    exe = _text(fields.get("proc.exepath")) or _text(fields.get("proc.exe"))
    cmdline = _text(fields.get("proc.cmdline"))
    client, server = _endpoints(fields)
    protocol = _protocol(fields)
    outbound = _outbound(rule, fields, client, server)
    return RuntimeEvent(
        rule=rule,
        priority=priority,
        time=str(payload.get("time") or ""),
        namespace=namespace,
        pod=pod,
        category=categorise(rule, process, exe, cmdline, server if outbound is not False else None),
        severity=PRIORITIES.get(priority.lower(), "medium"),
        process=process,
        cmdline=cmdline,
        destination=server,
        source=client,
        protocol=protocol,
        outbound=outbound,
        output=str(payload.get("output") or ""),
        fields=dict(fields),
    )


def categorise(rule: str, process: str | None, exe: str | None, cmdline: str | None,
               destination: Endpoint | None) -> Category:
    """The stock rule's meaning first; failing that, what the process and connection show."""
    known = RULES.get(rule)
    if known is not None:
        return known
    name = (process or "").lower()
    command = (cmdline or "").lower()
    if any(scheme in command for scheme in STRATUM) or name in MINER_BINARIES:
        return "miner"
    if name in ("ssh", "dropbear", "dbclient") or (exe or "").endswith("/ssh") or (
            destination is not None and destination.port == 22):
        return "ssh"
    if destination is not None:
        return "connection"
    if name in SHELLS:
        return "shell"
    return "other"


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _k8s_name(value: Any) -> str | None:
    """Falco writes <NA> for a field an event does not have (a process outside any pod)."""
    text = _text(value)
    return None if text in (None, "<NA>") else text


def _port(value: Any) -> int | None:
    try:
        port = int(str(value))
    except (TypeError, ValueError):
        return None
    return port if 0 < port < 65536 else None


def normalise_ip(value: Any) -> str | None:
    """A canonical address: IPv6 compressed, IPv4-mapped IPv6 as IPv4, zone and brackets dropped."""
    text = _text(value)
    if text is None:
        return None
    text = text.strip("[]").split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


_BRACKETED = re.compile(r"^\[(?P<ip>[^\]]+)\]:(?P<port>\d+)$")


def _split_endpoint(text: str) -> Endpoint | None:
    """``10.0.0.1:443``, ``[2001:db8::1]:443`` or Falco's unbracketed ``2001:db8::1:443``."""
    match = _BRACKETED.match(text)
    if match:
        ip = normalise_ip(match["ip"])
        return Endpoint(ip, _port(match["port"])) if ip else None
    host, sep, port = text.rpartition(":")
    if not sep:
        ip = normalise_ip(text)
        return Endpoint(ip) if ip else None
    ip = normalise_ip(host)
    return Endpoint(ip, _port(port)) if ip else None


def _endpoints(fields: Mapping[str, Any]) -> tuple[Endpoint | None, Endpoint | None]:
    client = server = None
    name = _text(fields.get("fd.name"))
    if name and "->" in name:
        left, _, right = name.partition("->")
        client, server = _split_endpoint(left), _split_endpoint(right)
    # Explicit fields win over the parsed name; fd.rip/fd.rport are the remote end, which for an
    # outbound connection is the server.
    sip, sport = normalise_ip(fields.get("fd.sip")), _port(fields.get("fd.sport"))
    if sip:
        server = Endpoint(sip, sport if sport is not None else (server.port if server else None))
    cip, cport = normalise_ip(fields.get("fd.cip")), _port(fields.get("fd.cport"))
    if cip:
        client = Endpoint(cip, cport)
    if server is None:
        rip, rport = normalise_ip(fields.get("fd.rip")), _port(fields.get("fd.rport"))
        if rip:
            server = Endpoint(rip, rport)
    elif server.port is None:
        server = Endpoint(server.ip, _port(fields.get("fd.sport")) or _port(fields.get("fd.rport")))
    return client, server


def _protocol(fields: Mapping[str, Any]) -> str | None:
    proto = (_text(fields.get("fd.l4proto")) or "").lower()
    return proto.upper() if proto in ("tcp", "udp", "sctp") else None


def _outbound(rule: str, fields: Mapping[str, Any], client: Endpoint | None, server: Endpoint | None) -> bool | None:
    if server is None:
        return None
    if rule in OUTBOUND_RULES:
        return True
    rip = normalise_ip(fields.get("fd.rip"))
    if rip is not None:
        return rip == server.ip
    lip = normalise_ip(fields.get("fd.lip"))
    if lip is not None:
        return lip != server.ip
    rport, lport = _port(fields.get("fd.rport")), _port(fields.get("fd.lport"))
    if rport is not None and client is not None and server.port is not None and rport != lport:
        return rport == server.port
    syscall = (_text(fields.get("evt.type")) or "").lower()
    if syscall in OUTBOUND_SYSCALLS:
        return True
    if syscall in INBOUND_SYSCALLS:
        return False
    return None
