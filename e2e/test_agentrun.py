"""AgentRun end to end: the fence is built, kept, changed, expired and removed on the real cluster."""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml

from .conftest import (
    BREAK_GLASS,
    KubectlError,
    Operator,
    agentrun,
    apply,
    condition,
    get,
    gpu_spec,
    kubectl,
    ready,
    simple_spec,
    wait_for,
    wait_gpu_charged,
)

GUARDRAILS = [
    ("serviceaccount", "agent"),
    ("resourcequota", "stockade-grant"),
    ("limitrange", "stockade-limits"),
    ("networkpolicy", "stockade-deny-all"),
    ("networkpolicy", "stockade-egress"),
]


def run_namespace(team: str, name: str) -> str:
    return f"{team}-{name}"


def wait_ready(team: str, name: str, timeout: float = 30) -> dict[str, Any]:
    return wait_for(lambda: ready(team, name), timeout=timeout, what=f"AgentRun {team}/{name} to be Ready")


def test_gpu_run_becomes_ready_inside_a_complete_fence(operator: Operator, team_namespace: str) -> None:
    spec = gpu_spec(egress=[{"cidr": "10.42.0.0/16", "ports": [443]}], dns=True, duration="4h")
    apply(agentrun("rome-42", team_namespace, spec))
    run = wait_ready(team_namespace, "rome-42")
    ns = run_namespace(team_namespace, "rome-42")
    assert run["status"]["phase"] == "Running"
    assert run["status"]["runNamespace"] == ns
    for cond in run["status"]["conditions"]:
        assert cond["observedGeneration"] == run["metadata"]["generation"]
    assert condition(run, "GuardrailsReady")["status"] == "True"
    assert condition(run, "Stalled")["status"] == "False"

    namespace = get("namespace", ns)
    assert namespace["metadata"]["labels"]["stockade.io/agentrun"] == "rome-42"
    assert namespace["metadata"]["labels"]["stockade.io/agentrun-namespace"] == team_namespace
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for kind, name in [*GUARDRAILS, ("networkpolicy", "stockade-dns")]:
        assert get(kind, name, ns), f"{kind}/{name} missing"
    assert get("role", "stockade-agent", ns) is None, "no API access granted: no Role"
    assert get("serviceaccount", "agent", ns)["automountServiceAccountToken"] is False

    quota = get("resourcequota", "stockade-grant", ns)
    assert quota["status"]["hard"]["requests.nvidia.com/gpu"] == "1"
    assert quota["status"]["hard"]["services.loadbalancers"] == "0"
    wait_gpu_charged(ns)  # the agent's GPU is counted by the quota

    pod = get("pod", "rome-42", ns)
    assert pod["status"]["phase"] == "Running"
    assert pod["spec"]["serviceAccountName"] == "agent"
    node = get("node", pod["spec"]["nodeName"])
    assert node["metadata"]["labels"].get("nvidia.com/gpu.present") == "true", "a GPU pod lands on a GPU node"


def test_workload_is_created_only_after_every_guardrail(operator: Operator, team_namespace: str) -> None:
    apply(agentrun("ordered", team_namespace, simple_spec()))
    wait_ready(team_namespace, "ordered")
    ns = run_namespace(team_namespace, "ordered")
    pod_created = get("pod", "ordered", ns)["metadata"]["creationTimestamp"]
    for kind, name in GUARDRAILS:
        assert get(kind, name, ns)["metadata"]["creationTimestamp"] <= pod_created, kind
    quota = get("resourcequota", "stockade-grant", ns)
    assert quota["status"]["used"]["pods"] == "1"


def _counter(operator: Operator, name: str) -> float:
    return sum(float(line.split()[-1]) for line in operator.metrics().splitlines() if line.startswith(name + " "))


