"""Bad input is harmless (issue 14.12): refused with a field path, or a condition with a reason, never a stall.

Against the live API server with the operator running: the shapes the issue found (wrong types in the
template, values the API server refuses only later, PodSecurity ``restricted`` failures), and a
hypothesis property over generated AgentRuns, valid and not. Each one is either refused by the API
server with a field path, or reaches a settled condition (Ready=True, or Ready=False with a reason
and Stalled=True); no pod is ever outside the grant, and the operator's log holds no traceback.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes.utils import parse_quantity  # an implementation independent of the operator's own

from .conftest import BIN, KUBECONFIG, Operator, agentrun, condition, get, kubectl, simple_spec, wait_for

# The property's budget: enough examples to meet every shape below several times, few enough for CI.
PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, database=None, derandomize=True,
                             suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SETTLE_SECONDS = 45


def kubectl_apply(obj: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    # JSON, not YAML: a string such as "1e100" stays a string (PyYAML leaves it unquoted, and kubectl's
    # YAML reads that as a number).
    return subprocess.run([str(BIN / "kubectl"), "--kubeconfig", KUBECONFIG, "apply", "-f", "-"],
                          input=json.dumps(obj), capture_output=True, text=True, timeout=60, check=False)


def settled(team: str, name: str) -> dict[str, Any] | None:
    obj = get("agentrun", name, team)
    if not obj or (obj.get("status") or {}).get("observedGeneration") != obj["metadata"]["generation"]:
        return None
    ready, stalled = condition(obj, "Ready"), condition(obj, "Stalled")
    if ready.get("status") == "True" or (ready.get("status") == "False" and ready.get("reason")
                                         and stalled.get("status") == "True"):
        return dict(obj)
    return None


def pods_within_grant(run: dict[str, Any]) -> None:
    """Every pod in the run namespace fits the grant, read from the API server and summed independently."""
    grant = run["spec"]["grant"]
    namespace = (run.get("status") or {}).get("runNamespace")
    if not namespace:
        return
    pods = [p for p in get("pods", namespace=namespace)["items"]
            if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
    assert len(pods) <= int(grant.get("pods", 1)), [p["metadata"]["name"] for p in pods]
    granted = {"cpu": parse_quantity(str(grant["cpu"])), "memory": parse_quantity(str(grant["memory"]))}
    gpu = grant.get("gpuResource") if int(grant.get("gpu", 0)) else None
    totals: dict[str, Decimal] = {}
    for pod in pods:
        spec = pod["spec"]
        assert not (spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC")), pod["metadata"]["name"]
        for container in spec["containers"]:
            limits = (container.get("resources") or {}).get("limits") or {}
            for resource, value in limits.items():
                totals[resource] = totals.get(resource, Decimal(0)) + parse_quantity(str(value))
            assert not (container.get("securityContext") or {}).get("privileged")
    for resource, amount in totals.items():
        if resource in granted:
            assert amount <= granted[resource], (resource, amount, granted[resource])
        elif resource != "ephemeral-storage":
            assert resource == gpu and amount <= int(grant["gpu"]), (resource, amount, grant)


def no_tracebacks(operator: Operator, since: int) -> None:
    lines = operator.logs()[since:]
    bad = [line for line in lines if "Traceback" in line]
    assert not bad, "the operator logged a traceback for user input:\n" + "\n".join(bad[:3])


def check_outcome(operator: Operator, team: str, body: dict[str, Any]) -> str:
    """Apply ``body``; return "refused" or the Ready reason it settled on, having checked the invariants."""
    since = len(operator.logs())
    name = body["metadata"]["name"]
    result = kubectl_apply(body)
    try:
        if result.returncode != 0:
            assert "spec." in result.stderr or "metadata.name" in result.stderr, result.stderr
            assert get("agentrun", name, team) is None
            return "refused"
        run = wait_for(lambda: settled(team, name), timeout=SETTLE_SECONDS,
                       what=f"AgentRun {team}/{name} to settle (Ready=True, or Ready=False and Stalled)")
        pods_within_grant(run)
        no_tracebacks(operator, since)
        return str(condition(run, "Ready")["reason"])
    finally:
        # Not waited for: the run namespace's deletion takes the namespace controller several seconds.
        kubectl("delete", "agentrun", name, "-n", team, "--ignore-not-found", "--wait=false", check=False)


def with_template_spec(**fields: Any) -> dict[str, Any]:
    spec = simple_spec()
    spec["template"]["spec"].update(fields)
    return spec


def with_container(**fields: Any) -> dict[str, Any]:
    spec = simple_spec()
    spec["template"]["spec"]["containers"][0].update(fields)
    return spec


# (case, spec, what must happen: a field path in the refusal, or the Ready reason it settles on)
SHAPES = [
    ("volumes: 5", with_template_spec(volumes=5), "spec.template.spec.volumes"),
    ("dnsPolicy: []", with_template_spec(dnsPolicy=[]), "spec.template.spec.dnsPolicy"),
    ('securityContext: "x"', with_template_spec(securityContext="x"), "spec.template.spec.securityContext"),
    ("env: [1]", with_container(env=[1]), "spec.template.spec.containers[0].env[0]"),
    ('grant.cpu: "-1"', simple_spec(cpu="-1"), "spec.grant.cpu: Invalid value: cpu must not be negative"),
    ("grant.cpu: 1e100", simple_spec(cpu="1e100"), "spec.grant.cpu: Invalid value: cpu must be at most"),
    ("duration: 1000000h", simple_spec(duration="1000000h"), "spec.grant.duration: Invalid value: duration must be at"),
    ("runAsNonRoot: false", with_template_spec(securityContext={"runAsNonRoot": False}), "TemplateExceedsGrant"),
    ("container name the API server refuses", with_container(name="Agent_1"), "RefusedByAPIServer"),
    ("container without an image", with_container(image=None), "RefusedByAPIServer"),
]


@pytest.mark.parametrize(("case", "spec", "expected"), SHAPES, ids=[c[0] for c in SHAPES])
def test_each_bad_shape_is_refused_or_reaches_a_reason(operator: Operator, team_namespace: str, case: str,
                                                       spec: dict[str, Any], expected: str) -> None:
    body = agentrun("shape", team_namespace, spec)
    if expected.startswith("spec."):
        result = kubectl_apply(body)
        assert result.returncode != 0, f"{case}: accepted"
        assert expected in result.stderr, result.stderr
        return
    since = len(operator.logs())
    assert kubectl_apply(body).returncode == 0
    run = wait_for(lambda: settled(team_namespace, "shape"), timeout=SETTLE_SECONDS, what=f"{case} to settle")
    ready = condition(run, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", expected), ready
    assert get("pods", namespace=run["status"]["runNamespace"])["items"] == []
    no_tracebacks(operator, since)
    # No retry loop: the refusal is met once, and the operator then stops asking the API server (before the
    # fix it retried every second). A change elsewhere (a label) reconciles the run once more.
    kubectl("label", "agentrun", "shape", "-n", team_namespace, "poke=1")
    time.sleep(3)
    attempts = [line for line in operator.logs()[since:] if f"{team_namespace}/shape" in line
                and ("refused" in line or "failed" in line)]
    assert len(attempts) <= 1, attempts


# Generated AgentRuns --------------------------------------------------------------------------------------
# A valid run is drawn first (so that a fair share run), then up to two changes, most of them bad input.
GOOD_GRANTS = st.sampled_from([
    {"cpu": "2", "memory": "4Gi"}, {"cpu": 4, "memory": 1073741824, "pods": 2},
    {"cpu": "8", "memory": "16Gi", "gpu": 1, "gpuResource": "nvidia.com/gpu"},
    {"cpu": "8", "memory": "16Gi", "gpu": 1, "gpuResource": "nvidia.com/mig-1g.10gb"},
    {"cpu": "500m", "memory": "512Mi", "duration": "4h", "kubernetesAPI": [{"resources": ["configmaps"],
                                                                           "verbs": ["get"]}]},
])
GRANT_CHANGES = st.sampled_from([
    {"cpu": "-1"}, {"cpu": "1e100"}, {"cpu": "0"}, {"cpu": "1n"}, {"cpu": "2M"}, {"memory": "-1Gi"},
    {"memory": "2Ei"}, {"memory": "lots"}, {"pods": 0}, {"gpu": 70}, {"gpu": 2}, {"gpuResource": "x.io/y"},
    {"duration": "1000000h"}, {"duration": "0s"}, {"duration": "1d"}, {"duration": "596523h"},
    {"kubernetesAPI": [{"resources": ["pods/binding"], "verbs": ["create"]}]},
    {"kubernetesAPI": [{"resources": ["serviceaccounts/token"], "verbs": ["create"]}]},
    {"kubernetesAPI": [{"resources": ["*"], "verbs": ["get"]}]},
    {"kubernetesAPI": [{"apiGroups": [], "resources": ["pods"], "verbs": ["get"]}]},
    {"kubernetesAPI": [{"resources": ["nodes"], "verbs": ["get"]}]},
])
CONTAINER_CHANGES = st.sampled_from([
    {"resources": {"limits": {"cpu": "100", "memory": "1Gi"}}}, {"resources": {"limits": {"cpu": []}}},
    {"resources": {"limits": {"cpu": True}}}, {"resources": {"limits": {"memory": "-1"}}},
    {"resources": {"limits": {"amd.com/gpu": "1"}}}, {"resources": {"limits": {"nvidia.com/gpu": "3"}}},
    {"env": [1]}, {"env": "x"}, {"env": [{"name": "A", "value": 5}]},
    {"env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]}, {"securityContext": "x"},
    {"securityContext": {"privileged": True}}, {"securityContext": {"runAsNonRoot": False}},
    {"securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}},
    {"securityContext": {"capabilities": {"drop": ["NET_RAW"]}}}, {"name": "Agent_1"}, {"image": None},
    {"ports": [{"containerPort": 80, "hostPort": 80}]},
])
POD_CHANGES = st.sampled_from([
    {"volumes": 5}, {"volumes": [{"name": "s", "emptyDir": {}}]},
    {"volumes": [{"name": "h", "hostPath": {"path": "/"}}]},
    {"volumes": [{"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}]},
    {"volumes": [{"name": "t", "projected": {"sources": [{"serviceAccountToken": {
        "path": "t", "audience": "https://vault.example"}}]}}]},
    {"dnsPolicy": []}, {"dnsPolicy": "Default"}, {"securityContext": "x"}, {"securityContext": {"runAsNonRoot": False}},
    {"securityContext": {"runAsUser": 0}}, {"hostNetwork": True}, {"nodeName": "gpu-0"}, {"activeDeadlineSeconds": 0},
    {"automountServiceAccountToken": True}, {"priority": "high"}, {"tolerations": "all"},
    {"runtimeClassName": "nvidia"},
])
ANNOTATIONS = st.sampled_from([{"team": "a"}, {"cdi.k8s.io/gpu": "nvidia.com/gpu=all"},
                               {"io.kubernetes.cri-o.Devices": "/dev/nvidia0"}, {"n": 1}])
NAMES = st.sampled_from(["plain", "plain", "dot", "long"])
COUNTER = itertools.count()


@st.composite
def agentrun_specs(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    grant = dict(draw(GOOD_GRANTS))
    container: dict[str, Any] = {"name": "agent", "image": "registry.example/agent:1"}
    resource = grant.get("gpuResource")
    if resource:
        container["resources"] = {"limits": {"cpu": "1", "memory": "1Gi", resource: "1"}}
    template: dict[str, Any] = {"spec": {"containers": [container]}}
    for change in draw(st.lists(st.sampled_from(["grant", "container", "pod", "annotations"]), max_size=2)):
        if change == "grant":
            grant.update(draw(GRANT_CHANGES))
        elif change == "container":
            container.update(draw(CONTAINER_CHANGES))
        elif change == "pod":
            template["spec"].update(draw(POD_CHANGES))
        else:
            template["metadata"] = {"annotations": draw(ANNOTATIONS)}
    number = next(COUNTER)
    name = {"plain": f"gen-{number}", "dot": f"gen.{number}", "long": f"gen-{number}-" + "x" * 60}[draw(NAMES)]
    spec: dict[str, Any] = {"template": template, "grant": grant}
    if draw(st.booleans()):
        spec["workload"] = "Job"
    return name, spec


@pytest.mark.timeout(1200)
def test_generated_agentruns_are_refused_with_a_field_or_settle_with_a_reason(operator: Operator,
                                                                              team_namespace: str) -> None:
    outcomes: dict[str, int] = {}

    @PROPERTY_SETTINGS
    @given(agentrun_specs())
    def check(case: tuple[str, dict[str, Any]]) -> None:
        name, spec = case
        outcome = check_outcome(operator, team_namespace, agentrun(name, team_namespace, spec))
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    check()
    # The generator reaches every kind of outcome (a property that only ever saw refusals would prove little).
    assert outcomes.get("refused") and outcomes.get("Running") and outcomes.get("TemplateExceedsGrant"), outcomes
