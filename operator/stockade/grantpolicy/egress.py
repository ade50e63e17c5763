"""Egress destinations within an allowlist: CIDRs inside CIDRs (IPv4 and IPv6), host names against
exact or "*." wildcard names, ports and protocols."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=4096)  # the same few CIDRs come back in every request: parse each once
def network(text: str) -> Network:
    """A CIDR as the NetworkPolicy takes it (host bits may be set: 10.1.2.3/8 is 10.0.0.0/8)."""
    return ipaddress.ip_network(text.strip(), strict=False)


def cidr_within(asked: str, allowed: Sequence[Network]) -> bool:
    try:
        net = network(asked)
    except ValueError:
        return False  # not a CIDR at all: within nothing
    return any(net.version == outer.version and net.subnet_of(outer) for outer in allowed)  # type: ignore[arg-type]


def host_matches(pattern: str, host: str) -> bool:
    """"*" any name; "*.example.com" any name below example.com (not example.com itself); else exact."""
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return pattern == host


def host_within(host: str, allowed: Sequence[str]) -> bool:
    return any(host_matches(pattern, host) for pattern in allowed)
