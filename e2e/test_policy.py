"""AgentPolicies bound every grant, end to end: the operator runs as the chart's ServiceAccount and every
assertion reads what the real API server did (the AgentRun refused with the webhook's message, or
stored; the policy refused by the CRD's CEL rules).

Each test's namespaces carry ``e2e.stockade.io/policy``, which the e2e suite's permissive default policy
(e2e/values-policy.yaml) leaves out, so that only the policies a test writes select them.
"""

from __future__ import annotations

import copy
import secrets
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from .chart import free_port
from .conftest import BIN, ROOT, KubectlError, Operator, agentrun, apply, get, kubectl, simple_spec, wait_for
from .detect_support import Signals, falco_event

LABEL = "e2e.stockade.io/policy"
WEBHOOK = 'admission webhook "agentrun-policy.stockade.io" denied the request'


def _policy(name: str, selector_value: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "stockade.io/v1alpha1", "kind": "AgentPolicy", "metadata": {"name": name},
            "spec": {"namespaceSelector": {"matchLabels": {LABEL: selector_value}}, **spec}}


@pytest.fixture
def policies() -> Iterator[Callable[..., str]]:
    """Apply AgentPolicies for one test (removed afterwards); returns the name of each."""
    made: list[str] = []

    def make(selector_value: str, **spec: Any) -> str:
        name = f"e2e-{uuid.uuid4().hex[:6]}"
        apply(_policy(name, selector_value, **spec))
        made.append(name)
        return name

    yield make
    for name in made:
        kubectl("delete", "agentpolicy", name, "--wait=false", check=False)


@pytest.fixture
def labelled_namespace() -> Iterator[Callable[[str], str]]:
    made: list[str] = []

    def make(value: str) -> str:
        name = f"pol-{uuid.uuid4().hex[:6]}"
        apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {LABEL: value}}})
        made.append(name)
        return name

    yield make
    for name in made:
        kubectl("delete", "agentruns", "--all", "-n", name, "--wait=false", check=False)
        kubectl("delete", "namespace", name, "--wait=false", check=False)


def _create(obj: dict[str, Any], *, as_user: str | None = None, dry_run: bool = False) -> str:
    args = ["create", "-f", "-", "-o", "name"] + (["--dry-run=server"] if dry_run else [])
    return kubectl(*args, stdin=yaml.safe_dump(obj), as_user=as_user)


def refused(obj: dict[str, Any], *needles: str, as_user: str | None = None, dry_run: bool = False) -> str:
    """Create ``obj``; assert the policy webhook refused it with every needle in its message and, for a
    real create, that the API server holds no such object."""
    with pytest.raises(KubectlError) as err:
        _create(obj, as_user=as_user, dry_run=dry_run)
    message = err.value.stderr
    assert WEBHOOK in message, message
    for needle in needles:
        assert needle in message, f"{needle!r} not in: {message}"
    if not dry_run:
        assert get("agentrun", obj["metadata"]["name"], obj["metadata"]["namespace"]) is None
    return message


def admitted(obj: dict[str, Any], *, as_user: str | None = None, dry_run: bool = False) -> None:
    out = _create(obj, as_user=as_user, dry_run=dry_run)
    assert out.strip() == f"agentrun.stockade.io/{obj['metadata']['name']}"
    stored = get("agentrun", obj["metadata"]["name"], obj["metadata"]["namespace"])
    assert (stored is None) if dry_run else (stored is not None)


def _name() -> str:
    return f"run-{uuid.uuid4().hex[:6]}"


