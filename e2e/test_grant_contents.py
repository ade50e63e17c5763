"""What a grant may contain (issue 14.4, 14.5, 14.7, 14.13), end to end on the real API server.

Never-grantable API rules are refused by the API server itself (CEL generated from stockade.apirules)
with the field path; a template asking for a token without an API grant, or carrying a device
annotation, gets Ready=False/TemplateExceedsGrant and no pod; a MIG grant reaches Running on the MIG
node. Every assertion reads what the API server holds or answered.
"""

from __future__ import annotations

import copy
import json
import subprocess
from typing import Any

import pytest
import yaml

from .conftest import BIN, KUBECONFIG, Operator, agentrun, apply, condition, get, kubectl, ready, simple_spec, wait_for


def kubectl_apply(obj: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    # JSON, not YAML: a string such as "1e100" stays a string (PyYAML leaves it unquoted, and kubectl's
    # YAML reads that as a number).
    return subprocess.run([str(BIN / "kubectl"), "--kubeconfig", KUBECONFIG, "apply", "-f", "-"],
                          input=json.dumps(obj), capture_output=True, text=True, timeout=60, check=False)


def rule(resources: list[str], verbs: list[str] | None = None, groups: list[str] | None = None,
         **extra: Any) -> dict[str, Any]:
    return {"apiGroups": [""] if groups is None else groups, "resources": resources, "verbs": verbs or ["get"],
            **extra}


# (case, rule, field the refusal names, words of the message)
FORBIDDEN = [
    ("pods/binding", rule(["pods/binding"], ["create"]), "resources", "pods/binding"),
    ("serviceaccounts/token", rule(["serviceaccounts/token"], ["create"]), "resources", "serviceaccounts/token"),
    ("escalate", rule(["roles"], ["escalate"], ["rbac.authorization.k8s.io"]), "verbs[0]", "escalate"),
    ("bind", rule(["roles"], ["bind"], ["rbac.authorization.k8s.io"]), "verbs[0]", "bind"),
    ("impersonate", rule(["serviceaccounts"], ["impersonate"]), "verbs[0]", "impersonate"),
    ("wildcard apiGroups", rule(["pods"], groups=["*"]), "apiGroups", "wildcards"),
    ("wildcard resources", rule(["*"]), "resources", "wildcards"),
    ("wildcard verbs", rule(["pods"], ["*"]), "verbs[0]", '"*"'),
    ("wildcard resourceNames", rule(["configmaps"], resourceNames=["*"]), "resourceNames", "wildcards"),
    ("nodes", rule(["nodes"]), "resources", "cluster-scoped"),
    ("namespaces", rule(["namespaces"], ["update"]), "resources", "namespaces"),
    ("persistentvolumes", rule(["persistentvolumes"]), "resources", "cluster-scoped"),
    ("clusterroles", rule(["clusterroles"], ["get"], ["rbac.authorization.k8s.io"]), "resources", "cluster-scoped"),
    ("non-resource URLs", rule(["pods"], nonResourceURLs=["/metrics"]), "kubernetesAPI[0].nonResourceURLs",
     "unknown field"),
    ("pods/exec", rule(["pods/exec"], ["create"]), "resources", "NetworkPolicy"),
    ("pods/ephemeralcontainers", rule(["pods/ephemeralcontainers"], ["patch"]), "resources", "unchecked"),
    ("rolebindings", rule(["rolebindings"], ["create"], ["rbac.authorization.k8s.io"]), "resources", "fence"),
]


@pytest.mark.parametrize(("case", "bad", "field", "words"), FORBIDDEN, ids=[c[0] for c in FORBIDDEN])
def test_never_grantable_rules_are_refused_by_the_api_server(  # noqa: PLR0917
        operator: Operator, team_namespace: str, case: str,
                                                             bad: dict[str, Any], field: str, words: str) -> None:
    spec = simple_spec(kubernetesAPI=[bad])
    result = kubectl_apply(agentrun("forbidden", team_namespace, spec))
    assert result.returncode != 0, f"{case}: the API server accepted it: {result.stdout}"
    where = field if field.startswith("kubernetesAPI") else f"kubernetesAPI[0].{field}"
    assert f"spec.grant.{where}" in result.stderr, result.stderr
    assert words in result.stderr, result.stderr
    assert get("agentrun", "forbidden", team_namespace) is None


def test_a_grantable_rule_still_becomes_the_agents_role(operator: Operator, team_namespace: str) -> None:
    rules = [rule(["configmaps"], ["get", "list"]), rule(["pods/log"])]
    apply(agentrun("granted", team_namespace, simple_spec(kubernetesAPI=rules)))
    run = wait_for(lambda: ready(team_namespace, "granted"), timeout=60, what="the run to be Ready")
    role = get("role", "stockade-agent", run["status"]["runNamespace"])
    assert role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]},
                             {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}]


