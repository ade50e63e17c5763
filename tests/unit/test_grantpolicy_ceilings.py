"""A grant against the AgentPolicies that select its namespace: ceilings, egress, API rules, defaults."""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stockade.api.models import AgentRunSpec
from stockade.grantpolicy.ceilings import Bound, check, check_policy, defaults
from stockade.quantity import parse_duration, parse_quantity

from .fixtures import GPU_RUN

POLICY: dict[str, Any] = {
    "namespaceSelector": {},
    "ceilings": {"cpu": "8", "memory": "32Gi", "ephemeralStorage": "20Gi", "pods": 2,
                 "gpus": {"nvidia.com/gpu": 1, "nvidia.com/mig-1g.10gb": 2}, "maxDuration": "4h"},
    "egress": {"cidrs": ["10.42.0.0/16", "2001:db8::/32"], "hosts": ["api.example.com", "*.pypi.org"],
               "ports": [443], "dns": True},
    "kubernetesAPI": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
}


def run(**grant: Any) -> AgentRunSpec:
    raw = copy.deepcopy(GPU_RUN)
    for key, value in grant.items():
        if key in ("enforcement", "response", "template"):
            raw[key] = value
        elif value is None:
            raw["grant"].pop(key, None)
        else:
            raw["grant"][key] = value
    return AgentRunSpec.model_validate(raw)


def policy(name: str = "team", **changes: Any) -> Bound:
    raw = copy.deepcopy(POLICY)
    for section, value in changes.items():
        raw[section] = {**raw.get(section, {}), **value} if isinstance(value, dict) else value
    return Bound.of(name, raw)


def texts(spec: AgentRunSpec, *bounds: Bound) -> list[str]:
    return [f.text() for f in check(spec, bounds, "ml-research")]


def test_the_contract_example_fits_the_policy():
    assert texts(run(), policy()) == []


@pytest.mark.parametrize(
    ("grant", "field", "limit"),
    [
        ({"cpu": "9"}, "spec.grant.cpu", "at most 8 (ceilings.cpu)"),
        ({"memory": "33Gi"}, "spec.grant.memory", "at most 32Gi (ceilings.memory)"),
        ({"ephemeralStorage": "21Gi"}, "spec.grant.ephemeralStorage", "at most 20Gi (ceilings.ephemeralStorage)"),
        ({"pods": 3}, "spec.grant.pods", "at most 2 (ceilings.pods)"),
        ({"gpu": 4}, "spec.grant.gpu", "at most 1 nvidia.com/gpu (ceilings.gpus[nvidia.com/gpu])"),
        ({"gpu": 1, "gpuResource": "amd.com/gpu"}, "spec.grant.gpuResource", "(ceilings.gpus)"),
        ({"duration": "5h"}, "spec.grant.duration", "at most 4h (ceilings.maxDuration)"),
        ({"duration": None}, "spec.grant.duration", "at most 4h (ceilings.maxDuration)"),
        ({"egress": [{"cidr": "0.0.0.0/0", "ports": [443]}]}, "spec.grant.egress[0].cidr", "egress.cidrs"),
        ({"egress": [{"cidr": "10.0.0.0/8", "ports": [443]}]}, "spec.grant.egress[0].cidr", "egress.cidrs"),
        ({"egress": [{"cidr": "::/0", "ports": [443]}]}, "spec.grant.egress[0].cidr", "egress.cidrs"),
        ({"egress": [{"cidr": "10.42.1.0/24", "ports": [22]}]}, "spec.grant.egress[0].ports",
         "ports 443 (egress.ports)"),
        ({"egress": [{"cidr": "10.42.1.0/24", "ports": [443], "protocol": "UDP"}]}, "spec.grant.egress[0].protocol",
         "TCP (egress.protocols)"),
        ({"egress": [{"host": "evil.example.com", "ports": [443]}]}, "spec.grant.egress[0].host", "egress.hosts"),
        ({"egress": [{"host": "pypi.org", "ports": [443]}]}, "spec.grant.egress[0].host", "egress.hosts"),
        ({"kubernetesAPI": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]},
         "spec.grant.kubernetesAPI[0]", "(kubernetesAPI)"),
        ({"kubernetesAPI": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "delete"]}]},
         "spec.grant.kubernetesAPI[0]", "(kubernetesAPI)"),
        ({"runtimeClassNames": ["runc"]}, "spec.grant.runtimeClassNames[0]", "(ceilings.runtimeClassNames)"),
        ({"enforcement": "audit"}, "spec.enforcement", "ceilings.allowAudit"),
        ({"response": ["isolate"]}, "spec.response", "ceilings.requiredResponse"),
    ],
)
def test_each_ceiling_refuses_with_field_policy_and_limit(grant, field, limit):
    bound = policy(ceilings={"runtimeClassNames": ["gvisor"], "requiredResponse": ["isolate", "evict"]})
    found = texts(run(**grant), bound)
    assert len(found) == 1, found
    assert found[0].startswith(f"{field}: ") and "AgentPolicy team allows" in found[0] and limit in found[0]