# The escapes of the issue -----------------------------------------------------------------------------
def test_a_four_gpu_run_to_anywhere_on_ssh_is_refused_with_field_policy_and_limit(
        operator: Operator, policies: Callable[..., str], labelled_namespace: Callable[[str], str]) -> None:
    value = uuid.uuid4().hex[:6]
    namespace = labelled_namespace(value)
    name = policies(value, ceilings={"gpus": {"nvidia.com/gpu": 1}},
                    egress={"cidrs": ["10.0.0.0/8"], "ports": [443], "dns": True})
    spec = simple_spec(gpu=4, gpuResource="nvidia.com/gpu", egress=[{"cidr": "0.0.0.0/0", "ports": [22, 443, 3333]}])
    message = refused(agentrun(_name(), namespace, spec),
                      f"spec.grant.gpu: 4 nvidia.com/gpu asked; AgentPolicy {name} allows at most 1 nvidia.com/gpu "
                      "(ceilings.gpus[nvidia.com/gpu])",
                      f"spec.grant.egress[0].cidr: 0.0.0.0/0 asked; AgentPolicy {name} allows CIDRs within 10.0.0.0/8",
                      "spec.grant.egress[0].ports: 22, 3333 asked")
    assert "spec.grant.dns" not in message
    admitted(agentrun(_name(), namespace, simple_spec(gpu=1, gpuResource="nvidia.com/gpu",
                                                      egress=[{"cidr": "10.1.0.0/16", "ports": [443]}])))


def _running_parent(namespace: str, **grant: Any) -> tuple[str, str]:
    """A parent run allowed to create AgentRuns, Running; returns its name and run namespace."""
    name = _name()
    rule = {"apiGroups": ["stockade.io"], "resources": ["agentruns"], "verbs": ["create", "get"]}
    apply(agentrun(name, namespace, simple_spec(kubernetesAPI=[rule], **grant)))
    found = wait_for(lambda: (get("agentrun", name, namespace) or {}).get("status", {}).get("phase") == "Running"
                     and get("agentrun", name, namespace), timeout=60, what="the parent run to be Running")
    run_namespace = found["status"]["runNamespace"]
    wait_for(lambda: get("rolebinding", "stockade-agent", run_namespace), timeout=30, what="the agent's RoleBinding")
    return name, run_namespace


def _child(run_namespace: str, **grant: Any) -> dict[str, Any]:
    return agentrun(_name(), run_namespace, simple_spec(**{"ephemeralStorage": "1Gi", **grant}))


def test_the_agents_own_child_run_is_refused_without_delegation(
        operator: Operator, policies: Callable[..., str], labelled_namespace: Callable[[str], str]) -> None:
    value = uuid.uuid4().hex[:6]
    namespace = labelled_namespace(value)
    policies(value, egress={"cidrs": ["0.0.0.0/0"], "dns": True}, kubernetesAPI=[
        {"apiGroups": ["stockade.io"], "resources": ["agentruns"], "verbs": ["create", "get"]}])
    parent, run_namespace = _running_parent(namespace)
    agent = f"system:serviceaccount:{run_namespace}:agent"
    greedy = _child(run_namespace, gpu=8, gpuResource="nvidia.com/gpu",
                    egress=[{"cidr": "0.0.0.0/0", "ports": [22]}])
    refused(greedy, f"the parent run {namespace}/{parent} allows no child runs", "delegation is false",
            as_user=agent)
    # The same ServiceAccount creating an AgentRun elsewhere (RBAC allowing it) is still that run asking.
    kubectl("create", "rolebinding", f"agent-{parent}", "-n", namespace, "--clusterrole=cluster-admin",
            f"--serviceaccount={run_namespace}:agent")
    refused(agentrun(_name(), namespace, simple_spec()), f"created by {agent}",
            f"only inside its own run namespace {run_namespace}", as_user=agent)