def refused_run(team: str, name: str, words: list[str]) -> dict[str, Any]:
    """The AgentRun reaches Ready=False/TemplateExceedsGrant naming ``words``, and its run namespace has no pod."""
    def refused() -> dict[str, Any] | None:
        obj = get("agentrun", name, team)
        cond = condition(obj, "Ready")
        if cond.get("reason") == "TemplateExceedsGrant" and obj["status"].get("observedGeneration") == \
                obj["metadata"]["generation"]:
            return dict(obj)
        return None

    run = wait_for(refused, timeout=60, what=f"{team}/{name} to be refused")
    cond = condition(run, "Ready")
    assert cond["status"] == "False"
    for word in words:
        assert word in cond["message"], (word, cond["message"])
    namespace = run["status"]["runNamespace"]
    # The fence is built (the guardrails come first) but no workload is ever created.
    wait_for(lambda: get("resourcequota", "stockade-grant", namespace), timeout=30, what="the fence")
    assert get("pods", namespace=namespace)["items"] == []
    return run


def token_template(audience: str | None) -> dict[str, Any]:
    token: dict[str, Any] = {"path": "token", "expirationSeconds": 3600}
    if audience:
        token["audience"] = audience
    spec = simple_spec()["template"]
    spec["spec"]["volumes"] = [{"name": "token", "projected": {"sources": [{"serviceAccountToken": token}]}}]
    spec["spec"]["containers"][0]["volumeMounts"] = [{"name": "token", "mountPath": "/var/run/token"}]
    return spec


def test_no_api_grant_no_token_of_any_kind(operator: Operator, team_namespace: str) -> None:
    spec = simple_spec()
    spec["template"] = token_template("https://vault.example")
    apply(agentrun("vault-token", team_namespace, spec))
    refused_run(team_namespace, "vault-token", ["serviceAccountToken", "no Kubernetes API access is granted",
                                                "spec.grant.kubernetesAPI"])


def test_with_an_api_grant_a_token_only_for_the_api_server(operator: Operator, team_namespace: str) -> None:
    spec = simple_spec(kubernetesAPI=[rule(["configmaps"])])
    spec["template"] = token_template("https://vault.example")
    apply(agentrun("vault-token", team_namespace, spec))
    refused_run(team_namespace, "vault-token", ["https://vault.example", "audience"])

    spec["template"] = token_template(None)
    apply(agentrun("api-token", team_namespace, spec))
    run = wait_for(lambda: ready(team_namespace, "api-token"), timeout=60, what="the run with an API token")
    pod = get("pod", "api-token", run["status"]["runNamespace"])
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "token")
    assert "audience" not in volume["projected"]["sources"][0]["serviceAccountToken"]


def test_the_webhook_refuses_a_token_the_agent_asks_for_in_its_own_pod(operator: Operator,
                                                                       team_namespace: str) -> None:
    rules = [rule(["pods"], ["create", "get"])]
    apply(agentrun("maker", team_namespace, simple_spec(kubernetesAPI=rules, pods=2)))
    run = wait_for(lambda: ready(team_namespace, "maker"), timeout=60, what="the run to be Ready")
    namespace = run["status"]["runNamespace"]
    pod = copy.deepcopy(get("pod", "maker", namespace))
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sneaky", "namespace": namespace},
            "spec": {key: pod["spec"][key] for key in ("containers", "securityContext", "serviceAccountName",
                                                       "restartPolicy", "automountServiceAccountToken")
                     if key in pod["spec"]}}
    for container in body["spec"]["containers"]:
        container.pop("volumeMounts", None)  # the API server's own token volume is not copied
    body["spec"]["volumes"] = [{"name": "t", "projected": {"sources": [{"serviceAccountToken": {
        "path": "t", "audience": "https://vault.example"}}]}}]
    result = subprocess.run([str(BIN / "kubectl"), "--kubeconfig", KUBECONFIG, "create", "-f", "-",
                             f"--as=system:serviceaccount:{namespace}:agent"], input=yaml.safe_dump(body),
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0, result.stdout
    assert "allowlist.stockade.io" in result.stderr and "https://vault.example" in result.stderr, result.stderr
    assert get("pod", "sneaky", namespace) is None


@pytest.mark.parametrize("annotation", ["cdi.k8s.io/gpu", "io.kubernetes.cri-o.Devices"])
def test_device_annotations_in_the_template_get_no_pod(operator: Operator, team_namespace: str,
                                                       annotation: str) -> None:
    spec = simple_spec()
    spec["template"]["metadata"] = {"annotations": {annotation: "nvidia.com/gpu=all"}}
    apply(agentrun("devices", team_namespace, spec))
    refused_run(team_namespace, "devices", [f"spec.template.metadata.annotations[{annotation}]", "device"])


def test_a_mig_run_reaches_running_on_the_mig_node(operator: Operator, team_namespace: str) -> None:
    mig = "nvidia.com/mig-1g.10gb"
    spec = simple_spec(gpu=1, gpuResource=mig)
    spec["template"]["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "1", "memory": "1Gi", mig: "1"}}
    apply(agentrun("mig", team_namespace, spec))
    run = wait_for(lambda: ready(team_namespace, "mig"), timeout=90, what="the MIG run to be Ready")
    pod = get("pod", "mig", run["status"]["runNamespace"])
    assert pod["status"]["phase"] == "Running"
    node = get("node", pod["spec"]["nodeName"])
    assert node["status"]["allocatable"].get(mig), f"{pod['spec']['nodeName']} offers no {mig}"
    tolerated = {t["key"] for t in pod["spec"]["tolerations"] if t.get("key")}
    assert {taint["key"] for taint in node["spec"].get("taints") or []} <= tolerated
    kubectl("delete", "agentrun", "mig", "-n", team_namespace, "--wait=false")

