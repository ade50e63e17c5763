"""EgressResolved: the condition from what the granted hosts resolved to, its Events, and stale answers."""

from __future__ import annotations

import asyncio
from typing import Any

import dns.exception
import dns.resolver
import pytest

from stockade.conditions import Observed, compute_conditions
from stockade.dnsresolve import HostResolver
from stockade.egress_status import EgressEvents, egress_resolution

KEY = ("ml-research", "rome-42")


def test_no_host_granted_is_resolved() -> None:
    assert egress_resolution([], {})[:2] == (True, "NoHostsGranted")


def test_every_host_resolved() -> None:
    ok, reason, message = egress_resolution(["a.test", "b.test"], {"a.test": ["192.0.2.1"], "b.test": ["::1"]})
    assert (ok, reason) == (True, "AllHostsResolved") and "a.test, b.test" in message


def test_a_host_without_addresses_is_unresolved_and_named() -> None:
    ok, reason, message = egress_resolution(["a.test", "api.example.com"], {"a.test": ["192.0.2.1"],
                                                                            "api.example.com": []})
    assert (ok, reason) == (False, "HostUnresolved")
    assert "no address found for api.example.com: the agent cannot reach it" in message
    assert "a.test" not in message
    _, _, both = egress_resolution(["x.test", "y.test"], {})
    assert "x.test, y.test: the agent cannot reach them until they resolve" in both


def test_a_host_kept_from_an_earlier_answer_is_resolved_but_said_stale() -> None:
    ok, reason, message = egress_resolution(["a.test"], {"a.test": ["192.0.2.1"]}, stale=["a.test"])
    assert (ok, reason) == (True, "LastKnownAddresses") and "a.test: the last lookup failed" in message
    ok, reason, message = egress_resolution(["a.test", "b.test"], {"a.test": ["192.0.2.1"]}, stale=["a.test"])
    assert (ok, reason) == (False, "HostUnresolved") and "b.test" in message and "a.test: the last" in message


def test_the_condition_never_changes_ready() -> None:
    unresolved = egress_resolution(["api.example.com"], {"api.example.com": []})
    found = {c.type: c.model_dump() for c in compute_conditions(Observed(
        2, "ns", guardrails_ready=True, workload_phase="Running", egress=unresolved))}
    assert found["Ready"]["status"] == "True" and found["Reconciling"]["status"] == "False"
    assert (found["EgressResolved"]["status"], found["EgressResolved"]["reason"]) == ("False", "HostUnresolved")
    assert found["EgressResolved"]["observedGeneration"] == 2
    assert "EgressResolved" not in {c.type for c in compute_conditions(Observed(2, "ns"))}


def body(condition: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"metadata": {"namespace": KEY[0], "name": KEY[1], "generation": 1},
            "status": {"conditions": [condition] if condition else []}}


def test_one_warning_per_change_and_a_normal_event_when_resolved_again() -> None:
    said: list[tuple[str, str, str]] = []
    events = EgressEvents(lambda _body, kind, reason, message: said.append((kind, reason, message)))
    one = egress_resolution(["a.test"], {})
    two = egress_resolution(["a.test", "b.test"], {})
    fine = egress_resolution(["a.test", "b.test"], {"a.test": ["192.0.2.1"], "b.test": ["192.0.2.2"]})
    for resolution in (one, one, one, two, two, fine, fine, one):
        events.note(KEY, body(), resolution)
    assert [(k, r) for k, r, _ in said] == [("Warning", "HostUnresolved"), ("Warning", "HostUnresolved"),
                                           ("Normal", "AllHostsResolved"), ("Warning", "HostUnresolved")]
    assert said[0][2] == one[2] and said[1][2] == two[2]


def test_a_restarted_operator_reads_what_was_said_from_the_status() -> None:
    said: list[str] = []
    one = egress_resolution(["a.test"], {})
    persisted = {"type": "EgressResolved", "status": "False", "reason": one[1], "message": one[2]}
    events = EgressEvents(lambda _body, kind, _reason, _message: said.append(kind))
    events.note(KEY, body(persisted), one)
    assert said == [], "the status already says it"
    fresh = EgressEvents(lambda _body, kind, _reason, _message: said.append(kind))
    fresh.note(KEY, body(persisted), egress_resolution(["a.test"], {"a.test": ["192.0.2.1"]}))
    assert said == ["Normal"], "resolved since the last status write"
    quiet = EgressEvents(lambda _body, kind, _reason, _message: said.append(kind))
    quiet.note(KEY, body(), egress_resolution([], {}))
    assert said == ["Normal"], "nothing to report on a run that was never unresolved"


class _Answer:
    def __init__(self, address: str) -> None:
        self.address = address
        self.rrset = type("RRset", (), {"ttl": 30})()

    def __iter__(self) -> Any:
        return iter([type("R", (), {"to_text": lambda _self: self.address})()])


def test_a_failed_lookup_keeps_the_last_addresses_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = HostResolver(["127.0.0.1:5353"], min_refresh=0.0)
    answers: dict[str, Any] = {"A": _Answer("192.0.2.1"), "AAAA": dns.resolver.NoAnswer()}

    async def resolve(_host: str, rdtype: str, search: bool = False) -> Any:
        answer = answers[rdtype]
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(resolver._resolver, "resolve", resolve)
    first, _ = asyncio.run(resolver.resolve(["a.test"]))
    assert first == {"a.test": ["192.0.2.1"]} and resolver.stale(["a.test"]) == []
    answers["A"] = dns.exception.Timeout()
    resolver._cache["a.test"].expires = 0
    kept, _ = asyncio.run(resolver.resolve(["a.test"]))
    assert kept == first and resolver.stale(["a.test"]) == ["a.test"]
    answers["A"] = dns.resolver.NXDOMAIN()
    resolver._cache["a.test"].expires = 0
    gone, _ = asyncio.run(resolver.resolve(["a.test"]))
    assert gone == {"a.test": []} and resolver.stale(["a.test"]) == [], "NXDOMAIN is an answer, not a failure"