def test_with_delegation_a_child_is_carved_from_what_the_parent_has_left(
        operator: Operator, policies: Callable[..., str], labelled_namespace: Callable[[str], str]) -> None:
    value = uuid.uuid4().hex[:6]
    namespace = labelled_namespace(value)
    policies(value, egress={"cidrs": ["0.0.0.0/0"], "dns": True}, kubernetesAPI=[
        {"apiGroups": ["stockade.io"], "resources": ["agentruns"], "verbs": ["create", "get"]}])
    parent, run_namespace = _running_parent(namespace, cpu="4", memory="8Gi", pods=3, delegation=True,
                                            duration="2h", egress=[{"cidr": "10.0.0.0/8", "ports": [443]}])
    agent = f"system:serviceaccount:{run_namespace}:agent"
    # The parent's own pod holds part of its grant (the workload's defaults from the LimitRange).
    first = _child(run_namespace, cpu="1", memory="1Gi", duration="1h", egress=[{"cidr": "10.1.0.0/16",
                                                                                  "ports": [443]}])
    admitted(first, as_user=agent)
    greedy = _child(run_namespace, cpu="3", memory="1Gi", duration="1h")
    refused(greedy, "spec.grant.cpu: 3 cpu asked", f"the parent run {namespace}/{parent} allows", "left of its 4",
            as_user=agent)
    wider = _child(run_namespace, cpu="500m", memory="512Mi", duration="1h",
                   egress=[{"cidr": "0.0.0.0/0", "ports": [22]}])
    refused(wider, "spec.grant.egress[0]: 0.0.0.0/0 ports [22] TCP asked", "only destinations within its own egress",
            as_user=agent)
    longer = _child(run_namespace, cpu="500m", memory="512Mi", duration="3h")
    refused(longer, "spec.grant.duration: 3h asked", "an end no later than its own", as_user=agent)
    # What the child was carved stays out of the parent's own reach: a pod the parent's quota would still
    # take (4 CPUs less its pod's) is refused once the child's 1 CPU is counted.
    live = get("pod", parent, run_namespace)
    held = _cpu(live["spec"]["containers"][0]["resources"]["limits"]["cpu"])
    extra = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "extra", "namespace": run_namespace},
             "spec": {k: v for k, v in copy.deepcopy(live["spec"]).items() if k not in ("nodeName",)}}
    extra["spec"]["containers"][0]["resources"] = {"limits": {"cpu": f"{int((4 - held - 0.5) * 1000)}m",
                                                              "memory": "256Mi", "ephemeral-storage": "1Gi"}}
    with pytest.raises(KubectlError) as err:
        kubectl("create", "-f", "-", "--as=alice-admin", "--as-group=system:masters", stdin=yaml.safe_dump(extra))
    assert 'admission webhook "allowlist.stockade.io" denied the request' in err.value.stderr, err.value.stderr
    assert "cpu" in err.value.stderr
    assert get("pod", "extra", run_namespace) is None


def _cpu(text: str) -> float:
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