def test_wildcards_and_ipv6_within():
    spec = run(egress=[{"host": "files.pypi.org", "ports": [443]}, {"host": "a.b.pypi.org", "ports": [443]},
                       {"cidr": "2001:db8:1::/48", "ports": [443]}, {"cidr": "10.42.3.4/32", "ports": [443]}])
    assert texts(spec, policy()) == []
    assert texts(spec, policy(egress={"hosts": ["*"], "ports": []})) == []


def test_no_dns_and_no_egress_by_default():
    bare = Bound.of("bare", {"namespaceSelector": {}})
    found = texts(run(), bare)
    assert any(t.startswith("spec.grant.dns: ") for t in found)
    assert sum(".egress[" in t for t in found) == 2


def test_required_runtime_class_binds_grant_and_template():
    bound = policy(ceilings={"runtimeClassNames": ["gvisor", "runc"], "requiredRuntimeClassName": "gvisor"})
    found = texts(run(), bound)
    assert any("spec.grant.runtimeClassNames" in t for t in found)
    assert any("spec.template.spec.runtimeClassName" in t for t in found)
    template = copy.deepcopy(GPU_RUN["template"])
    template["spec"]["runtimeClassName"] = "gvisor"
    assert texts(run(runtimeClassNames=["gvisor"], template=template), bound) == []
    assert texts(run(runtimeClassNames=["gvisor", "runc"], template=template), bound)


def test_every_policy_applies_and_each_is_named():
    tight = policy("tight", ceilings={"cpu": "2"})
    loose = policy("loose")
    found = texts(run(cpu="4"), loose, tight)
    assert found == ["spec.grant.cpu: 4 asked; AgentPolicy tight allows at most 2 (ceilings.cpu)"]
    both = texts(run(cpu="9"), loose, tight)
    assert {t.split(";")[1].strip().split()[1] for t in both} == {"loose", "tight"}


def test_closed_by_default_names_what_to_create():
    (only,) = texts(run())
    assert "no AgentPolicy selects namespace ml-research" in only and "create an AgentPolicy" in only


def test_a_policy_that_cannot_be_evaluated_admits_nothing():
    broken = Bound.of("broken", {"namespaceSelector": {}, "ceilings": {"cpu": "lots"}})
    assert broken.spec is None and broken.selector is not None
    (only,) = texts(run(), broken)
    assert "AgentPolicy broken allows nothing" in only
    unreadable = Bound.of("unreadable", {"namespaceSelector": {"matchLabels": "x"}})
    assert unreadable.selects({}) and unreadable.selects({"team": "x"})  # whom it meant is unknown: everyone