def test_template_beyond_the_grant_is_refused_without_a_workload(operator: Operator, team_namespace: str) -> None:
    refusals = _counter(operator, "stockade_template_refusals_total")
    spec = simple_spec(cpu="1")
    spec["template"]["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "2", "nvidia.com/gpu": "1"}}
    spec["template"]["spec"]["hostNetwork"] = True
    apply(agentrun("greedy", team_namespace, spec))

    def refused() -> dict[str, Any] | None:
        run = get("agentrun", "greedy", team_namespace)
        return run if condition(run, "Ready").get("reason") == "TemplateExceedsGrant" else None

    run = wait_for(refused, timeout=30, what="the template to be refused")
    message = condition(run, "Ready")["message"]
    assert "spec.template.spec.hostNetwork" in message
    assert "nvidia.com/gpu" in message and "spec.grant.gpu" in message
    assert "limits.cpu" in message and "spec.grant.cpu" in message
    assert condition(run, "Stalled")["status"] == "True"
    # The same findings, typed, in a status field of their own (what `stockade status` shows).
    found = {r["field"]: r for r in run["status"]["refusals"]}
    assert found["spec.template.spec.hostNetwork"]["kind"] and found["spec.template.spec.hostNetwork"]["message"]
    assert any("nvidia.com/gpu" in f and "spec.grant.gpu" in r["hint"] for f, r in found.items()), found
    assert any("limits.cpu" in f and "spec.grant.cpu" in r["hint"] for f, r in found.items()), found
    ns = run_namespace(team_namespace, "greedy")
    assert get("resourcequota", "stockade-grant", ns), "the fence is still built"
    assert get("pod", "greedy", ns) is None, "no workload for a refused template"
    events = wait_for(lambda: [e for e in get("events", namespace=team_namespace)["items"]
                               if e["reason"] == "TemplateExceedsGrant" and e["type"] == "Warning"],
                      timeout=15, what="a Warning event")
    assert "hostNetwork" in events[0]["message"]
    # Another round of reconcile (a guardrail put back) refuses the same template again: counted once.
    uid = get("limitrange", "stockade-limits", ns)["metadata"]["uid"]
    kubectl("delete", "limitrange", "stockade-limits", "-n", ns, as_user=BREAK_GLASS)
    wait_for(lambda: (o := get("limitrange", "stockade-limits", ns)) and o["metadata"]["uid"] != uid,
             timeout=10, what="the LimitRange to come back")
    assert _counter(operator, "stockade_template_refusals_total") == refusals + 1
    # Within the grant: the refusals go with the condition.
    apply(agentrun("greedy", team_namespace, simple_spec(cpu="1")))
    fixed = wait_for(lambda: ready(team_namespace, "greedy"), timeout=30, what="the fixed template to run")
    assert "refusals" not in fixed["status"], fixed["status"]


@pytest.mark.parametrize(("kind", "name"), [
    ("networkpolicy", "stockade-deny-all"), ("networkpolicy", "stockade-egress"),
    ("resourcequota", "stockade-grant"), ("limitrange", "stockade-limits"), ("rolebinding", "stockade-agent"),
])
def test_hand_deleted_guardrail_comes_back(operator: Operator, team_namespace: str, kind: str, name: str) -> None:
    spec = simple_spec(kubernetesAPI=[{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}])
    apply(agentrun("drift", team_namespace, spec))
    wait_ready(team_namespace, "drift")
    ns = run_namespace(team_namespace, "drift")
    before = get(kind, name, ns)["metadata"]["uid"]
    with pytest.raises(KubectlError, match=r"only the Stockade operator|managed by Stockade"):
        kubectl("delete", kind, name, "-n", ns)  # a cluster admin, but not break-glass
    kubectl("delete", kind, name, "-n", ns, as_user=BREAK_GLASS)
    restored = wait_for(lambda: (o := get(kind, name, ns)) and o["metadata"]["uid"] != before and o,
                        timeout=10, interval=0.05, what=f"{kind}/{name} to come back")
    assert restored["metadata"]["labels"]["stockade.io/agentrun"] == "drift"
    wait_for(lambda: [e for e in get("events", namespace=team_namespace)["items"]
                      if e["reason"] == "GuardrailRestored" and e["type"] == "Warning"], timeout=10,
             what="a Warning event naming the restored guardrail")


def test_hand_edited_guardrail_is_restored(operator: Operator, team_namespace: str) -> None:
    apply(agentrun("edited", team_namespace, simple_spec(cpu="2")))
    wait_ready(team_namespace, "edited")
    ns = run_namespace(team_namespace, "edited")
    kubectl("patch", "resourcequota", "stockade-grant", "-n", ns, "--type=merge",
            "-p", '{"spec":{"hard":{"limits.cpu":"64","services.loadbalancers":"5"}}}', as_user=BREAK_GLASS)
    wait_for(lambda: get("resourcequota", "stockade-grant", ns)["spec"]["hard"]["limits.cpu"] == "2",
             timeout=10, interval=0.05, what="the quota edit to be reverted")
    assert get("resourcequota", "stockade-grant", ns)["spec"]["hard"]["services.loadbalancers"] == "0"
    kubectl("patch", "networkpolicy", "stockade-egress", "-n", ns, "--type=merge", "-p",
            '{"spec":{"egress":[{"to":[{"ipBlock":{"cidr":"0.0.0.0/0"}}]}]}}', as_user=BREAK_GLASS)
    wait_for(lambda: get("networkpolicy", "stockade-egress", ns)["spec"].get("egress", []) == [],
             timeout=10, interval=0.05, what="the widened egress policy to be narrowed again")


def test_grant_change_updates_the_fence_in_place(operator: Operator, team_namespace: str) -> None:
    apply(agentrun("grow", team_namespace, simple_spec(cpu="2", memory="4Gi")))
    wait_ready(team_namespace, "grow")
    ns = run_namespace(team_namespace, "grow")
    quota_uid = get("resourcequota", "stockade-grant", ns)["metadata"]["uid"]
    pod_uid = get("pod", "grow", ns)["metadata"]["uid"]
    changed = simple_spec(cpu="6", memory="12Gi", dns=True,
                          egress=[{"cidr": "2001:db8::/32", "ports": [443, 8443]}],
                          kubernetesAPI=[{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}])
    apply(agentrun("grow", team_namespace, changed))
    run = wait_ready(team_namespace, "grow")
    assert run["metadata"]["generation"] == 2
    quota = get("resourcequota", "stockade-grant", ns)
    assert quota["metadata"]["uid"] == quota_uid, "updated in place, not replaced"
    assert quota["spec"]["hard"]["limits.cpu"] == "6" and quota["status"]["hard"]["limits.memory"] == "12Gi"
    assert get("limitrange", "stockade-limits", ns)["spec"]["limits"][0]["max"]["cpu"] == "6"
    egress = get("networkpolicy", "stockade-egress", ns)["spec"]["egress"]
    assert egress == [{"to": [{"ipBlock": {"cidr": "2001:db8::/32"}}],
                       "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 8443}]}]
    assert get("networkpolicy", "stockade-dns", ns)
    assert get("role", "stockade-agent", ns)["rules"][0]["resources"] == ["configmaps"]
    assert get("pod", "grow", ns)["metadata"]["uid"] == pod_uid, "the running agent is not restarted"

    apply(agentrun("grow", team_namespace, simple_spec(cpu="6", memory="12Gi")))
    wait_for(lambda: get("networkpolicy", "stockade-dns", ns) is None and get("role", "stockade-agent", ns) is None,
             timeout=15, what="withdrawn grants to be removed")


def test_deleting_the_agentrun_removes_the_run_namespace(operator: Operator, team_namespace: str) -> None:
    apply(agentrun("gone", team_namespace, simple_spec()))
    wait_ready(team_namespace, "gone")
    ns = run_namespace(team_namespace, "gone")
    assert "stockade.io/cleanup" in get("agentrun", "gone", team_namespace)["metadata"]["finalizers"]
    kubectl("delete", "agentrun", "gone", "-n", team_namespace, "--wait=false")
    wait_for(lambda: get("agentrun", "gone", team_namespace) is None and get("namespace", ns) is None,
             timeout=60, what="the AgentRun and its namespace to be gone")


def test_hand_deleted_run_namespace_is_rebuilt(operator: Operator, team_namespace: str) -> None:
    apply(agentrun("rebuilt", team_namespace, simple_spec()))
    wait_ready(team_namespace, "rebuilt")
    ns = run_namespace(team_namespace, "rebuilt")
    old_uid = get("namespace", ns)["metadata"]["uid"]
    with pytest.raises(KubectlError, match="managed by Stockade only"):
        kubectl("delete", "namespace", ns, "--wait=false")
    kubectl("delete", "namespace", ns, "--wait=false", as_user=BREAK_GLASS)
    wait_for(lambda: (n := get("namespace", ns)) and n["metadata"]["uid"] != old_uid
             and not n["metadata"].get("deletionTimestamp"), timeout=60, what="the run namespace to be re-created")
    wait_for(lambda: get("pod", "rebuilt", ns), timeout=30, what="the workload to return inside the new fence")
    for kind, name in GUARDRAILS:
        assert get(kind, name, ns), kind


def test_run_expires_after_its_duration(operator: Operator, team_namespace: str) -> None:
    apply(agentrun("brief", team_namespace, simple_spec(duration="4s")))
    wait_ready(team_namespace, "brief")
    ns = run_namespace(team_namespace, "brief")
    run = wait_for(lambda: (r := get("agentrun", "brief", team_namespace)) and r["status"]["phase"] == "Expired" and r,
                   timeout=30, what="the run to expire")
    assert condition(run, "Ready")["reason"] == "Expired"
    assert run["status"]["expiresAt"] > run["status"]["startTime"]
    wait_for(lambda: not get("pods", namespace=ns)["items"], timeout=30, what="the pods to be deleted")
    time.sleep(1.5)
    assert not get("pods", namespace=ns)["items"], "an expired run's workload is not re-created"


@pytest.mark.parametrize(("grant", "message"), [
    ({"cpu": "lots"}, "spec.grant.cpu"),
    ({"pods": 0}, "spec.grant.pods"),
    ({"gpu": 2}, "gpu > 0 needs gpuResource"),
    ({"egress": [{"cidr": "10.0.0.0/8", "host": "x.example.com", "ports": [443]}]}, "exactly one of cidr and host"),
    ({"egress": [{"cidr": "10.0.0.0/33", "ports": [443]}]}, "spec.grant.egress[0].cidr"),
    ({"egress": [{"cidr": "10.0.0.0/8", "ports": [0]}]}, "spec.grant.egress[0].ports[0]"),
    ({"duration": "0s"}, "duration must be a positive duration"),
    ({"duration": "soon"}, "spec.grant.duration"),
    ({"surprise": True}, "unknown field \"spec.grant.surprise\""),
])
def test_invalid_specs_are_refused_by_the_api_server(crds: None, team_namespace: str, grant: dict[str, Any],
                                                     message: str) -> None:
    spec = simple_spec(**grant)
    with pytest.raises(KubectlError) as err:
        kubectl("apply", "--validate=strict", "-f", "-", stdin=__import__("yaml").safe_dump(
            agentrun("bad", team_namespace, spec)))
    assert message in err.value.stderr
    assert get("agentrun", "bad", team_namespace) is None


def test_status_is_not_rewritten_when_nothing_changes(operator: Operator, team_namespace: str) -> None:
    apply(agentrun("quiet", team_namespace, simple_spec()))
    run = wait_ready(team_namespace, "quiet")
    time.sleep(3)
    assert get("agentrun", "quiet", team_namespace)["metadata"]["resourceVersion"] == \
        run["metadata"]["resourceVersion"]


def _hold_pods(team: str) -> dict[str, Any]:
    """A ValidatingAdmissionPolicy that refuses every pod in this team's run namespaces: the operator
    builds each fence up to the workload and no further, which is where a crash hurts most."""
    name = f"e2e-hold-{team}"
    match = {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"],
                                "operations": ["CREATE"]}]}
    held = (f"'{team}' in [namespaceObject.metadata.?labels[?'stockade.io/agentrun-namespace'].orValue(''), "
            "object.metadata.?labels[?'e2e-hold'].orValue('')]")
    return {
        "policy": {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
                   "metadata": {"name": name},
                   "spec": {"failurePolicy": "Fail", "matchConstraints": match,
                            "validations": [{"expression": f"!({held})", "message": "e2e: pods held back"}]}},
        "binding": {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
                    "metadata": {"name": name}, "spec": {"policyName": name, "validationActions": ["Deny"]}},
    }


def _held(team: str) -> bool:
    probe = {"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": "probe", "namespace": team, "labels": {"e2e-hold": team}},
             "spec": {"containers": [{"name": "c", "image": "registry.example/probe:1"}]}}
    try:
        kubectl("create", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(probe))
    except KubectlError as err:
        return "e2e: pods held back" in err.stderr
    return False