# Every ceiling --------------------------------------------------------------------------------------------
CEILINGS = {
    "ceilings": {"cpu": "4", "memory": "8Gi", "ephemeralStorage": "10Gi", "pods": 2, "maxDuration": "2h",
                 "gpus": {"nvidia.com/gpu": 1, "nvidia.com/mig-1g.10gb": 2}, "runtimeClassNames": ["nvidia", "gvisor"],
                 "allowAudit": False, "requiredResponse": ["isolate", "evict"]},
    "egress": {"cidrs": ["10.42.0.0/16", "2001:db8::/32"], "hosts": ["api.example.com", "*.pypi.org"],
               "ports": [443, 8443], "protocols": ["TCP", "UDP"], "dns": False},
    "kubernetesAPI": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
}
BASE = {"cpu": "2", "memory": "4Gi", "pods": 1, "duration": "1h", "ephemeralStorage": "5Gi"}
# (field, grant or spec change beyond the ceiling, the same within it, the limit the refusal names)
CASES: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ("spec.grant.cpu", {"cpu": "5"}, {"cpu": "4"}, "at most 4 (ceilings.cpu)"),
    ("spec.grant.memory", {"memory": "9Gi"}, {"memory": "8Gi"}, "at most 8Gi (ceilings.memory)"),
    ("spec.grant.ephemeralStorage", {"ephemeralStorage": "11Gi"}, {"ephemeralStorage": "10Gi"},
     "at most 10Gi (ceilings.ephemeralStorage)"),
    ("spec.grant.pods", {"pods": 3}, {"pods": 2}, "at most 2 (ceilings.pods)"),
    ("spec.grant.gpu", {"gpu": 2, "gpuResource": "nvidia.com/gpu"}, {"gpu": 1, "gpuResource": "nvidia.com/gpu"},
     "at most 1 nvidia.com/gpu (ceilings.gpus[nvidia.com/gpu])"),
    ("spec.grant.gpuResource", {"gpu": 1, "gpuResource": "amd.com/gpu"},
     {"gpu": 2, "gpuResource": "nvidia.com/mig-1g.10gb"}, "(ceilings.gpus)"),
    ("spec.grant.duration", {"duration": "3h"}, {"duration": "2h"}, "at most 2h (ceilings.maxDuration)"),
    ("spec.grant.duration", {"duration": None}, {"duration": "90m"}, "at most 2h (ceilings.maxDuration)"),
    ("spec.grant.runtimeClassNames[0]", {"runtimeClassNames": ["runc"]}, {"runtimeClassNames": ["gvisor"]},
     "nvidia, gvisor (ceilings.runtimeClassNames)"),
    ("spec.enforcement", {"enforcement": "audit"}, {"enforcement": "enforce"}, "enforce only (ceilings.allowAudit"),
    ("spec.response", {"response": ["isolate"]}, {"response": ["isolate", "freeze", "evict"]},
     "(ceilings.requiredResponse)"),
    ("spec.grant.egress[0].cidr", {"egress": [{"cidr": "0.0.0.0/0", "ports": [443]}]},
     {"egress": [{"cidr": "10.42.1.0/24", "ports": [443]}]}, "CIDRs within 10.42.0.0/16, 2001:db8::/32"),
    ("spec.grant.egress[0].cidr", {"egress": [{"cidr": "::/0", "ports": [443]}]},
     {"egress": [{"cidr": "2001:db8:1::/48", "ports": [443]}]}, "(egress.cidrs)"),
    ("spec.grant.egress[0].host", {"egress": [{"host": "evil.example.net", "ports": [443]}]},
     {"egress": [{"host": "files.pypi.org", "ports": [443]}]}, "hosts api.example.com, *.pypi.org (egress.hosts)"),
    ("spec.grant.egress[0].ports", {"egress": [{"host": "api.example.com", "ports": [22]}]},
     {"egress": [{"host": "api.example.com", "ports": [8443]}]}, "ports 443, 8443 (egress.ports)"),
    ("spec.grant.egress[0].protocol", {"egress": [{"cidr": "10.42.0.0/16", "ports": [443], "protocol": "SCTP"}]},
     {"egress": [{"cidr": "10.42.0.0/16", "ports": [443], "protocol": "UDP"}]}, "TCP, UDP (egress.protocols)"),
    ("spec.grant.dns", {"dns": True}, {"dns": False}, "no DNS (egress.dns is false)"),
    ("spec.grant.kubernetesAPI[0]",
     {"kubernetesAPI": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]},
     {"kubernetesAPI": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]}, "(kubernetesAPI)"),
]


def _spec_with(change: dict[str, Any]) -> dict[str, Any]:
    spec = simple_spec(**BASE)
    for key, value in change.items():
        if key in ("enforcement", "response"):
            spec[key] = value
        elif value is None:
            spec["grant"].pop(key, None)
        else:
            spec["grant"][key] = value
    return spec


