"""The Helm charts against a real cluster: lint, server-side validation, install, the operator running with
exactly the chart's identity and settings, upgrade and uninstall.

The chart installs cluster-wide admission policies and webhook configurations bound to its own
ServiceAccount; in the suite's shared cluster they would fight the suite's operator (and it theirs). So
this module starts a cluster of its own (``e2e/cluster.sh up`` under another name) and removes it at the
end; STOCKADE_HELM_KUBECONFIG points it at an existing cluster instead, which it then leaves running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stockade.rbac import PERMISSIONS, expand

from . import chart
from .chart import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("STOCKADE_BIN") or subprocess.run(
    [str(ROOT / "e2e/cluster.sh"), "bindir"], capture_output=True, text=True, check=True).stdout.strip())
CLUSTER_NAME = "stockade-helm"
RELEASE, CRD_RELEASE, NAMESPACE, OPERATOR_USER = chart.RELEASE, chart.CRD_RELEASE, chart.NAMESPACE, chart.OPERATOR_USER
TEAM = "team-helm"
KUBE_VERSION = "1.30.0"
KUBECONFIG: dict[str, str] = {}


def sh(*args: str, check: bool = True, stdin: str | None = None, env: dict[str, str] | None = None,
       timeout: float = 240) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, input=stdin, timeout=timeout, check=False,
                            env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def helm(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return sh(str(BIN / "helm"), "--kubeconfig", KUBECONFIG["path"], *args, **kwargs)


def kubectl(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return sh(str(BIN / "kubectl"), "--kubeconfig", KUBECONFIG["path"], *args, **kwargs)


def get_json(*args: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(kubectl("get", *args, "-o", "json").stdout)
    return result


def exists(*args: str) -> bool:
    return kubectl("get", *args, "--ignore-not-found", "-o", "name", check=False).stdout.strip() != ""


def wait_for(what: str, predicate: Callable[[], bool], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    for tool in ("helm", "kubectl"):
        if not (BIN / tool).exists():
            pytest.fail(f"{tool} is not in {BIN}: run e2e/cluster.sh build (make e2e does)")
    given = os.environ.get("STOCKADE_HELM_KUBECONFIG")
    env = {"STOCKADE_CLUSTER_NAME": CLUSTER_NAME}
    if given:
        KUBECONFIG["path"] = given
    else:
        out = sh(str(ROOT / "e2e/cluster.sh"), "up", env=env, timeout=600).stdout
        KUBECONFIG["path"] = out.strip().splitlines()[-1]
    yield
    if not given:
        sh(str(ROOT / "e2e/cluster.sh"), "down", env=env, check=False)


@pytest.fixture(scope="module")
def crds(cluster: None) -> None:
    # As after `make run` or plain manifests: the CRD applied by kubectl. The chart takes it over.
    kubectl("apply", "--server-side", "--field-manager=stockade-install", "-f", str(ROOT / "crds"))
    helm("upgrade", "--install", CRD_RELEASE, str(ROOT / "charts/stockade-crds"), "--namespace", NAMESPACE,
         "--create-namespace", "--take-ownership", "--wait")
    # make run's wait (tolerates the empty status right after the apply).
    sh(str(ROOT / "e2e/cluster.sh"), "established", str(BIN / "kubectl"), "crd/agentruns.stockade.io",
       "crd/clusterkopfpeerings.kopf.dev", env={"KUBECONFIG": KUBECONFIG["path"]})


def test_charts_lint() -> None:
    for name in ("stockade", "stockade-crds"):
        sh(str(BIN / "helm"), "lint", "--strict", "--kube-version", KUBE_VERSION, str(ROOT / "charts" / name))


def test_rendered_chart_and_manifests_validate_server_side(crds: None) -> None:
    """Server-side dry-run: the API server's OpenAPI, and CEL compilation of the admission policies."""
    variants = [[], ["--set", "replicaCount=2"], ["--set", "peering.enabled=false,webhook.enabled=false"]]
    for extra in variants:
        rendered = helm("template", RELEASE, str(ROOT / "charts/stockade"), "--namespace", NAMESPACE,
                        "--kube-version", KUBE_VERSION, *extra).stdout
        kubectl("apply", "--dry-run=server", "--namespace", NAMESPACE, "-f", "-", stdin=rendered)
    kubectl("apply", "--dry-run=server", "-k", str(ROOT / "manifests"))