def test_operator_killed_mid_reconcile_converges_without_duplicates(operator: Operator, team_namespace: str) -> None:
    hold = _hold_pods(team_namespace)
    names = [f"burst-{i}" for i in range(8)]
    apply([hold["policy"], hold["binding"]])
    try:
        wait_for(lambda: _held(team_namespace), timeout=30, what="the hold policy to take effect")
        apply([agentrun(n, team_namespace, simple_spec(dns=True)) for n in names])

        def fenced_without_workload(name: str) -> bool:
            ns = run_namespace(team_namespace, name)
            return len(get("networkpolicies", namespace=ns)["items"]) == 3 and \
                get("resourcequota", "stockade-grant", ns) is not None

        for name in names:
            wait_for(lambda n=name: fenced_without_workload(n), timeout=60, what=f"{name}'s fence")
        # The platform's policy said no: the run says so, and keeps asking (the policy may change).
        held = wait_for(lambda: (c := condition(get("agentrun", names[0], team_namespace), "Ready")).get("reason")
                        == "AdmissionRefused" and c, timeout=30, what="Ready=False with reason AdmissionRefused")
        assert held["status"] == "False" and "e2e: pods held back" in held["message"], held
        assert condition(get("agentrun", names[0], team_namespace), "Stalled")["status"] == "False"
        operator.kill()
        for name in names:
            assert not ready(team_namespace, name), f"{name} is Ready without its workload"
            assert get("pods", namespace=run_namespace(team_namespace, name))["items"] == []
    finally:
        kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy",
                f"e2e-hold-{team_namespace}", check=False)
        if operator.proc is None:
            operator.start()
    for name in names:
        wait_ready(team_namespace, name, timeout=60)
        ns = run_namespace(team_namespace, name)
        assert len(get("pods", namespace=ns)["items"]) == 1, "exactly one workload"
        assert len(get("networkpolicies", namespace=ns)["items"]) == 3
        assert len(get("resourcequotas", namespace=ns)["items"]) == 1
        assert len(get("serviceaccounts", namespace=ns, selector="stockade.io/agentrun")["items"]) == 1


