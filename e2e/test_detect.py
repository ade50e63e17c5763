"""Detection and quarantine end to end: each signal source, on the real cluster, to the right rung of
the ladder on the right pod of the right AgentRun, with the evidence in status.

The module runs its own operator (the signal endpoint needs a token, the poller a Prometheus): the
session operator is stopped for the module and started again after it, so only one runs at a time.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from . import netpol
from .conftest import (
    BREAK_GLASS,
    ROOT,
    KubectlError,
    Operator,
    agentrun,
    apply,
    condition,
    create,
    get,
    gpu_spec,
    kubectl,
    ready,
    simple_spec,
    wait_for,
)
from .detect_support import DcgmExporter, Prometheus, Signals, falco_event, releaser_bound, signal_operator

TOKEN = secrets.token_urlsafe(24)
EGRESS = [{"cidr": "10.42.0.0/16", "ports": [443]}]


@pytest.fixture(scope="module")
def exporter() -> Iterator[DcgmExporter]:
    server = DcgmExporter()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def prometheus(exporter: DcgmExporter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), exporter)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def signals(operator: Operator, prometheus: Prometheus, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[Operator, Signals]]:
    with signal_operator(operator, tmp_path_factory.mktemp("detect-operator"), TOKEN,
                         STOCKADE_PROMETHEUS_URL=prometheus.url, STOCKADE_PROMETHEUS_INTERVAL="1") as pair:
        yield pair


def run_namespace(team: str, name: str) -> str:
    return f"{team}-{name}"


def start(team: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    apply(agentrun(name, team, spec))
    return wait_for(lambda: ready(team, name), timeout=30, what=f"AgentRun {team}/{name} to be Ready")


def with_response(spec: dict[str, Any], *steps: str, enforcement: str = "enforce") -> dict[str, Any]:
    spec["response"] = list(steps)
    spec["enforcement"] = enforcement
    return spec


def quarantined(team: str, name: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        run = get("agentrun", name, team)
        status = (run or {}).get("status") or {}
        if (status.get("quarantine") or {}).get("active") and status.get("phase") == "Quarantined" and \
                condition(run, "Quarantined").get("status") == "True":
            return dict(run)
        return None

    return wait_for(check, timeout=20, what=f"AgentRun {team}/{name} to be Quarantined")


def violations(team: str, name: str) -> list[dict[str, Any]]:
    return list(((get("agentrun", name, team) or {}).get("status") or {}).get("violations") or [])


def events(team: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in get("events", namespace=team)["items"] if e["reason"] == reason]


def assert_isolated(ns: str, pod: str) -> None:
    live = get("pod", pod, ns)
    assert live["metadata"]["labels"]["stockade.io/quarantined"] == "true"
    policy = get("networkpolicy", "stockade-quarantine", ns)
    assert policy["spec"]["podSelector"] == {"matchLabels": {"stockade.io/quarantined": "true"}}
    assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    assert not policy["spec"].get("ingress") and not policy["spec"].get("egress")


def ssh_event(ns: str, pod: str, address: str = "198.51.100.7", port: int = 443) -> dict[str, Any]:
    return falco_event("Disallowed SSH Connection Non Standard Port", ns, pod, **{
        "fd.name": f"10.0.0.9:40112->{address}:{port}", "fd.lport": 40112, "fd.rport": port, "fd.type": "ipv4",
        "fd.l4proto": "tcp", "evt.type": "connect", "proc.name": "ssh", "proc.exepath": "/usr/bin/ssh",
        "proc.cmdline": f"ssh -p {port} tunnel@{address}", "user.name": "agent"})


def test_falco_ssh_to_an_ungranted_address_isolates_and_evicts(
        signals: tuple[Operator, Signals], team_namespace: str) -> None:
    _, client = signals
    start(team_namespace, "tunnel", with_response(simple_spec(egress=EGRESS), "isolate", "evict"))
    start(team_namespace, "bystander", with_response(simple_spec(egress=EGRESS), "isolate", "evict"))
    ns = run_namespace(team_namespace, "tunnel")
    pod_uid = get("pod", "tunnel", ns)["metadata"]["uid"]

    status, answer = client.post("/falco", ssh_event(ns, "tunnel"))
    assert status == 202, answer
    assert answer["agentRun"] == f"{team_namespace}/tunnel" and answer["violation"]["kind"] == "SSHConnection"

    run = quarantined(team_namespace, "tunnel")
    assert condition(run, "Quarantined")["reason"] == "SSHConnection"
    assert condition(run, "Ready")["status"] == "False"
    q = run["status"]["quarantine"]
    assert (q["pods"], q["steps"]) == (["tunnel"], ["isolate", "evict"])
    [found] = run["status"]["violations"]
    assert (found["kind"], found["source"], found["pod"], found["action"]) == (
        "SSHConnection", "runtime", "tunnel", "isolate+evict")
    assert found["evidence"]["destination"] == {"ip": "198.51.100.7", "port": 443, "protocol": "TCP",
                                                "outbound": True, "granted": False}
    assert found["evidence"]["signal"]["rule"] == "Disallowed SSH Connection Non Standard Port"
    assert found["evidence"]["pod"]["uid"] == pod_uid
    assert found["evidence"]["pod"]["containers"][0]["image"] == "registry.example/agent:1"
    assert any(e["reason"] == "Scheduled" for e in found["evidence"]["events"])

    policy = get("networkpolicy", "stockade-quarantine", ns)
    assert policy["spec"]["podSelector"] == {"matchLabels": {"stockade.io/quarantined": "true"}}
    wait_for(lambda: get("pod", "tunnel", ns) is None, timeout=20, what="the pod to be evicted")
    time.sleep(2)
    assert get("pod", "tunnel", ns) is None, "the workload is not re-created while quarantined"
    assert wait_for(lambda: events(team_namespace, "Quarantined"), timeout=10, what="a Quarantined event")
    assert any("SSHConnection" in e["message"] for e in events(team_namespace, "Violation"))

    bystander = get("agentrun", "bystander", team_namespace)
    assert bystander["status"]["phase"] == "Running" and not bystander["status"].get("violations")
    assert "stockade.io/quarantined" not in get("pod", "bystander", run_namespace(team_namespace, "bystander"))[
        "metadata"]["labels"]


def test_falco_miner_event_isolates_the_pod(signals: tuple[Operator, Signals], team_namespace: str) -> None:
    _, client = signals
    start(team_namespace, "miner", with_response(simple_spec(egress=EGRESS), "isolate"))
    ns = run_namespace(team_namespace, "miner")
    pod_labels = dict(get("pod", "miner", ns)["metadata"]["labels"])
    granted = netpol.Flow(netpol.Pod(ns, pod_labels), "10.42.0.5", 443)
    assert netpol.allowed([ns], [granted]) == [True], "before: the granted destination is reachable"

    stratum = falco_event("Detect crypto miners using the Stratum protocol", ns, "miner", "Critical", **{
        "proc.name": "xmrig", "proc.exepath": "/tmp/.x/xmrig", "evt.type": "execve",
        "proc.cmdline": "xmrig -o stratum+tcp://pool.example.org:3333 -u 4AdUndXHHZ9"})
    status, answer = client.post("/falco", stratum)
    assert status == 202 and answer["violation"]["kind"] == "CryptoMiner", answer

    run = quarantined(team_namespace, "miner")
    [found] = run["status"]["violations"]
    assert (found["kind"], found["severity"], found["action"]) == ("CryptoMiner", "critical", "isolate")
    assert "stratum+tcp://pool.example.org:3333" in found["detail"]
    wait_for(lambda: (get("pod", "miner", ns)["metadata"]["labels"].get("stockade.io/quarantined") == "true"),
             timeout=10, what="the quarantine label")
    assert_isolated(ns, "miner")
    isolated = netpol.Flow(netpol.Pod(ns, {**pod_labels, "stockade.io/quarantined": "true"}), "10.42.0.5", 443)
    inbound = netpol.Flow(netpol.Pod("default", {}), netpol.Pod(ns, {**pod_labels, "stockade.io/quarantined": "true"}),
                          8080)
    assert netpol.allowed([ns, "default"], [isolated, inbound]) == [False, False], "after: nothing in or out"


def test_dcgm_gpu_use_without_a_gpu_grant_through_prometheus(
        signals: tuple[Operator, Signals], exporter: DcgmExporter, prometheus: Prometheus, team_namespace: str) -> None:
    start(team_namespace, "nogpu", with_response(simple_spec(), "isolate"))
    start(team_namespace, "withgpu", with_response(gpu_spec(), "isolate"))
    nogpu, withgpu = run_namespace(team_namespace, "nogpu"), run_namespace(team_namespace, "withgpu")
    try:
        exporter.set_gpu(withgpu, "withgpu", gpu=0, util=95, memory_mib=30000)  # granted: one GPU, busy
        exporter.set_gpu(nogpu, "nogpu", gpu=3, util=87, memory_mib=4096)
        wait_for(lambda: prometheus.query(f'DCGM_FI_DEV_GPU_UTIL{{namespace="{nogpu}"}}'), timeout=15,
                 what="Prometheus to have the series")
        run = quarantined(team_namespace, "nogpu")
        [found] = run["status"]["violations"]
        assert (found["kind"], found["source"], found["pod"], found["action"]) == (
            "GPUNotGranted", "metrics", "nogpu", "isolate")
        assert "87% util, 4096 MiB" in found["detail"]
        series = found["evidence"]["signal"]["series"]
        assert {s["metric"]["pod"] for s in series} == {"nogpu"}
        assert {s["metric"]["__name__"] for s in series} == {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED"}
        assert_isolated(nogpu, "nogpu")
        time.sleep(3)  # three more polls
        assert violations(team_namespace, "withgpu") == [], "a granted GPU in use is no violation"
        assert get("agentrun", "withgpu", team_namespace)["status"]["phase"] == "Running"
    finally:
        exporter.clear(nogpu, "nogpu", 3)
        exporter.clear(withgpu, "withgpu", 0)


def test_api_violations_in_audit_mode_are_recorded_not_acted_on(
        signals: tuple[Operator, Signals], team_namespace: str) -> None:
    spec = simple_spec(cpu="2", kubernetesAPI=[{"apiGroups": [""], "resources": ["services"],
                                                "verbs": ["create", "get"]}])
    spec["template"]["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "1", "memory": "1Gi"}}
    start(team_namespace, "watched", with_response(spec, "isolate", "evict", enforcement="audit"))
    ns = run_namespace(team_namespace, "watched")
    pod_uid = get("pod", "watched", ns)["metadata"]["uid"]

    # The agent opens a way in with the API access it was granted (with external IPs: a plain ClusterIP
    # Service is the agent's to make when the grant names services; the quota holds NodePorts at zero)...
    create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "backdoor", "namespace": ns},
            "spec": {"externalIPs": ["192.0.2.50"], "selector": {"stockade.io/agentrun": "watched"},
                     "ports": [{"port": 2222}]}},
           as_user=f"system:serviceaccount:{ns}:agent")
    # ...and its running pod is left beyond a grant narrowed under it.
    narrowed = with_response(simple_spec(cpu="500m", kubernetesAPI=spec["grant"]["kubernetesAPI"]), "isolate",
                             "evict", enforcement="audit")
    narrowed["template"] = spec["template"]
    apply(agentrun("watched", team_namespace, narrowed))

    # (Admission records its own audit entry for the Service too, with source "admission".)
    found = wait_for(lambda: (v := {x["kind"]: x for x in violations(team_namespace, "watched")
                                    if x["source"] == "api"}) and {"ServiceNotGranted", "PodExceedsGrant"} <= set(v)
                     and v, timeout=20, what="both API violations")
    service, pod = found["ServiceNotGranted"], found["PodExceedsGrant"]
    assert service["source"] == pod["source"] == "api"
    assert service["action"] == pod["action"] == "none (audit)"
    assert "backdoor" in service["detail"] and "2222/TCP" in service["detail"]
    assert pod["pod"] == "watched" and "limits.cpu" in pod["detail"] and "spec.grant.cpu" in pod["detail"]
    assert pod["evidence"]["pod"]["uid"] == pod_uid

    run = get("agentrun", "watched", team_namespace)
    assert run["status"]["phase"] != "Quarantined" and not (run["status"].get("quarantine") or {}).get("active")
    live = get("pod", "watched", ns)
    assert live["metadata"]["uid"] == pod_uid and "stockade.io/quarantined" not in live["metadata"]["labels"]
    assert get("networkpolicy", "stockade-quarantine", ns) is None
    assert get("service", "backdoor", ns), "audit blocks and removes nothing"
    warnings = wait_for(lambda: [e for e in events(team_namespace, "Violation") if e["type"] == "Warning"],
                        timeout=10, what="Warning events")
    assert any("ServiceNotGranted" in e["message"] for e in warnings)


def test_unauthenticated_and_unknown_pod_signals_are_refused(
        signals: tuple[Operator, Signals], team_namespace: str) -> None:
    _, client = signals
    start(team_namespace, "guarded", with_response(simple_spec(egress=EGRESS), "isolate"))
    ns = run_namespace(team_namespace, "guarded")
    event = ssh_event(ns, "guarded")
    assert client.post("/falco", event, token=None)[0] == 401
    assert client.post("/falco", event, token="not-the-token")[0] == 401
    assert client.post("/signal", {"detector": "x"}, token=None)[0] == 401
    status, answer = client.post("/falco", ssh_event(team_namespace, "guarded"))  # the team's namespace: no run
    assert status == 404 and "nothing done" in answer["error"]
    status, answer = client.post("/falco", ssh_event(ns, "not-a-pod"))
    assert status == 404 and "does not exist" in answer["error"]
    status, answer = client.post("/falco", ssh_event("kube-system", "kube-apiserver"))
    assert status == 404
    time.sleep(1)
    run = get("agentrun", "guarded", team_namespace)
    assert not run["status"].get("violations") and not run["status"].get("quarantine")
    assert "stockade.io/quarantined" not in get("pod", "guarded", ns)["metadata"]["labels"]
    assert get("networkpolicy", "stockade-quarantine", ns) is None


def test_generic_signal_is_judged_against_the_egress_grant(
        signals: tuple[Operator, Signals], team_namespace: str) -> None:
    _, client = signals
    start(team_namespace, "hubble", with_response(simple_spec(egress=EGRESS), "isolate"))
    ns = run_namespace(team_namespace, "hubble")
    flow = {"detector": "hubble", "namespace": ns, "pod": "hubble", "kind": "Connection",
            "detail": "TCP SYN from the agent", "destination": {"ip": "10.42.7.7", "port": 443, "protocol": "TCP"}}
    status, answer = client.post("/signal", flow)
    assert status == 200 and answer["violation"] is None, answer
    status, answer = client.post("/signal", {**flow, "destination": {"ip": "2001:db8::7", "port": 443,
                                                                    "protocol": "TCP"}})
    assert status == 202 and answer["violation"]["kind"] == "UngrantedEgress", answer
    run = quarantined(team_namespace, "hubble")
    [found] = run["status"]["violations"]
    assert (found["source"], found["action"]) == ("signal", "isolate")
    assert found["evidence"]["destination"]["granted"] is False
    assert_isolated(ns, "hubble")


RELEASER = "e2e-reviewer"


@pytest.fixture(scope="module")
def releaser() -> Iterator[str]:
    with releaser_bound(RELEASER, "e2e-releaser") as user:
        yield user


def _quarantine_parole(client: Signals, team_namespace: str, name: str) -> tuple[str, str]:
    start(team_namespace, name, with_response(simple_spec(egress=EGRESS), "isolate", "evict"))
    ns = run_namespace(team_namespace, name)
    old_uid = get("pod", name, ns)["metadata"]["uid"]
    assert client.post("/falco", ssh_event(ns, name))[0] == 202
    quarantined(team_namespace, name)
    wait_for(lambda: get("pod", name, ns) is None, timeout=20, what="the pod to be evicted")
    return ns, old_uid


def _released(team_namespace: str, name: str) -> dict[str, Any] | None:
    run = get("agentrun", name, team_namespace)
    q = run["status"].get("quarantine") or {}
    return run if q.get("active") is False and run["status"]["phase"] != "Quarantined" else None


def test_release_lifts_the_quarantine_and_is_recorded(signals: tuple[Operator, Signals], team_namespace: str,
                                                      releaser: str) -> None:
    _, client = signals
    ns, old_uid = _quarantine_parole(client, team_namespace, "parole")

    # The CLI with the caller's own credentials (an admin impersonating the releaser, as kubectl --as).
    subprocess.run([sys.executable, "-m", "stockade.cli", "release", "parole", "-n", team_namespace,
                    "--as", releaser], check=True, cwd=ROOT, env=dict(os.environ), timeout=60)

    run = wait_for(lambda: _released(team_namespace, "parole"), timeout=20, what="the quarantine to be lifted")
    q = run["status"]["quarantine"]
    assert q["releasedBy"] == releaser and q["releasedAt"] >= q["since"]
    assert q["pods"] == ["parole"] and q["steps"] == ["isolate", "evict"], "what was done stays on record"
    assert "stockade.io/release" not in (run["metadata"].get("annotations") or {})
    assert condition(run, "Quarantined")["status"] == "False"
    assert get("networkpolicy", "stockade-quarantine", ns) is None
    back = wait_for(lambda: get("pod", "parole", ns), timeout=20, what="the workload to come back")
    assert back["metadata"]["uid"] != old_uid and "stockade.io/quarantined" not in back["metadata"]["labels"]


def test_a_team_cannot_lift_its_own_quarantine(signals: tuple[Operator, Signals], team_namespace: str,
                                               releaser: str) -> None:
    """Editing the AgentRun is not releasing it: the verb 'release' is needed, and the releaser recorded is the
    authenticated user, never what the caller wrote."""
    _, client = signals
    ns, _ = _quarantine_parole(client, team_namespace, "lifer")
    developer = f"{team_namespace}-dev"
    apply([{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "agentrun-editor", "namespace": team_namespace},
            "rules": [{"apiGroups": ["stockade.io"], "resources": ["agentruns"],
                       "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}]},
           {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "agentrun-editor", "namespace": team_namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "agentrun-editor"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": developer}]}])
    wait_for(lambda: kubectl("auth", "can-i", "patch", "agentruns", "-n", team_namespace, "--as", developer,
                             check=False).strip() == "yes", timeout=10, what="the developer's Role")

    with pytest.raises(KubectlError) as refused:
        kubectl("annotate", "agentrun", "lifer", "-n", team_namespace, "stockade.io/release=security-team",
                as_user=developer)
    assert "needs the verb 'release'" in refused.value.stderr and "stockade-releaser" in refused.value.stderr
    time.sleep(2)
    run = get("agentrun", "lifer", team_namespace)
    assert "stockade.io/release" not in (run["metadata"].get("annotations") or {})
    assert run["status"]["quarantine"]["active"] is True and run["status"]["phase"] == "Quarantined"
    assert get("networkpolicy", "stockade-quarantine", ns) is not None

    # The releaser writes someone else's name: the authenticated user is what is recorded.
    kubectl("annotate", "agentrun", "lifer", "-n", team_namespace, "stockade.io/release=security-team",
            as_user=releaser)
    run = wait_for(lambda: _released(team_namespace, "lifer"), timeout=20, what="the quarantine to be lifted")
    assert run["status"]["quarantine"]["releasedBy"] == releaser


def test_a_removed_quarantine_label_is_put_back(signals: tuple[Operator, Signals], team_namespace: str) -> None:
    _, client = signals
    start(team_namespace, "escape", with_response(simple_spec(egress=EGRESS), "isolate"))
    ns = run_namespace(team_namespace, "escape")
    assert client.post("/falco", ssh_event(ns, "escape"))[0] == 202
    quarantined(team_namespace, "escape")
    wait_for(lambda: get("pod", "escape", ns)["metadata"]["labels"].get("stockade.io/quarantined"), timeout=10)
    with pytest.raises(KubectlError, match="set and removed by the Stockade operator only"):
        kubectl("label", "pod", "escape", "-n", ns, "stockade.io/quarantined-")  # an admin, not break-glass
    kubectl("label", "pod", "escape", "-n", ns, "stockade.io/quarantined-", as_user=BREAK_GLASS)
    wait_for(lambda: get("pod", "escape", ns)["metadata"]["labels"].get("stockade.io/quarantined") == "true",
             timeout=10, what="the label to be put back")
    # The admin's refused attempt is on record (admission), and so is the change that got through; the
    # two are written by different parts of the operator, in either order.
    kinds = wait_for(lambda: (k := [v["kind"] for v in violations(team_namespace, "escape")]) and len(k) == 3 and k,
                     timeout=10, what="three violations on record")
    assert kinds[0] == "SSHConnection"
    assert sorted(kinds[1:]) == ["QuarantineLabelChange", "QuarantineTampered"]


def test_a_signal_storm_stacks_no_actions_and_does_not_stall_the_operator(
        signals: tuple[Operator, Signals], team_namespace: str) -> None:
    op, client = signals
    start(team_namespace, "storm", with_response(simple_spec(egress=EGRESS), "isolate"))
    ns = run_namespace(team_namespace, "storm")
    before = _isolations(op)
    event = ssh_event(ns, "storm")
    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(lambda _: client.post("/falco", event)[0], range(300)))
    assert answers.count(202) == 300

    run = quarantined(team_namespace, "storm")
    found = wait_for(lambda: [v for v in violations(team_namespace, "storm") if v.get("count", 1) == 300],
                     timeout=20, what="all 300 signals folded into the record")
    assert len(found) == 1 and found[0]["action"] == "isolate"
    assert len(run["status"]["violations"]) <= 20
    assert _isolations(op) - before == 2, "one label patch and one policy apply, not 300"
    assert_isolated(ns, "storm")
    # Still responsive: a new run is fenced and started as usual.
    start(team_namespace, "after-storm", simple_spec())


def _isolations(op: Operator) -> float:
    for line in op.metrics().splitlines():
        if line.startswith('stockade_quarantine_actions_total{outcome="done",step="isolate"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_freeze_revokes_the_agents_rbac(signals: tuple[Operator, Signals], team_namespace: str, releaser: str) -> None:
    _, client = signals
    spec = simple_spec(egress=EGRESS, kubernetesAPI=[{"apiGroups": [""], "resources": ["configmaps"],
                                                      "verbs": ["get"]}])
    start(team_namespace, "frozen", with_response(spec, "isolate", "freeze"))
    ns = run_namespace(team_namespace, "frozen")
    assert get("rolebinding", "stockade-agent", ns)
    assert client.post("/falco", ssh_event(ns, "frozen"))[0] == 202
    run = quarantined(team_namespace, "frozen")
    assert run["status"]["quarantine"]["steps"] == ["isolate", "freeze"]
    wait_for(lambda: get("rolebinding", "stockade-agent", ns) is None, timeout=10, what="the RoleBinding to go")
    time.sleep(2)
    assert get("rolebinding", "stockade-agent", ns) is None, "not restored while frozen"
    denied = kubectl("auth", "can-i", "get", "configmaps", "-n", ns, "--as", f"system:serviceaccount:{ns}:agent",
                     check=False)
    assert denied.strip() == "no"

    kubectl("annotate", "agentrun", "frozen", "-n", team_namespace, "stockade.io/release=e2e-reviewer",
            as_user=RELEASER)
    wait_for(lambda: get("rolebinding", "stockade-agent", ns), timeout=20, what="RBAC to be restored on release")
