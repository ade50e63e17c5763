"""The `stockade` CLI end to end: `status` against the real cluster, as a command and as a kubectl plugin.

Every claim the CLI makes is checked against what the API server holds, read separately with kubectl.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from .conftest import (
    BIN,
    KUBECONFIG,
    ROOT,
    Dnsmasq,
    Operator,
    agentrun,
    apply,
    condition,
    get,
    gpu_spec,
    ready,
    simple_spec,
    wait_for,
    wait_gpu_charged,
)

VENV_BIN = Path(sys.executable).parent  # where `pip install` put stockade and kubectl-stockade
GUARDRAIL_KINDS = {"ServiceAccount": "serviceaccount", "ResourceQuota": "resourcequota", "LimitRange": "limitrange",
                   "NetworkPolicy": "networkpolicy", "Role": "role", "RoleBinding": "rolebinding"}


def stockade(*args: str, kubeconfig: str = KUBECONFIG, plugin: bool = False) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it: `python -m stockade.cli ...`, or `kubectl stockade ...` found on PATH."""
    env = {**os.environ, "KUBECONFIG": kubeconfig, "COLUMNS": "200", "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    cmd = [str(BIN / "kubectl"), "stockade", *args] if plugin else [sys.executable, "-m", "stockade.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=ROOT, check=False)


def status_json(name: str, namespace: str, **kwargs: Any) -> dict[str, Any]:
    result = stockade("status", name, "-n", namespace, "-o", "json", **kwargs)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def wait_ready(team: str, name: str) -> dict[str, Any]:
    return wait_for(lambda: ready(team, name), timeout=30, what=f"AgentRun {team}/{name} to be Ready")


def test_status_json_matches_the_api_server(operator: Operator, dnsmasq: Dnsmasq, team_namespace: str) -> None:
    dnsmasq.set({"api.cli.test": ["203.0.113.9", "2001:db8:9::9"]})
    spec = gpu_spec(egress=[{"cidr": "10.42.0.0/16", "ports": [443]}, {"host": "api.cli.test", "ports": [443]}],
                    dns=True, duration="4h",
                    kubernetesAPI=[{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}])
    apply(agentrun("fenced", team_namespace, spec))
    wait_for(lambda: (r := ready(team_namespace, "fenced")) and r["status"].get("resolvedEgress", {}).get(
        "api.cli.test") and r, timeout=30, what="Ready with the host resolved")
    wait_gpu_charged(f"{team_namespace}-fenced")  # compare the report once the quota's charge is settled
    report = status_json("fenced", team_namespace)
    run = get("agentrun", "fenced", team_namespace)
    ns = run["status"]["runNamespace"]

    assert report["kind"] == "FenceReport"
    assert report["phase"] == run["status"]["phase"] == "Running"
    assert report["runNamespace"] == ns
    assert report["agentRun"]["uid"] == run["metadata"]["uid"]
    assert report["expiresAt"] == run["status"]["expiresAt"] and 0 < report["expiresInSeconds"] <= 4 * 3600
    assert {c["type"]: c["status"] for c in report["conditions"]} == \
        {c["type"]: c["status"] for c in run["status"]["conditions"]}
    host = report["grant"]["egress"][1]
    assert host["host"] == "api.cli.test"
    assert host["addresses"] == run["status"]["resolvedEgress"]["api.cli.test"] == ["203.0.113.9", "2001:db8:9::9"]

    assert report["fenceComplete"] is True
    rows = {(g["kind"], g["name"]): g["state"] for g in report["guardrails"]}
    assert set(rows.values()) == {"present"}
    assert {("NetworkPolicy", "stockade-dns"), ("Role", "stockade-agent"), ("RoleBinding", "stockade-agent"),
            ("Namespace", ns)} <= set(rows)
    for kind, name in rows:
        assert get(kind.lower() if kind == "Namespace" else GUARDRAIL_KINDS[kind], name,
                   None if kind == "Namespace" else ns), f"{kind}/{name} reported present"

    quota = get("resourcequota", "stockade-grant", ns)
    assert {r["resource"]: r["hard"] for r in report["quota"]["resources"]} == quota["status"]["hard"]
    used = {r["resource"]: r["used"] for r in report["quota"]["resources"] if r["used"] is not None}
    assert used == {k: v for k, v in quota["status"]["used"].items() if k in quota["status"]["hard"]}
    assert used["requests.nvidia.com/gpu"] == "1"
    pod = get("pod", "fenced", ns)
    assert report["pods"] == [{"name": "fenced", "phase": pod["status"]["phase"], "node": pod["spec"]["nodeName"],
                               "quarantined": False, "terminating": False}]