def test_defaults_fill_only_what_the_grant_omits():
    a = policy("a", defaults={"duration": "2h", "runtimeClassNames": ["gvisor"]})
    b = policy("b", defaults={"duration": "1h", "gpuResource": "nvidia.com/gpu"})
    raw = {"cpu": "1", "memory": "1Gi"}
    assert defaults(raw, [a, b]) == {"duration": "1h", "runtimeClassNames": ["gvisor"],
                                     "gpuResource": "nvidia.com/gpu"}
    assert defaults({**raw, "duration": "3h", "runtimeClassNames": []}, [a, b]) == {"gpuResource": "nvidia.com/gpu"}


# Property: whatever is accepted is within every limit of every policy ------------------------------------
CIDRS = ["10.0.0.0/8", "10.42.0.0/16", "10.42.7.0/24", "192.168.0.0/16", "0.0.0.0/0", "2001:db8::/32",
         "2001:db8:5::/48", "::/0", "fd00::/8"]
HOSTS = ["api.example.com", "a.example.com", "example.com", "x.pypi.org", "pypi.org"]
PATTERNS = ["*", "*.example.com", "api.example.com", "*.pypi.org", "pypi.org"]
RESOURCES = ["pods", "pods/log", "configmaps", "secrets", "*"]
VERBS = ["get", "list", "create", "delete"]
QTY = st.sampled_from(["500m", "1", "2", "4", "8", "16"])
MEM = st.sampled_from(["512Mi", "1Gi", "8Gi", "32Gi", "64Gi"])
GPU_RES = st.sampled_from(["nvidia.com/gpu", "nvidia.com/mig-1g.10gb"])

egress_rule = st.one_of(
    st.builds(lambda c, p, pr: {"cidr": c, "ports": p, "protocol": pr}, st.sampled_from(CIDRS),
              st.lists(st.sampled_from([22, 443, 8080]), min_size=1, max_size=2, unique=True),
              st.sampled_from(["TCP", "UDP"])),
    st.builds(lambda h, p: {"host": h, "ports": p}, st.sampled_from(HOSTS),
              st.lists(st.sampled_from([22, 443]), min_size=1, max_size=2, unique=True)),
)
api_rule = st.builds(lambda g, r, v, n: {"apiGroups": g, "resources": r, "verbs": v,
                                         **({"resourceNames": n} if n else {})},
                     st.lists(st.sampled_from(["", "apps", "*"]), min_size=1, max_size=2, unique=True),
                     st.lists(st.sampled_from(RESOURCES), min_size=1, max_size=2, unique=True),
                     st.lists(st.sampled_from(VERBS), min_size=1, max_size=2, unique=True),
                     st.lists(st.sampled_from(["a", "b"]), max_size=2, unique=True))
grants = st.fixed_dictionaries(
    {"cpu": QTY, "memory": MEM, "gpu": st.integers(0, 4), "gpuResource": GPU_RES, "pods": st.integers(1, 4),
     "egress": st.lists(egress_rule, max_size=3), "dns": st.booleans(),
     "kubernetesAPI": st.lists(api_rule.map(lambda r: {**r, "verbs": [v for v in r["verbs"] if v != "*"]}),
                               max_size=2),
     "duration": st.sampled_from(["30m", "2h", "8h"]), "runtimeClassNames": st.lists(
         st.sampled_from(["nvidia", "gvisor"]), max_size=2, unique=True)})
policies = st.fixed_dictionaries(
    {"namespaceSelector": st.just({})},
    optional={
        "ceilings": st.fixed_dictionaries({}, optional={
            "cpu": QTY, "memory": MEM, "pods": st.integers(1, 4), "maxDuration": st.sampled_from(["1h", "4h"]),
            "gpus": st.dictionaries(GPU_RES, st.integers(0, 2), max_size=2),
            "runtimeClassNames": st.lists(st.sampled_from(["nvidia", "gvisor"]), max_size=2, unique=True)}),
        "egress": st.fixed_dictionaries({}, optional={
            "cidrs": st.lists(st.sampled_from(CIDRS), max_size=3), "hosts": st.lists(st.sampled_from(PATTERNS),
                                                                                     max_size=2),
            "ports": st.lists(st.sampled_from([22, 443]), max_size=2, unique=True),
            "protocols": st.lists(st.sampled_from(["TCP", "UDP"]), max_size=2, unique=True), "dns": st.booleans()}),
        "kubernetesAPI": st.lists(api_rule, max_size=3),
    })


