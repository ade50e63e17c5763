"""Resolve granted egress hosts to IPv4 and IPv6 addresses, and say when to look again.

A NetworkPolicy takes addresses, not names, so a granted host is enforced as the addresses it
resolves to now; they are refreshed when the records' TTL runs out (bounded below and above), so a
record that changes moves the policy with it. A failed lookup keeps the last good answer rather
than widening anything: an unresolved host allows nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

from stockade.plan import address_order

log = logging.getLogger("stockade.dns")


@dataclass
class _Entry:
    addresses: list[str]
    expires: float
    failed: bool = False  # the last lookup failed (not an answer): its addresses are an earlier answer's


class HostResolver:
    def __init__(self, servers: list[str] | None = None, min_refresh: float = 5.0, max_refresh: float = 300.0,
                 timeout: float = 2.0) -> None:
        self.min_refresh = min_refresh
        self.max_refresh = max_refresh
        self._cache: dict[str, _Entry] = {}
        servers = servers or []
        self._resolver = dns.asyncresolver.Resolver(configure=not servers)
        if servers:
            hosts, ports = zip(*(_split(s) for s in servers), strict=True)
            self._resolver.nameservers = list(hosts)
            self._resolver.port = ports[0]
        self._resolver.lifetime = timeout
        self._resolver.cache = None  # TTLs are handled here; a second cache would delay changes

    async def resolve(self, hosts: list[str]) -> tuple[dict[str, list[str]], float | None]:
        """Addresses for each host, and the seconds until the earliest one should be looked up again."""
        if not hosts:
            return {}, None
        now = time.monotonic()
        stale = [h for h in hosts if h not in self._cache or self._cache[h].expires <= now]
        if stale:
            await asyncio.gather(*(self._lookup(h) for h in stale))
        result = {h: list(self._cache[h].addresses) for h in hosts}
        refresh = min(self._cache[h].expires for h in hosts) - time.monotonic()
        return result, max(refresh, 0.0)

    def stale(self, hosts: list[str]) -> list[str]:
        """The hosts whose last lookup failed and that are enforced as the addresses of an earlier one."""
        return [h for h in hosts if (e := self._cache.get(h)) is not None and e.failed and e.addresses]

    async def _lookup(self, host: str) -> None:
        addresses: list[str] = []
        ttl: float | None = None
        failed = False
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._resolver.resolve(host, rdtype, search=False)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                continue
            except (dns.exception.DNSException, OSError) as err:
                log.warning("looking up %s %s failed: %s", rdtype, host, err)
                failed = True
                continue
            addresses += [str(ipaddress.ip_address(r.to_text())) for r in answer]
            if answer.rrset is not None:
                ttl = answer.rrset.ttl if ttl is None else min(ttl, answer.rrset.ttl)
        previous = self._cache.get(host)
        if failed and previous is not None:
            addresses = list(set(addresses) | set(previous.addresses))
        wait = self.min_refresh if failed or ttl is None else min(max(ttl, self.min_refresh), self.max_refresh)
        self._cache[host] = _Entry(sorted(set(addresses), key=address_order), time.monotonic() + wait, failed)


def _split(server: str) -> tuple[str, int]:
    if server.startswith("["):  # [::1]:53
        host, _, port = server[1:].partition("]:")
        return host, int(port or 53)
    if server.count(":") == 1:
        host, port = server.split(":")
        return host, int(port)
    return server, 53
