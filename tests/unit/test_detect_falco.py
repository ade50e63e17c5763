"""Falco events as Falcosidekick posts them -> RuntimeEvent: table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from stockade.detect import falco
from stockade.detect.falco import Endpoint


def event(rule: str, priority: str = "Notice", **fields: Any) -> dict[str, Any]:
    base = {"k8s.ns.name": "team-a-rome", "k8s.pod.name": "rome"}
    base.update(fields)
    return {"uuid": "4d2b3c1e", "rule": rule, "priority": priority, "time": "2025-06-01T12:00:00.123456789Z",
            "source": "syscall", "hostname": "node-1", "tags": ["network"],
            "output": f"12:00:00.123456789: {priority} {rule}", "output_fields": base}


SSH_NONSTD = event("Disallowed SSH Connection Non Standard Port", **{
    "fd.name": "10.244.1.5:40112->203.0.113.7:443", "fd.lport": 40112, "fd.rport": 443, "fd.type": "ipv4",
    "fd.l4proto": "tcp", "evt.type": "connect", "proc.name": "ssh", "proc.exepath": "/usr/bin/ssh",
    "proc.cmdline": "ssh -p 443 git@203.0.113.7"})
SSH_22 = event("Disallowed SSH Connection", **{"fd.name": "10.244.1.5:40112->198.51.100.9:22", "fd.lport": 40112,
                                               "fd.rport": 22, "proc.name": "ssh"})
STRATUM = event("Detect crypto miners using the Stratum protocol", "Critical", **{
    "proc.name": "xmrig", "proc.cmdline": "xmrig -o stratum+tcp://pool.example:3333 -u wallet"})
MINER_POOL = event("Detect outbound connections to common miner pool ports", "Critical", **{
    "fd.rip": "192.0.2.44", "fd.rport": 3333, "fd.lip": "10.244.1.5", "fd.lport": 51000,
    "fd.name": "10.244.1.5:51000->192.0.2.44:3333", "fd.l4proto": "tcp", "proc.name": "kworker"})
SHELL = event("Terminal shell in container", **{"proc.name": "bash", "proc.cmdline": "bash -i", "proc.tty": 34816})
REVERSE = event("Redirect STDOUT/STDIN to Network Connection in Container", **{
    "fd.sip": "203.0.113.50", "fd.name": "10.244.1.5:41000->203.0.113.50:4444", "fd.lport": 41000, "fd.rport": 4444,
    "proc.name": "sh"})
IPV6_BRACKETS = event("Unexpected outbound connection destination", **{
    "fd.name": "[2001:db8::5]:50000->[2001:db8:beef::1]:443", "fd.l4proto": "tcp"})
IPV6_PLAIN = event("Network Connection outside Local Subnet", **{
    "fd.name": "2001:db8::5:50000->2001:db8:beef::1:8443", "fd.lport": 50000, "fd.rport": 8443,
    "fd.l4proto": "tcp"})
IPV4_MAPPED = event("Interpreted procs outbound network activity", **{
    "fd.sip": "::ffff:198.51.100.20", "fd.sport": 443, "fd.l4proto": "tcp", "proc.name": "python3"})
INBOUND = event("Unexpected UDP Traffic", **{
    "fd.name": "198.51.100.3:5353->10.244.1.5:9999", "fd.lip": "10.244.1.5", "fd.l4proto": "udp",
    "evt.type": "recvfrom"})
CUSTOM_MINER = event("my team's rule", **{"proc.name": "xmrig"})
CUSTOM_SSH = event("my team's rule", **{"fd.name": "10.244.1.5:1->203.0.113.1:22", "evt.type": "connect"})
OTHER = event("Read sensitive file untrusted", "Warning", **{"fd.name": "/etc/shadow", "proc.name": "cat"})


@pytest.mark.parametrize(("payload", "category", "destination", "protocol", "outbound", "severity"), [
    (SSH_NONSTD, "ssh", Endpoint("203.0.113.7", 443), "TCP", True, "low"),
    (SSH_22, "ssh", Endpoint("198.51.100.9", 22), None, True, "low"),
    (STRATUM, "miner", None, None, None, "critical"),
    (MINER_POOL, "miner", Endpoint("192.0.2.44", 3333), "TCP", True, "critical"),
    (SHELL, "shell", None, None, None, "low"),
    (REVERSE, "reverse-shell", Endpoint("203.0.113.50", 4444), None, True, "low"),
    (IPV6_BRACKETS, "connection", Endpoint("2001:db8:beef::1", 443), "TCP", True, "low"),
    (IPV6_PLAIN, "connection", Endpoint("2001:db8:beef::1", 8443), "TCP", True, "low"),
    (IPV4_MAPPED, "connection", Endpoint("198.51.100.20", 443), "TCP", True, "low"),
    (INBOUND, "connection", Endpoint("10.244.1.5", 9999), "UDP", False, "low"),
    (CUSTOM_MINER, "miner", None, None, None, "low"),
    (CUSTOM_SSH, "ssh", Endpoint("203.0.113.1", 22), None, True, "low"),
    (OTHER, "other", None, None, None, "medium"),
], ids=["ssh-nonstandard", "ssh-22", "stratum", "miner-pool", "shell", "reverse-shell", "ipv6-brackets",
        "ipv6-plain", "ipv4-mapped", "inbound", "custom-miner", "custom-ssh", "other"])
def test_parse(payload: dict[str, Any], *, category: str, destination: Endpoint | None, protocol: str | None,
               outbound: bool | None, severity: str) -> None:
    parsed = falco.parse(payload)
    assert parsed.category == category
    assert parsed.destination == destination
    assert parsed.protocol == protocol
    assert parsed.outbound is outbound
    assert parsed.severity == severity
    assert (parsed.namespace, parsed.pod) == ("team-a-rome", "rome")
    assert parsed.rule == payload["rule"]


@pytest.mark.parametrize(("payload", "message"), [
    ([], "JSON object"),
    ({"output_fields": {}}, "rule"),
    ({"rule": "x"}, "output_fields"),
    ({"rule": "", "output_fields": {}}, "rule"),
])
def test_not_a_falco_event(payload: Any, message: str) -> None:
    with pytest.raises(falco.FalcoPayloadError, match=message):
        falco.parse(payload)


@pytest.mark.parametrize(("value", "expected"), [
    ("10.0.0.1", "10.0.0.1"), ("[2001:DB8::1]", "2001:db8::1"), ("fe80::1%eth0", "fe80::1"),
    ("::ffff:10.1.2.3", "10.1.2.3"), ("not-an-ip", None), (None, None), ("", None),
])
def test_normalise_ip(value: Any, expected: str | None) -> None:
    assert falco.normalise_ip(value) == expected


def test_event_without_pod_fields_has_no_pod() -> None:
    payload = event("Terminal shell in container")
    del payload["output_fields"]["k8s.pod.name"]
    assert falco.parse(payload).pod is None


@pytest.mark.parametrize(("field", "value"), [
    ("k8s.pod.name", "../../kube-system/pods/probe-victim"),
    ("k8s.pod.name", "a/b"),
    ("k8s.pod.name", "%2e%2e"),
    ("k8s.pod.name", "Rome"),
    ("k8s.pod.name", "x" * 254),
    ("k8s.ns.name", "../kube-system"),
    ("k8s.ns.name", "a.b"),  # a namespace is a DNS-1123 label: no dots
    ("k8s.ns.name", "n" * 64),
])
def test_names_that_are_not_kubernetes_names_are_refused(field: str, value: str) -> None:
    payload = event("Terminal shell in container", **{field: value, "proc.name": "bash"})
    with pytest.raises(falco.FalcoPayloadError, match=field):
        falco.parse(payload)


def test_falco_not_available_marker_is_no_name() -> None:
    parsed = falco.parse(event("Terminal shell in container", **{"k8s.ns.name": "<NA>", "k8s.pod.name": "<NA>"}))
    assert parsed.namespace is None and parsed.pod is None
    dotted = falco.parse(event("Terminal shell in container", **{"k8s.pod.name": "rome.v2-0"}))
    assert dotted.pod == "rome.v2-0"