def _inside(inner: str, outer: str) -> bool:
    a, b = ipaddress.ip_network(inner, strict=False), ipaddress.ip_network(outer, strict=False)
    return a.version == b.version and int(a.network_address) >= int(b.network_address) and \
        int(a.broadcast_address) <= int(b.broadcast_address)


def _host_ok(host: str, pattern: str) -> bool:
    return pattern in ("*", host) or (pattern.startswith("*.") and host.endswith("." + pattern[2:]))


def _perm_ok(group: str, resource: str, verb: str, name: str | None, rule: dict[str, Any]) -> bool:
    groups, resources, names = rule["apiGroups"], rule["resources"], rule.get("resourceNames")
    resource_ok = "*" in resources or resource in resources or any(
        r.startswith("*/") and "/" in resource and resource.split("/")[1] == r[2:] and not resource.startswith("*")
        for r in resources)
    return ("*" in groups or group in groups) and resource_ok and ("*" in rule["verbs"] or verb in rule["verbs"]) \
        and (not names or (name is not None and name in names))


def _within(grant: dict[str, Any], pol: dict[str, Any]) -> bool:
    """An oracle written apart from the checks: every limit of ``pol`` holds for ``grant``."""
    c, e = pol.get("ceilings", {}), pol.get("egress", {})
    for key in ("cpu", "memory"):
        if key in c and parse_quantity(grant[key]) > parse_quantity(c[key]):
            return False
    if "pods" in c and grant["pods"] > c["pods"]:
        return False
    if "gpus" in c and grant["gpu"] > c["gpus"].get(grant["gpuResource"], 0):
        return False
    if "maxDuration" in c and parse_duration(grant["duration"]) > parse_duration(c["maxDuration"]):
        return False
    if "runtimeClassNames" in c and not set(grant["runtimeClassNames"]) <= set(c["runtimeClassNames"]):
        return False
    for rule in grant["egress"]:
        if e.get("ports") and not set(rule["ports"]) <= set(e["ports"]):
            return False
        if rule.get("protocol", "TCP") not in (e.get("protocols") or ["TCP"]):
            return False
        if "cidr" in rule and not any(_inside(rule["cidr"], outer) for outer in e.get("cidrs", [])):
            return False
        if "host" in rule and not any(_host_ok(rule["host"], p) for p in e.get("hosts", [])):
            return False
    if grant["dns"] and not e.get("dns"):
        return False
    for rule in grant["kubernetesAPI"]:
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                for v in rule["verbs"]:
                    for n in rule.get("resourceNames") or [None]:
                        if not any(_perm_ok(g, r, v, n, p) for p in pol.get("kubernetesAPI", [])):
                            return False
    return True


@settings(max_examples=400, deadline=None)
@given(grant=grants, pols=st.lists(policies, min_size=1, max_size=3))
def test_any_grant_accepted_is_within_every_limit_of_every_policy(grant, pols):
    spec = AgentRunSpec.model_validate({**GPU_RUN, "grant": grant})
    bounds = [Bound.of(f"p{i}", raw) for i, raw in enumerate(pols)]
    assert all(b.spec is not None for b in bounds)
    accepted = not check(spec, bounds, "ns")
    assert accepted == all(_within(grant, raw) for raw in pols)


@settings(max_examples=200, deadline=None)
@given(grant=grants, pol=policies)
def test_each_finding_names_a_grant_field_and_the_policy(grant, pol):
    spec = AgentRunSpec.model_validate({**GPU_RUN, "grant": grant})
    for finding in check_policy(spec, Bound.of("p", pol)):
        assert finding.field.startswith("spec.") and finding.policy == "AgentPolicy p" and finding.limit