def test_install_makes_the_operator_available(crds: None) -> None:
    helm("install", RELEASE, str(ROOT / "charts/stockade"), "--namespace", NAMESPACE, "--wait", "--timeout", "3m")
    kubectl("wait", "--namespace", NAMESPACE, "--for=condition=Available", f"deployment/{RELEASE}", "--timeout=60s")
    for name in ("baseline", "run-namespace", "grant"):
        policy = f"{RELEASE}-{name}"
        generation = get_json("validatingadmissionpolicy", policy)["metadata"]["generation"]

        def checked(p: str = policy, g: int = generation) -> bool:
            status = get_json("validatingadmissionpolicy", p).get("status") or {}
            return bool(status.get("observedGeneration") == g)

        wait_for(f"{policy} type-checked", checked, timeout=30)
        typing = get_json("validatingadmissionpolicy", policy)["status"].get("typeChecking") or {}
        assert not typing.get("expressionWarnings"), f"{policy}: {typing}"


def can_i(verb: str, group: str, resource: str, name: str, namespace: str | None = None) -> bool:
    plural, _, sub = resource.partition("/")
    target = f"{plural}.{group}" if group else plural
    if name:
        target += f"/{name}"
    args = ["auth", "can-i", verb, target, f"--as={OPERATOR_USER}"]
    args += ["--namespace", namespace] if namespace else ["--all-namespaces"]
    if sub:
        args += ["--subresource", sub]
    return kubectl(*args, check=False).returncode == 0


def test_serviceaccount_has_the_rbac_of_stockade_rbac(crds: None) -> None:
    granted = expand(PERMISSIONS, RELEASE, {"peering.enabled", "webhook.enabled"})
    missing = [p for p in sorted(granted) if not can_i(p[2], p[0], p[1], p[3])]
    assert not missing, f"the chart's ServiceAccount lacks: {missing}"
    # Plausible mistakes it must not have.
    denied = [
        ("get", "", "secrets", ""), ("list", "", "configmaps", ""), ("update", "", "namespaces", ""),
        ("delete", "stockade.io", "agentruns", ""), ("escalate", "rbac.authorization.k8s.io", "roles", "admin"),
        ("bind", "rbac.authorization.k8s.io", "clusterroles", "cluster-admin"),
        ("patch", "kopf.dev", "clusterkopfpeerings", "someone-else"),
        ("patch", "admissionregistration.k8s.io", "validatingwebhookconfigurations", "another-webhook"),
        ("create", "admissionregistration.k8s.io", "validatingadmissionpolicies", ""),
    ]
    extra = [p for p in denied if can_i(p[0], p[1], p[2], p[3], namespace="default")]
    assert not extra, f"the chart's ServiceAccount may do more than it needs: {extra}"


def _stdout(*args: str, **kwargs: Any) -> str:
    return kubectl(*args, **kwargs).stdout


