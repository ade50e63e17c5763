"""Whether a run's granted egress hosts resolved: the ``EgressResolved`` condition and its Events (pure).

A host is enforced as the addresses it resolves to (dnsresolve.py), so a host that resolves to nothing
allows nothing: the fence holds, but the agent cannot reach what it was granted. That is not a reason
to hold the run (``Ready`` keeps its meaning: the fence is complete and the agent runs), but it must
not read as fine either: ``EgressResolved=False`` with reason ``HostUnresolved`` names the hosts, and a
Warning Event says it once per change of which hosts are unresolved.

A host whose last lookup failed (a timeout, SERVFAIL) keeps the addresses of its last good answer and
counts as resolved, with reason ``LastKnownAddresses`` naming it; an answer that the name does not
exist (NXDOMAIN) or has no address is authoritative and leaves the host unresolved.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from stockade.api.reasons import ALL_HOSTS_RESOLVED, HOST_UNRESOLVED, LAST_KNOWN_ADDRESSES, NO_HOSTS_GRANTED
from stockade.kubeapi import EmitEvent
from stockade.store import RunKey

Resolution = tuple[bool, str, str]  # (resolved, reason, message): the EgressResolved condition


def _names(hosts: Sequence[str]) -> str:
    return ", ".join(hosts)


def egress_resolution(hosts: Sequence[str], resolved: Mapping[str, Sequence[str]],
                      stale: Collection[str] = ()) -> Resolution:
    """The condition for the granted ``hosts`` given what they resolved to (``stale``: hosts whose last
    lookup failed and that are enforced as the addresses of an earlier one)."""
    if not hosts:
        return True, NO_HOSTS_GRANTED, "the grant names no egress host (CIDRs need no lookup)"
    unresolved = [h for h in hosts if not resolved.get(h)]
    kept = [h for h in hosts if h in stale and resolved.get(h)]
    kept_note = f"; {_names(kept)}: the last lookup failed, the addresses of an earlier one are kept" if kept \
        else ""
    if unresolved:
        them, they = ("it", "it resolves") if len(unresolved) == 1 else ("them", "they resolve")
        return False, HOST_UNRESOLVED, (f"no address found for {_names(unresolved)}: the agent cannot reach "
                                        f"{them} until {they} (looked up again every few seconds){kept_note}")
    if kept:
        return True, LAST_KNOWN_ADDRESSES, f"every granted host has addresses{kept_note}"
    return True, ALL_HOSTS_RESOLVED, f"every granted host resolved: {_names(hosts)}"




class EgressEvents:
    """A Warning when a run's hosts stop resolving (once per set of unresolved hosts, not per reconcile)
    and a Normal Event when they all resolve again. What was said last is remembered here and read back
    from the run's persisted condition, so neither a status write that comes a round later nor an
    operator restart repeats an Event."""

    def __init__(self, emit: EmitEvent) -> None:
        self.emit = emit
        self._said: dict[RunKey, str] = {}  # the last Warning's message, or "" once all resolved

    def note(self, key: RunKey, body: Mapping[str, Any], resolution: Resolution) -> None:
        ok, reason, message = resolution
        conditions = (body.get("status") or {}).get("conditions") or []
        persisted: Mapping[str, Any] = next((c for c in conditions if c.get("type") == "EgressResolved"), {})
        was_unresolved = persisted.get("status") == "False"
        said = self._said.get(key)
        if not ok:
            if said != message and not (was_unresolved and persisted.get("message") == message):
                self.emit(body, "Warning", reason, message)
            self._said[key] = message
        else:
            if said or (said is None and was_unresolved):
                self.emit(body, "Normal", reason, message)
            self._said[key] = ""

    def forget(self, key: RunKey) -> None:
        self._said.pop(key, None)