def test_human_output_and_the_kubectl_plugin(operator: Operator, team_namespace: str) -> None:
    apply(agentrun("shown", team_namespace, simple_spec(egress=[{"cidr": "10.42.0.0/16", "ports": [443]}])))
    wait_ready(team_namespace, "shown")
    human = stockade("status", "shown", "-n", team_namespace)
    assert human.returncode == 0, human.stderr
    for text in (f"AgentRun {team_namespace}/shown", "Running", "Ready", "Quarantined", "Grant", "10.42.0.0/16",
                 "Guardrails", "stockade-deny-all", "present", "Quota (used / hard)", "requests.cpu", "Pods",
                 "Violations: none"):
        assert text in human.stdout, text
    assert "missing" not in human.stdout

    assert (VENV_BIN / "kubectl-stockade").exists(), "pip install -e . puts the plugin next to python"
    plugin = stockade("status", "shown", "-n", team_namespace, "-o", "json", plugin=True)
    assert plugin.returncode == 0, plugin.stderr
    assert json.loads(plugin.stdout)["phase"] == "Running"
    usage = stockade("--help", plugin=True)
    assert "kubectl stockade" in usage.stdout and "status" in usage.stdout


def test_refused_template_shows_the_reason(operator: Operator, team_namespace: str) -> None:
    spec = simple_spec(cpu="1")
    spec["template"]["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "2"}}
    spec["template"]["spec"]["hostNetwork"] = True
    apply(agentrun("greedy", team_namespace, spec))
    wait_for(lambda: condition(get("agentrun", "greedy", team_namespace), "Ready").get("reason")
             == "TemplateExceedsGrant", timeout=30, what="the template to be refused")
    report = status_json("greedy", team_namespace)
    assert report["phase"] == "Pending" and report["pods"] == []
    assert any("spec.template.spec.hostNetwork" in r for r in report["refusals"])
    assert any("limits.cpu" in r and "spec.grant.cpu" in r for r in report["refusals"])
    human = stockade("status", "greedy", "-n", team_namespace).stdout
    assert "Template refused" in human and "hostNetwork" in human and "TemplateExceedsGrant" in human


def test_quarantine_and_violations_are_shown(operator: Operator, team_namespace: str) -> None:
    spec = simple_spec(cpu="2")
    spec["template"]["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "1", "memory": "1Gi"}}
    spec["response"] = ["isolate"]
    apply(agentrun("narrowed", team_namespace, spec))
    wait_ready(team_namespace, "narrowed")
    spec["grant"]["cpu"] = "500m"  # the running pod is now beyond its grant: an API violation
    apply(agentrun("narrowed", team_namespace, spec))
    wait_for(lambda: (get("agentrun", "narrowed", team_namespace)["status"].get("quarantine") or {}).get("active"),
             timeout=30, what="the quarantine")

    report = status_json("narrowed", team_namespace)
    run = get("agentrun", "narrowed", team_namespace)
    assert report["phase"] == "Quarantined" and report["quarantine"] == run["status"]["quarantine"]
    assert report["violationsTotal"] == len(run["status"]["violations"])
    assert any(v["kind"] == "PodExceedsGrant" and v["pod"] == "narrowed" for v in report["violations"])
    assert report["pods"][0]["quarantined"] is True
    rows = {(g["kind"], g["name"]): g["state"] for g in report["guardrails"]}
    assert rows[("NetworkPolicy", "stockade-quarantine")] == "present"
    cpu = next(r for r in report["quota"]["resources"] if r["resource"] == "limits.cpu")
    assert cpu["hard"] == "500m" and cpu["exceeded"] is True
    human = stockade("status", "narrowed", "-n", team_namespace).stdout
    for text in ("Quarantine", "PodExceedsGrant", f"kubectl stockade release narrowed -n {team_namespace}"):
        assert text in human, text


def test_not_found_and_the_contexts_namespace(operator: Operator, team_namespace: str, tmp_path: Path) -> None:
    missing = stockade("status", "nobody", "-n", team_namespace, "-o", "json")
    # -o json answers in JSON even when it fails: the error and the exit code, for scripts to read.
    assert missing.returncode == 2, missing
    error = json.loads(missing.stdout)
    assert error["error"] == f"AgentRun {team_namespace}/nobody not found" and error["exitCode"] == 2
    human = stockade("status", "nobody", "-n", team_namespace)
    assert human.returncode == 2 and human.stdout == ""
    assert f"AgentRun {team_namespace}/nobody not found" in human.stderr

    apply(agentrun("here", team_namespace, simple_spec()))
    wait_ready(team_namespace, "here")
    config = tmp_path / "kubeconfig"
    config.write_text(Path(KUBECONFIG).read_text())
    subprocess.run([str(BIN / "kubectl"), "--kubeconfig", str(config), "config", "set-context", "--current",
                    f"--namespace={team_namespace}"], check=True, capture_output=True, timeout=30)
    report = json.loads(stockade("status", "here", "-o", "json", kubeconfig=str(config)).stdout)
    assert report["agentRun"]["namespace"] == team_namespace