AGENTRUN = {
    "apiVersion": "stockade.io/v1alpha1",
    "kind": "AgentRun",
    "metadata": {"name": "helm-rbac", "namespace": TEAM},
    "spec": {
        "template": {"spec": {"containers": [{
            "name": "agent", "image": "registry.example/agent:1",
            "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}}}]}},
        "grant": {
            "cpu": "1", "memory": "1Gi", "dns": True,
            "egress": [{"cidr": "10.42.0.0/16", "ports": [443]}],
            # A granted rule makes the operator write a Role it does not hold itself (escalate, bind).
            "kubernetesAPI": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
        },
    },
}


def _status(name: str) -> dict[str, Any]:
    run = get_json("agentrun", name, "--namespace", TEAM)
    status: dict[str, Any] = run.get("status") or {}
    return status


def _condition(status: dict[str, Any], kind: str) -> str | None:
    return next((str(c.get("status")) for c in status.get("conditions") or [] if c.get("type") == kind), None)


def test_operator_works_with_only_the_chart_identity(crds: None, tmp_path: Path) -> None:
    """The operator on this machine with the chart pod's arguments, environment and ServiceAccount token:
    kopf's own calls (watches, peering, events), the reconciler's, admission's and detection's all go
    through the chart's RBAC, and the chart's admission policies let it (and nobody else) build fences."""
    deployment = get_json("deployment", RELEASE, "--namespace", NAMESPACE)
    args = chart.operator_args(deployment)
    health = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKADE_")}
    env.update(chart.operator_env(deployment, _stdout))
    env["KUBECONFIG"] = str(chart.serviceaccount_kubeconfig(_stdout, tmp_path / "operator.kubeconfig"))
    log_path = tmp_path / "operator.log"
    with log_path.open("w") as log:
        operator = subprocess.Popen([sys.executable, "-m", "stockade.cli", *args,
                                     f"--liveness=http://127.0.0.1:{health}/healthz"],
                                    env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_for("the webhook configuration to be filled in", lambda: bool(
            get_json("validatingwebhookconfiguration", RELEASE).get("webhooks")), timeout=60)
        kubectl("create", "namespace", TEAM, check=False)
        kubectl("apply", "-f", "-", stdin=json.dumps(AGENTRUN))
        wait_for("the AgentRun to run inside its fence", lambda: _condition(
            _status("helm-rbac"), "GuardrailsReady") == "True" and _status("helm-rbac").get("phase") == "Running",
            timeout=120)
        run_ns = _status("helm-rbac")["runNamespace"]
        assert exists("role", "stockade-agent", "--namespace", run_ns)

        # The chart's admission policies hold against a cluster admin.
        edit = kubectl("label", "networkpolicy", "stockade-deny-all", "tampered=yes", "--namespace", run_ns,
                       check=False)
        assert edit.returncode != 0 and "only the Stockade operator" in edit.stderr, edit.stderr
        service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "exposed", "namespace": run_ns},
                   "spec": {"type": "NodePort", "selector": {"app": "x"}, "ports": [{"port": 80}]}}
        created = kubectl("create", "-f", "-", stdin=json.dumps(service), check=False)
        assert created.returncode != 0 and "NodePort" in created.stderr, created.stderr

        kubectl("delete", "agentrun", "helm-rbac", "--namespace", TEAM, "--wait=false")
        wait_for("the AgentRun and its namespace to go", lambda: not exists("agentrun", "helm-rbac", "-n", TEAM)
                 and not exists("namespace", run_ns), timeout=120)
    finally:
        operator.terminate()
        try:
            operator.wait(timeout=30)
        except subprocess.TimeoutExpired:
            operator.kill()
        kubectl("delete", "namespace", TEAM, "--wait=false", check=False)
    text = log_path.read_text()
    refused = chart.rbac_refusals(text.splitlines())
    assert not refused, "the operator was refused with the chart's identity:\n" + "\n".join(refused[:20])


def test_upgrade_keeps_the_token_and_scales_out(crds: None) -> None:
    secret = f"{RELEASE}-signal-token"
    before = get_json("secret", secret, "--namespace", NAMESPACE)["data"]["token"]
    helm("upgrade", CRD_RELEASE, str(ROOT / "charts/stockade-crds"), "--namespace", NAMESPACE, "--wait")
    helm("upgrade", RELEASE, str(ROOT / "charts/stockade"), "--namespace", NAMESPACE, "--set", "replicaCount=2",
         "--wait", "--timeout", "3m")
    # `helm --wait` returns once 2 are ready; a pod of the old ReplicaSet may still be going away.
    def settled() -> bool:
        status = get_json("deployment", RELEASE, "--namespace", NAMESPACE)["status"]
        return bool(status.get("availableReplicas") == status.get("replicas") == status.get("updatedReplicas") == 2)

    wait_for("the Deployment to settle at 2 replicas", settled, timeout=60)
    assert get_json("secret", secret, "--namespace", NAMESPACE)["data"]["token"] == before
    assert exists("poddisruptionbudget", RELEASE, "--namespace", NAMESPACE)
    # The operator filled the webhook configuration in; an upgrade leaves its webhooks alone.
    assert get_json("validatingwebhookconfiguration", RELEASE).get("webhooks")


def test_uninstall_removes_the_operator_and_keeps_the_crds(crds: None) -> None:
    helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait")
    cluster_scoped = [("clusterrole", RELEASE), ("clusterrolebinding", RELEASE), ("clusterkopfpeering", RELEASE),
                      ("validatingwebhookconfiguration", RELEASE), ("mutatingwebhookconfiguration", RELEASE),
                      ("validatingadmissionpolicy", f"{RELEASE}-baseline"),
                      ("validatingadmissionpolicybinding", f"{RELEASE}-grant-audit")]
    left = [obj for obj in cluster_scoped if exists(*obj)]
    assert not left, f"left behind after uninstall: {left}"
    names = kubectl("get", "deployments,services,secrets,serviceaccounts", "--namespace", NAMESPACE, "-o",
                    "name").stdout.split()
    assert not [n for n in names if n.split("/")[1].startswith(RELEASE) and "helm.release" not in n
                and not n.endswith("/default")], names
    helm("uninstall", CRD_RELEASE, "--namespace", NAMESPACE)
    for crd in ("agentruns.stockade.io", "clusterkopfpeerings.kopf.dev"):
        assert exists("crd", crd), f"{crd} went with the CRD chart: helm.sh/resource-policy keep is missing"
