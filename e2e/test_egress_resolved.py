"""A granted egress host that resolves to nothing: the run stays Ready (the fence holds), but says so.

Against the real API server and a real DNS server (dnsmasq): the condition, the Events, the printer
columns as kubectl prints them, and `stockade status`; then the record appears and it all clears.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

from .conftest import (
    KUBECONFIG,
    ROOT,
    Dnsmasq,
    Operator,
    agentrun,
    apply,
    condition,
    get,
    kubectl,
    simple_spec,
    wait_for,
)

HOST = "api.lost.test"  # dnsmasq answers for .test itself: NXDOMAIN until the test adds the record


def stockade(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": KUBECONFIG, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "stockade.cli", *args], capture_output=True, text=True, timeout=60,
                          env=env, cwd=ROOT, check=False)


def egress(team: str, name: str) -> dict[str, Any]:
    return condition(get("agentrun", name, team), "EgressResolved")


def events(team: str, name: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in get("events", namespace=team)["items"]
            if e["involvedObject"].get("name") == name and e["involvedObject"]["kind"] == "AgentRun"
            and e["reason"] == reason]


def table(*args: str) -> list[list[str]]:
    """`kubectl get` output as rows of cells (columns are separated by two or more spaces)."""
    return [re.split(r"\s{2,}", line.strip()) for line in kubectl("get", *args).splitlines() if line.strip()]


def test_unresolvable_host_is_reported_and_clears_when_it_resolves(operator: Operator, dnsmasq: Dnsmasq,
                                                                   team_namespace: str) -> None:
    dnsmasq.set({})
    spec = simple_spec(egress=[{"cidr": "10.42.0.0/16", "ports": [443]}, {"host": HOST, "ports": [443]}])
    apply(agentrun("lost", team_namespace, spec))

    def unresolved() -> dict[str, Any] | None:
        run = get("agentrun", "lost", team_namespace)
        cond = condition(run, "EgressResolved")
        return run if cond.get("status") == "False" and condition(run, "Ready").get("status") == "True" else None

    run = wait_for(unresolved, timeout=30, what="Ready=True with EgressResolved=False")
    cond = condition(run, "EgressResolved")
    assert cond["reason"] == "HostUnresolved" and f"no address found for {HOST}" in cond["message"]
    assert cond["observedGeneration"] == run["metadata"]["generation"]
    assert run["status"]["phase"] == "Running" and run["status"]["resolvedEgress"] == {HOST: []}
    assert condition(run, "Reconciling")["status"] == "False" and condition(run, "Stalled")["status"] == "False"
    warnings = wait_for(lambda: events(team_namespace, "lost", "HostUnresolved"), timeout=15,
                        what="a Warning Event naming the host")
    assert warnings[0]["type"] == "Warning" and HOST in warnings[0]["message"]
    # The host is looked up again every second (STOCKADE_DNS_MIN_REFRESH_SECONDS=1), each a reconcile: still
    # one Event, seen once (not counted up by kopf's or the API server's deduplication either).
    time.sleep(4)
    again = events(team_namespace, "lost", "HostUnresolved")
    assert len(again) == 1 and again[0].get("count", 1) == 1, again

    # kubectl: the Ready reason and the egress state in the default columns; -o wide adds the run
    # namespace under its own header, never a second NAMESPACE.
    rows = table("agentrun", "lost", "-n", team_namespace)
    assert rows[0] == ["NAME", "PHASE", "READY", "REASON", "GPUS", "EGRESS", "AGE"]
    assert rows[1][:6] == ["lost", "Running", "True", "Running", "0", "HostUnresolved"]
    wide = table("agentrun", "-A", "-o", "wide")
    assert wide[0].count("NAMESPACE") == 1 and "RUN-NAMESPACE" in wide[0], wide[0]
    row = next(r for r in wide[1:] if r[:2] == [team_namespace, "lost"])
    assert row[wide[0].index("RUN-NAMESPACE")] == run["status"]["runNamespace"]

    # stockade status: the header line, the host row, and the JSON report.
    text = stockade("status", "lost", "-n", team_namespace)
    assert text.returncode == 0, text.stderr
    assert re.search(rf"EgressResolved +False +HostUnresolved: no address found for {re.escape(HOST)}", text.stdout)
    assert "unresolved: allows nothing" in text.stdout
    report = json.loads(stockade("status", "lost", "-n", team_namespace, "-o", "json").stdout)
    host = next(r for r in report["grant"]["egress"] if r.get("host") == HOST)
    assert host["resolved"] is False and host["addresses"] == []
    assert next(c for c in report["conditions"] if c["type"] == "EgressResolved")["reason"] == "HostUnresolved"

    # The record appears: resolved, a Normal Event, the column follows; the policy allows the address.
    dnsmasq.set({HOST: ["203.0.113.30"]})
    wait_for(lambda: egress(team_namespace, "lost").get("status") == "True", timeout=20, what="EgressResolved=True")
    run = get("agentrun", "lost", team_namespace)
    assert condition(run, "EgressResolved")["reason"] == "AllHostsResolved"
    assert run["status"]["resolvedEgress"] == {HOST: ["203.0.113.30"]}
    wait_for(lambda: [e for e in events(team_namespace, "lost", "AllHostsResolved") if e["type"] == "Normal"],
             timeout=15, what="a Normal Event: every host resolved")
    assert table("agentrun", "lost", "-n", team_namespace)[1][5] == "AllHostsResolved"
    policy = get("networkpolicy", "stockade-egress", run["status"]["runNamespace"])
    assert "203.0.113.30/32" in [p["ipBlock"]["cidr"] for rule in policy["spec"]["egress"] for p in rule["to"]]

    # The DNS server stops answering: the last addresses are kept (README), the host still counts as
    # resolved, and the condition says the answer is an old one.
    dnsmasq.proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: egress(team_namespace, "lost").get("reason") == "LastKnownAddresses", timeout=30,
                 what="EgressResolved=True LastKnownAddresses while DNS does not answer")
        cond = egress(team_namespace, "lost")
        assert cond["status"] == "True" and f"{HOST}: the last lookup failed" in cond["message"]
        assert get("agentrun", "lost", team_namespace)["status"]["resolvedEgress"] == {HOST: ["203.0.113.30"]}
    finally:
        dnsmasq.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: egress(team_namespace, "lost").get("reason") == "AllHostsResolved", timeout=30,
             what="AllHostsResolved once DNS answers again")
    assert len(events(team_namespace, "lost", "HostUnresolved")) == 1, "no Warning for an answer kept"
    # The operator moved its own policy to the new address: not a guardrail someone else changed.
    assert events(team_namespace, "lost", "GuardrailRestored") == []


def test_a_grant_without_hosts_needs_no_lookup_and_its_edit_is_no_drift(operator: Operator,
                                                                        team_namespace: str) -> None:
    apply(agentrun("cidrs", team_namespace, simple_spec(egress=[{"cidr": "10.42.0.0/16", "ports": [443]}])))
    wait_for(lambda: egress(team_namespace, "cidrs").get("status") == "True", timeout=30, what="EgressResolved")
    assert egress(team_namespace, "cidrs")["reason"] == "NoHostsGranted"
    assert table("agentrun", "cidrs", "-n", team_namespace)[1][5] == "NoHostsGranted"
    assert events(team_namespace, "cidrs", "HostUnresolved") == []
    # A grant edit: the operator updates its own quota in place, which is not someone else's drift.
    kubectl("patch", "agentrun", "cidrs", "-n", team_namespace, "--type=merge", "-p", '{"spec":{"grant":{"cpu":"3"}}}')
    ns = get("agentrun", "cidrs", team_namespace)["status"]["runNamespace"]
    wait_for(lambda: get("resourcequota", "stockade-grant", ns)["spec"]["hard"]["limits.cpu"] == "3", timeout=20,
             what="the quota to follow the grant")
    time.sleep(2)  # the Event of a wrongly reported drift comes right after the apply
    assert events(team_namespace, "cidrs", "GuardrailRestored") == []
