"""The generated NetworkPolicies allow exactly the grant, judged by an independent evaluator (cyclonus)
against the live cluster's policies, for IPv4 and IPv6, and granted hosts follow their DNS records."""

from __future__ import annotations

from .conftest import Dnsmasq, Operator, agentrun, apply, get, kubectl, simple_spec, wait_for
from .netpol import Flow, Pod, allowed
from .test_agentrun import wait_ready


def test_egress_allowlist_ipv4_ipv6_dns_and_nothing_else(operator: Operator, dnsmasq: Dnsmasq,
                                                         team_namespace: str) -> None:
    dnsmasq.set({"api.allowed.test": ["203.0.113.7", "2001:db8:7::7"]})
    spec = simple_spec(dns=True, egress=[
        {"cidr": "10.42.0.0/16", "ports": [443]},
        {"cidr": "2001:db8:100::/48", "ports": [443, 8443]},
        {"host": "api.allowed.test", "ports": [443]},
        {"cidr": "192.0.2.0/24", "ports": [53], "protocol": "UDP"},
    ])
    apply(agentrun("net", team_namespace, spec))
    wait_ready(team_namespace, "net")
    ns = f"{team_namespace}-net"
    wait_for(lambda: get("agentrun", "net", team_namespace)["status"].get("resolvedEgress", {})
             .get("api.allowed.test") == ["203.0.113.7", "2001:db8:7::7"], timeout=15, what="the host to resolve")
    agent = Pod(ns, {"stockade.io/component": "agent"})
    quarantined = Pod(ns, {"stockade.io/component": "agent", "stockade.io/quarantined": "true"}, "10.244.0.11")
    kube_dns = Pod("kube-system", {"k8s-app": "kube-dns"}, "10.96.0.10")
    other_system = Pod("kube-system", {"app": "metrics"}, "10.96.0.11")
    outsider = Pod("default", {"app": "web"}, "10.244.9.9")
    cases = [
        (Flow(agent, "10.42.3.4", 443), True),
        (Flow(agent, "10.42.3.4", 22), False),
        (Flow(agent, "10.43.0.1", 443), False),
        (Flow(agent, "2001:db8:100::5", 443), True),
        (Flow(agent, "2001:db8:100::5", 8443), True),
        (Flow(agent, "2001:db8:100::5", 22), False),
        (Flow(agent, "2001:db8:101::5", 443), False),
        (Flow(agent, "203.0.113.7", 443), True),
        (Flow(agent, "2001:db8:7::7", 443), True),
        (Flow(agent, "203.0.113.8", 443), False),
        (Flow(agent, "2001:db8:7::8", 443), False),
        (Flow(agent, "192.0.2.53", 53, "UDP"), True),
        (Flow(agent, "192.0.2.53", 53, "TCP"), False),
        (Flow(agent, kube_dns, 53, "UDP"), True),
        (Flow(agent, kube_dns, 53, "TCP"), True),
        (Flow(agent, kube_dns, 443), False),
        (Flow(agent, other_system, 53, "UDP"), False),
        (Flow(agent, "8.8.8.8", 53, "UDP"), False),
        (Flow(agent, "198.51.100.22", 22), False),  # the SSH tunnel out
        (Flow(agent, "2606:4700::1111", 3333), False),  # a mining pool over IPv6
        (Flow(quarantined, "10.42.3.4", 443), False),
        (Flow(quarantined, kube_dns, 53, "UDP"), False),
        (Flow(outsider, agent, 8080), False),  # no way in
        (Flow("198.51.100.22", agent, 22), False),
    ]
    answers = allowed([ns, "kube-system", "default"], [flow for flow, _ in cases])
    wrong = [(flow, want) for (flow, want), got in zip(cases, answers, strict=True) if got != want]
    assert not wrong, wrong


def test_granted_host_follows_its_dns_records(operator: Operator, dnsmasq: Dnsmasq, team_namespace: str) -> None:
    dnsmasq.set({"moving.allowed.test": ["203.0.113.20", "2001:db8:20::1"]})
    apply(agentrun("dns", team_namespace, simple_spec(egress=[{"host": "moving.allowed.test", "ports": [443]}])))
    wait_ready(team_namespace, "dns")
    ns = f"{team_namespace}-dns"

    def cidrs() -> list[str]:
        policy = get("networkpolicy", "stockade-egress", ns)
        return [p["ipBlock"]["cidr"] for rule in policy["spec"].get("egress", []) for p in rule["to"]]

    wait_for(lambda: cidrs() == ["203.0.113.20/32", "2001:db8:20::1/128"], timeout=15, what="initial addresses")
    dnsmasq.set({"moving.allowed.test": ["203.0.113.21", "2001:db8:20::2", "2001:db8:20::3"]})
    wait_for(lambda: cidrs() == ["203.0.113.21/32", "2001:db8:20::2/128", "2001:db8:20::3/128"], timeout=20,
             what="the policy to follow the changed records")
    agent = Pod(ns, {"stockade.io/component": "agent"})
    assert allowed([ns], [Flow(agent, "203.0.113.20", 443), Flow(agent, "2001:db8:20::3", 443)]) == [False, True]
    dnsmasq.set({})
    wait_for(lambda: get("agentrun", "dns", team_namespace)["status"]["resolvedEgress"]["moving.allowed.test"] == [],
             timeout=20, what="a vanished record to be reflected")
    assert cidrs() == [], "a host that resolves to nothing allows nothing"
    kubectl("get", "networkpolicy", "stockade-egress", "-n", ns)