@pytest.mark.parametrize(("pod_phase", "run_phase", "stalled"), [("Succeeded", "Succeeded", "False"),
                                                                  ("Failed", "Failed", "True")])
def test_phase_follows_the_workload_to_completion(operator: Operator, team_namespace: str, pod_phase: str,
                                                  run_phase: str, stalled: str) -> None:
    name = f"done-{pod_phase.lower()}"
    apply(agentrun(name, team_namespace, simple_spec()))
    wait_ready(team_namespace, name)
    ns = run_namespace(team_namespace, name)
    # What a kubelet reports when the agent's process exits (kwok runs none).
    kubectl("patch", "pod", name, "-n", ns, "--subresource=status", "--type=merge",
            "-p", f'{{"status":{{"phase":"{pod_phase}"}}}}')
    run = wait_for(lambda: (r := get("agentrun", name, team_namespace)) and r["status"]["phase"] == run_phase and r,
                   timeout=20, what=f"the run to become {run_phase}")
    assert condition(run, "Stalled")["status"] == stalled
    assert condition(run, "Ready")["status"] == ("True" if run_phase == "Succeeded" else "False")
    kubectl("delete", "pod", name, "-n", ns, "--wait=false")
    time.sleep(1.5)
    assert get("agentrun", name, team_namespace)["status"]["phase"] == run_phase, "a finished run stays finished"
    assert get("pod", name, ns) is None or get("pod", name, ns)["metadata"].get("deletionTimestamp"), \
        "a finished run's workload is not re-created"


def test_job_workload_runs_under_the_job_controller(operator: Operator, team_namespace: str) -> None:
    spec = simple_spec()
    spec["workload"] = "Job"
    apply(agentrun("batch", team_namespace, spec))
    run = wait_ready(team_namespace, "batch")
    ns = run_namespace(team_namespace, "batch")
    assert run["status"]["workload"] == "job/batch"
    job = get("job", "batch", ns)
    assert job["spec"]["backoffLimit"] == 0
    pods = get("pods", namespace=ns, selector="batch.kubernetes.io/job-name=batch")["items"]
    assert len(pods) == 1 and pods[0]["spec"]["serviceAccountName"] == "agent"
    quota = get("resourcequota", "stockade-grant", ns)
    assert quota["status"]["used"]["count/jobs.batch"] == "1"
    assert get("pod", "batch", ns) is None, "a Job workload has no bare Pod"