@pytest.fixture(scope="module")
def ceiling_namespace(operator: Operator) -> Iterator[tuple[str, str]]:
    value = uuid.uuid4().hex[:6]
    namespace, name = f"pol-{value}", f"e2e-ceilings-{value}"
    apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": {LABEL: value}}})
    apply(_policy(name, value, **copy.deepcopy(CEILINGS)))
    yield namespace, name
    kubectl("delete", "agentpolicy", name, "--wait=false", check=False)
    kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.mark.parametrize(("field", "beyond", "within", "limit"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_every_ceiling_refuses_beyond_it_and_admits_within_it(ceiling_namespace: tuple[str, str], field: str,
                                                              beyond: dict[str, Any], within: dict[str, Any],
                                                              limit: str) -> None:
    namespace, name = ceiling_namespace
    # Server-side dry runs go through the same admission (the webhook has no side effects) and store nothing.
    message = refused(agentrun(_name(), namespace, _spec_with(beyond)), f"{field}: ", f"AgentPolicy {name} allows",
                      limit, dry_run=True)
    assert message.count(f"AgentPolicy {name} allows") == 1, message  # only the field under test is outside
    admitted(agentrun(_name(), namespace, _spec_with(within)), dry_run=True)


def test_a_required_runtime_class_binds_the_grant_and_the_template(
        operator: Operator, policies: Callable[..., str], labelled_namespace: Callable[[str], str]) -> None:
    value = uuid.uuid4().hex[:6]
    namespace = labelled_namespace(value)
    name = policies(value, ceilings={"runtimeClassNames": ["gvisor", "nvidia"], "requiredRuntimeClassName": "gvisor"})
    refused(agentrun(_name(), namespace, simple_spec()), "spec.template.spec.runtimeClassName: none asked",
            f"AgentPolicy {name} allows gvisor only", "spec.grant.runtimeClassNames: the required class is missing",
            dry_run=True)
    spec = simple_spec(runtimeClassNames=["gvisor"])
    spec["template"]["spec"]["runtimeClassName"] = "gvisor"
    admitted(agentrun(_name(), namespace, spec), dry_run=True)


# Closed by default, overlapping policies, invalid policies ---------------------------------------------
def test_closed_by_default_in_a_namespace_no_policy_selects(
        operator: Operator, labelled_namespace: Callable[[str], str]) -> None:
    namespace = labelled_namespace("no-policy-selects-this")
    refused(agentrun(_name(), namespace, simple_spec()), f"no AgentPolicy selects namespace {namespace}",
            "a platform admin must create an AgentPolicy whose namespaceSelector selects it")


def test_overlapping_policies_all_apply(operator: Operator, policies: Callable[..., str],
                                        labelled_namespace: Callable[[str], str]) -> None:
    value = uuid.uuid4().hex[:6]
    namespace = labelled_namespace(value)
    loose = policies(value, ceilings={"cpu": "8"})
    tight = policies(value, ceilings={"cpu": "2"})
    message = refused(agentrun(_name(), namespace, simple_spec(cpu="4")),
                      f"spec.grant.cpu: 4 asked; AgentPolicy {tight} allows at most 2 (ceilings.cpu)")
    assert f"AgentPolicy {loose}" not in message
    message = refused(agentrun(_name(), namespace, simple_spec(cpu="9")), f"AgentPolicy {tight} allows at most 2",
                      f"AgentPolicy {loose} allows at most 8")
    admitted(agentrun(_name(), namespace, simple_spec(cpu="2")))


@pytest.mark.parametrize(("spec", "message"), [
    ({"ceilings": {"maxDuration": "1h"}, "defaults": {"duration": "4h"}},
     "defaults.duration must not exceed ceilings.maxDuration"),
    ({"egress": {"cidrs": ["10.0.0.0/33"]}}, "every cidr must be an IPv4 or IPv6 CIDR"),
    ({"egress": {"cidrs": ["not-a-cidr"]}}, "every cidr must be an IPv4 or IPv6 CIDR"),
    ({"ceilings": {"runtimeClassNames": ["nvidia"], "requiredRuntimeClassName": "gvisor"}},
     "requiredRuntimeClassName must be one of runtimeClassNames"),
    ({"ceilings": {"gpus": {"nvidia.com/gpu": 1}}, "defaults": {"gpuResource": "amd.com/gpu"}},
     "defaults.gpuResource must be one of ceilings.gpus"),
    ({"ceilings": {"gpus": {"gpu": 1}}}, "each key must be an extended resource"),
    ({"ceilings": {"cpu": "lots"}}, "spec.ceilings.cpu"),
])
def test_contradictory_policies_are_refused_by_the_api_server(crds: None, spec: dict[str, Any], message: str) -> None:
    name = f"e2e-bad-{uuid.uuid4().hex[:6]}"
    try:
        with pytest.raises(KubectlError) as err:
            apply(_policy(name, "bad", **spec))
        assert message in err.value.stderr, err.value.stderr
        assert get("agentpolicy", name) is None
    finally:
        kubectl("delete", "agentpolicy", name, "--ignore-not-found", "--wait=false", check=False)


def test_a_bad_selector_requirement_is_refused_by_the_api_server(crds: None) -> None:
    bad = _policy(f"e2e-bad-{uuid.uuid4().hex[:6]}", "x")
    bad["spec"]["namespaceSelector"] = {"matchExpressions": [{"key": "team", "operator": "In"}]}
    with pytest.raises(KubectlError) as err:
        apply(bad)
    assert "In and NotIn need values" in err.value.stderr


# No permission granted on behalf of someone who does not hold it ----------------------------------------
def test_a_team_user_cannot_grant_what_she_does_not_hold(
        operator: Operator, policies: Callable[..., str], labelled_namespace: Callable[[str], str]) -> None:
    value = uuid.uuid4().hex[:6]
    namespace = labelled_namespace(value)
    policies(value, kubernetesAPI=[{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}])
    user = f"team-user-{value}"
    apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
           "metadata": {"name": "team-member", "namespace": namespace},
           "rules": [{"apiGroups": ["stockade.io"], "resources": ["agentruns"], "verbs": ["create", "get"]},
                     {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]})
    kubectl("create", "rolebinding", "team-member", "-n", namespace, "--role=team-member", f"--user={user}")
    secrets = [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
    refused(agentrun(_name(), namespace, simple_spec(kubernetesAPI=secrets)),
            "spec.grant.kubernetesAPI: get secrets (group core) granted",
            f"only permissions {user} holds in {namespace}", as_user=user)
    mixed = [{"apiGroups": [""], "resources": ["configmaps", "secrets"], "verbs": ["get", "list"]}]
    message = refused(agentrun(_name(), namespace, simple_spec(kubernetesAPI=mixed)), "get secrets", "list secrets",
                      as_user=user)
    assert "configmaps" not in message  # what she holds is not named
    admitted(agentrun(_name(), namespace, simple_spec(kubernetesAPI=[
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}])), as_user=user)


def test_defaults_fill_what_a_grant_omits_and_the_ceilings_then_hold(
        operator: Operator, policies: Callable[..., str], labelled_namespace: Callable[[str], str]) -> None:
    value = uuid.uuid4().hex[:6]
    namespace = labelled_namespace(value)
    policies(value, ceilings={"maxDuration": "2h", "runtimeClassNames": ["nvidia", "gvisor"]},
             defaults={"duration": "1h", "runtimeClassNames": ["gvisor"]})
    bare = agentrun(_name(), namespace, simple_spec())
    assert "duration" not in bare["spec"]["grant"]
    admitted(bare)
    stored = get("agentrun", bare["metadata"]["name"], namespace)["spec"]["grant"]
    assert stored["duration"] == "1h" and stored["runtimeClassNames"] == ["gvisor"]
    # What the grant says is kept, and still checked.
    refused(agentrun(_name(), namespace, simple_spec(duration="3h")), "spec.grant.duration: 3h asked")


def test_raising_a_grant_beyond_a_ceiling_by_update_is_refused(
        operator: Operator, policies: Callable[..., str], labelled_namespace: Callable[[str], str]) -> None:
    value = uuid.uuid4().hex[:6]
    namespace = labelled_namespace(value)
    name = policies(value, ceilings={"cpu": "2"})
    run = agentrun(_name(), namespace, simple_spec(cpu="1"))
    admitted(run)
    with pytest.raises(KubectlError) as err:
        kubectl("patch", "agentrun", run["metadata"]["name"], "-n", namespace, "--type=merge",
                "-p", '{"spec": {"grant": {"cpu": "4"}}}')
    assert WEBHOOK in err.value.stderr and f"AgentPolicy {name} allows at most 2" in err.value.stderr
    assert get("agentrun", run["metadata"]["name"], namespace)["spec"]["grant"]["cpu"] == "1"
    # Labels and annotations change nothing granted: allowed even under a policy narrowed since.
    kubectl("patch", "agentpolicy", name, "--type=merge", "-p", '{"spec": {"ceilings": {"cpu": "500m"}}}')
    wait_for(lambda: _refuses_cpu_one(namespace), timeout=10, what="the narrowed policy to reach the operator")
    kubectl("label", "agentrun", run["metadata"]["name"], "-n", namespace, "reviewed=yes")


def _refuses_cpu_one(namespace: str) -> bool:
    try:
        _create(agentrun(_name(), namespace, simple_spec(cpu="1")), dry_run=True)
    except KubectlError as err:
        return "at most 500m" in err.stderr
    return False


def test_the_charts_default_policy_admits_the_readme_example(
        operator: Operator, labelled_namespace: Callable[[str], str]) -> None:
    """The chart's default policy as `helm template` renders it (and `make run` applies it), here selecting
    one labelled namespace only, against examples/agentrun.yaml."""
    value = uuid.uuid4().hex[:6]
    namespace = labelled_namespace(value)
    rendered = yaml.safe_load(subprocess.run(
        [str(BIN / "helm"), "template", "stockade", str(ROOT / "charts/stockade"), "--namespace", "stockade-system",
         "--kube-version", "1.30.0", "-s", "templates/agentpolicy.yaml"], capture_output=True, text=True,
        check=True).stdout)
    name = f"e2e-chart-default-{value}"
    rendered["metadata"] = {"name": name}
    rendered["spec"]["namespaceSelector"] = {"matchLabels": {LABEL: value}}
    apply(rendered)
    try:
        example = next(d for d in yaml.safe_load_all((ROOT / "examples/agentrun.yaml").read_text())
                       if d["kind"] == "AgentRun")
        example["metadata"]["namespace"] = namespace
        admitted(example, dry_run=True)
        bigger = copy.deepcopy(example)
        bigger["spec"]["grant"]["gpu"] = 4
        bigger["spec"]["grant"]["egress"].append({"cidr": "0.0.0.0/0", "ports": [22]})
        refused(bigger, f"AgentPolicy {name} allows at most 1 nvidia.com/gpu", "spec.grant.egress[2].cidr",
                dry_run=True)
    finally:
        kubectl("delete", "agentpolicy", name, "--wait=false", check=False)


# Lineage: a parent's end or quarantine reaches its children -----------------------------------------------
@pytest.fixture
def signal_client(operator: Operator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signals]:
    """The operator restarted with its signal endpoint (as e2e/test_detect.py does, without Prometheus)."""
    port, token = free_port(), secrets.token_urlsafe(24)
    env = {**operator.env, "STOCKADE_SIGNAL_HOST": "127.0.0.1", "STOCKADE_SIGNAL_PORT": str(port),
           "STOCKADE_SIGNAL_TOKEN": token}
    operator.stop()
    mine = Operator(tmp_path_factory.mktemp("lineage-operator"), env, operator.args)
    mine.start()
    client = Signals(port, token)
    wait_for(client.healthy, timeout=30, what="the signal endpoint")
    yield client
    mine.stop()
    operator.start()
    mine.assert_never_refused_by_rbac()


def test_quarantining_or_deleting_the_parent_reaches_its_children(
        signal_client: Signals, policies: Callable[..., str], labelled_namespace: Callable[[str], str]) -> None:
    value = uuid.uuid4().hex[:6]
    namespace = labelled_namespace(value)
    policies(value, egress={"cidrs": ["0.0.0.0/0"], "dns": True}, kubernetesAPI=[
        {"apiGroups": ["stockade.io"], "resources": ["agentruns"], "verbs": ["create", "get"]}])
    parent, run_namespace = _running_parent(namespace, cpu="4", memory="8Gi", pods=3, delegation=True,
                                            duration="2h", egress=[{"cidr": "10.0.0.0/8", "ports": [443]}])
    child = _child(run_namespace, cpu="500m", memory="512Mi", duration="1h")
    admitted(child, as_user=f"system:serviceaccount:{run_namespace}:agent")
    kid = child["metadata"]["name"]
    found = wait_for(lambda: (get("agentrun", kid, run_namespace) or {}).get("status", {}).get("phase") == "Running"
                     and get("agentrun", kid, run_namespace), timeout=60, what="the child run to be Running")
    child_namespace = found["status"]["runNamespace"]

    ssh = falco_event("Disallowed SSH Connection Non Standard Port", run_namespace, parent, **{
        "fd.name": "10.0.0.9:40112->198.51.100.7:22", "fd.lport": 40112, "fd.rport": 22, "fd.type": "ipv4",
        "fd.l4proto": "tcp", "evt.type": "connect", "proc.name": "ssh", "proc.exepath": "/usr/bin/ssh",
        "proc.cmdline": "ssh tunnel@198.51.100.7", "user.name": "agent"})
    status, answer = signal_client.post("/falco", ssh)
    assert status == 202, answer

    def quarantined(ns: str, name: str) -> dict[str, Any] | None:
        run = get("agentrun", name, ns) or {}
        return run if (run.get("status", {}).get("quarantine") or {}).get("active") else None

    wait_for(lambda: quarantined(namespace, parent), timeout=30, what="the parent to be quarantined")
    run = wait_for(lambda: quarantined(run_namespace, kid), timeout=30, what="the child to be quarantined")
    (why,) = [v for v in run["status"]["violations"] if v["kind"] == "ParentQuarantined"]
    assert f"{namespace}/{parent}" in why["detail"] and why["action"] == "isolate+evict", why  # its own ladder
    wait_for(lambda: get("pod", kid, child_namespace) is None, timeout=30, what="the child's pod to be evicted")

    kubectl("delete", "agentrun", parent, "-n", namespace, "--wait=false")
    wait_for(lambda: get("agentrun", kid, run_namespace) is None, timeout=90, what="the child AgentRun to go")
    wait_for(lambda: get("namespace", child_namespace) is None, timeout=90, what="the child's run namespace to go")


def test_the_policy_webhook_answers_are_counted_and_timed(
        operator: Operator, labelled_namespace: Callable[[str], str]) -> None:
    """After a refusal, the operator's own metrics show the policy webhook's answers and their in-handler
    time (printed with -s; times are never asserted)."""
    namespace = labelled_namespace("no-policy-selects-this")
    refused(agentrun(_name(), namespace, simple_spec()), "no AgentPolicy selects namespace", dry_run=True)
    text = operator.metrics()
    refusals = [line for line in text.splitlines()
                if line.startswith('stockade_admission_requests_total{') and 'webhook="agentrun-policy"' in line
                and 'decision="refused"' in line]
    assert refusals and float(refusals[0].split()[-1]) >= 1, refusals
    buckets = [line for line in text.splitlines()
               if line.startswith("stockade_admission_handler_duration_seconds_bucket")
               and 'webhook="agentrun-policy"' in line]
    assert buckets, "the policy webhook's in-handler time is not recorded"
    print("\n".join(buckets))
