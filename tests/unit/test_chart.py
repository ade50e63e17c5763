"""The Helm charts, rendered offline: lint, the values schema, hardening, labels, the admission policies,
and the committed plain manifests (which must match the chart: `make manifests`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from stockade.admission import health, vap

from .helm_support import helm

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts/stockade"
CRD_CHART = ROOT / "charts/stockade-crds"
KUBE_VERSION = "1.30.0"
STANDARD_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                   "app.kubernetes.io/component", "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by",
                   "helm.sh/chart")


def template(*sets: str, chart: Path = CHART, release: str = "stockade",
             namespace: str = "stockade-system") -> subprocess.CompletedProcess[str]:
    args = [helm(), "template", release, str(chart), "--namespace", namespace, "--kube-version", KUBE_VERSION]
    for value in sets:
        args += ["--set", value]
    return subprocess.run(args, capture_output=True, text=True, check=False)


def render(*sets: str, chart: Path = CHART, release: str = "stockade",
           namespace: str = "stockade-system") -> list[dict[str, Any]]:
    result = template(*sets, chart=chart, release=release, namespace=namespace)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return [d["kind"] for d in docs]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return result


def env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(docs)["env"]}


@pytest.mark.parametrize("chart", [CHART, CRD_CHART], ids=["stockade", "stockade-crds"])
def test_lint(chart: Path) -> None:
    result = subprocess.run([helm(), "lint", "--strict", "--kube-version", KUBE_VERSION, str(chart)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("value", [
    "replicaCount=0",
    "replicaCount=2,peering.enabled=false",  # two operators acting at once
    "image.pullPolicy=Sometimes",
    "image.digest=latest",
    "logFormat=xml",
    "unknownKey=1",
    "metrics.port=70000",
    "webhook.timeoutSeconds=60",
    "webhook.certManager.issuerRef.kind=Vault",
    "signal.token.secretName=Not_A_Name",
    "admissionPolicy.exemptGroups={it's}",  # a quote would end the CEL string it goes into
    "admissionPolicy.validationActions={Warn}",  # gone: audit mode is per AgentRun
    "resources.requests.cpu=lots",
    "podSecurityContext.runAsNonRoot=false",
    "securityContext.readOnlyRootFilesystem=false",
    "securityContext.allowPrivilegeEscalation=true",
    "securityContext.privileged=true",
    "securityContext.capabilities.add={NET_ADMIN}",
    "detection.prometheusUrl=prometheus:9090",
])
def test_schema_rejects_wrong_values(value: str) -> None:
    result = template(value)
    assert result.returncode != 0, f"{value} was accepted"
    assert "schema" in result.stderr, result.stderr


def test_crd_chart_schema_rejects_unknown_values() -> None:
    result = template("installCRDs=true", chart=CRD_CHART)
    assert result.returncode != 0 and "schema" in result.stderr


def test_operator_pod_is_hardened() -> None:
    docs = render()
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    box = container(docs)
    security = box["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert "add" not in security["capabilities"]
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert box["resources"]["requests"]["cpu"] and box["resources"]["limits"]["memory"]
    assert {m["mountPath"] for m in box["volumeMounts"]} == {"/tmp", "/etc/stockade/webhook-tls",
                                                             "/etc/stockade/signal-tls"}
    assert all(m["readOnly"] for m in box["volumeMounts"] if m["mountPath"] != "/tmp")
    for probe in ("startupProbe", "livenessProbe"):
        assert box[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    # Ready only while leading: the Services send nothing to a standby replica.
    assert box["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ready"}
    assert box["image"] == "ghcr.io/stockade/stockade:0.1.0"
    assert box["args"] == ["run", "--json", "--peering=stockade", "--liveness=http://0.0.0.0:8081/healthz"]
    ports = {p["name"]: p["containerPort"] for p in box["ports"]}
    assert ports == {"metrics": 8080, "health": 8081, "ready": 8082, "webhook": 9443, "signal": 8443}
    assert deployment["spec"]["replicas"] == 1


def test_operator_environment_matches_the_settings() -> None:
    values = env(render())
    assert values["STOCKADE_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert values["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}  # kopf's peering identity
    assert values["STOCKADE_METRICS_PORT"] == "8080"
    assert values["STOCKADE_WEBHOOK_SERVICE"] == "stockade-system/stockade-webhook"
    assert values["STOCKADE_WEBHOOK_PORT"] == "9443"
    assert values["STOCKADE_ADMISSION_MANAGE_POLICY"] == "false"  # the chart ships the policies
    assert values["STOCKADE_SIGNAL_TOKEN"] == {"secretKeyRef": {"name": "stockade-signal-token", "key": "token"}}
    assert "STOCKADE_DNS_SERVERS" not in values
    dns = env(render("operator.dnsServers={10.96.0.10:53}", "signal.enabled=false", "webhook.enabled=false"))
    assert dns["STOCKADE_DNS_SERVERS"] == '["10.96.0.10:53"]'
    assert dns["STOCKADE_SIGNAL_PORT"] == "0"  # off
    assert dns["STOCKADE_ADMISSION_MANAGE_WEBHOOKS"] == "false"
    # The settings classes read these names.
    from stockade.admission.config import AdmissionSettings
    from stockade.detect.config import DetectSettings
    from stockade.settings import Settings

    known = {f"STOCKADE_{name.upper()}" for cls in (Settings, AdmissionSettings, DetectSettings)
             for name in cls.model_fields}
    unread = {name for name in values if name.startswith("STOCKADE_")} - known - {"STOCKADE_WEBHOOK_CONFIGURATION"}
    assert not unread, f"the chart sets variables no settings class reads: {sorted(unread)}"


def test_every_object_has_the_standard_labels() -> None:
    docs = render("webhook.certManager.enabled=true", "metrics.serviceMonitor.enabled=true", "replicaCount=2")
    for doc in docs:
        labels = doc["metadata"].get("labels") or {}
        missing = [key for key in STANDARD_LABELS if key not in labels]
        assert not missing, f"{doc['kind']} {doc['metadata']['name']} lacks {missing}"
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert all(key in pod_labels for key in STANDARD_LABELS)


def test_defaults_render_what_the_issue_asks_for() -> None:
    docs = render()
    assert sorted(d["metadata"]["name"] for d in docs if d["kind"] == "Service") == [
        "stockade-metrics", "stockade-signal", "stockade-webhook"]
    assert one(docs, "Secret", "stockade-signal-token")["data"]["token"]
    assert one(docs, "ClusterKopfPeering")["metadata"]["name"] == "stockade"
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        assert "webhooks" not in one(docs, kind, "stockade")  # the operator fills them in
    assert "ServiceMonitor" not in kinds(docs) and "PodDisruptionBudget" not in kinds(docs)
    assert "Certificate" not in kinds(docs)
    assert one(docs, "Deployment")["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_two_replicas_are_peered_spread_and_protected() -> None:
    docs = render("replicaCount=2")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["affinity"]["podAntiAffinity"]
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    assert "--peering=stockade" in container(docs)["args"]


def test_without_peering_pods_never_overlap() -> None:
    docs = render("peering.enabled=false")
    assert one(docs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    assert "ClusterKopfPeering" not in kinds(docs)
    assert not [a for a in container(docs)["args"] if a.startswith("--peering")]


def test_without_cert_manager_every_replica_shares_the_charts_webhook_certificate() -> None:
    import base64

    from cryptography import x509

    docs = render("replicaCount=2")
    secret = one(docs, "Secret", "stockade-webhook-tls")
    assert secret["type"] == "kubernetes.io/tls" and set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "stockade-webhook.stockade-system.svc" in names
    cert.verify_directly_issued_by(ca)
    assert env(docs)["STOCKADE_WEBHOOK_CERT_DIR"] == "/etc/stockade/webhook-tls"
    volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"secretName": "stockade-webhook-tls"} in [v.get("secret") for v in volumes]
    assert env(docs)["STOCKADE_PEERING_LIFETIME_SECONDS"] == "15"


def test_cert_manager_issues_the_webhook_certificate() -> None:
    docs = render("webhook.certManager.enabled=true")
    cert = one(docs, "Certificate")
    assert cert["spec"]["dnsNames"][0] == "stockade-webhook.stockade-system.svc"
    assert cert["spec"]["issuerRef"]["name"] == one(docs, "Issuer")["metadata"]["name"]
    assert env(docs)["STOCKADE_WEBHOOK_CERT_DIR"] == "/etc/stockade/webhook-tls"
    volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"secretName": cert["spec"]["secretName"]} in [v.get("secret") for v in volumes]
    own = render("webhook.certManager.enabled=true", "webhook.certManager.issuerRef.name=corp-ca",
                 "webhook.certManager.issuerRef.kind=ClusterIssuer")
    assert "Issuer" not in kinds(own)
    assert one(own, "Certificate")["spec"]["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer"}


def test_service_monitor_selects_the_metrics_service() -> None:
    docs = render("metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.labels.release=prom")
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service", "stockade-metrics")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert all(service["metadata"]["labels"].get(k) == v for k, v in selector.items())
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["metadata"]["labels"]["release"] == "prom"


def test_signal_token_secret_can_come_from_elsewhere() -> None:
    docs = render("signal.token.create=false", "signal.token.secretName=my-token")
    assert not [d for d in docs if d["kind"] == "Secret" and "token" in d["metadata"]["name"]]
    assert env(docs)["STOCKADE_SIGNAL_TOKEN"] == {"secretKeyRef": {"name": "my-token", "key": "token"}}


def _sorted_selector_values(obj: Any) -> Any:
    """Selector values are a set; the chart's namespace takes the placeholder's place in their order."""
    if isinstance(obj, dict):
        return {k: sorted(v) if k == "values" else _sorted_selector_values(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_sorted_selector_values(v) for v in obj]
    return obj


def test_admission_policies_are_the_operators_own() -> None:
    """The chart ships exactly what the operator applies itself (vap.manifests), names and identity its own."""
    docs = render("admissionPolicy.exemptGroups={platform:break-glass,system:masters}", namespace="ops",
                  release="guard")
    rendered = [d for d in docs if d["kind"].startswith("ValidatingAdmissionPolicy")]
    # What the operator builds under this chart (groups in another order, repeated): it compares the two.
    expected = vap.manifests(["system:serviceaccount:ops:guard-stockade"], ["ops"],
                             ["system:masters", "platform:break-glass", "system:masters"],
                             prefix=env(docs)["STOCKADE_WEBHOOK_CONFIGURATION"])
    assert len(rendered) == len(expected)
    for got, want in zip(rendered, expected, strict=True):
        assert got["kind"] == want["kind"]
        assert got["metadata"]["name"] == want["metadata"]["name"]
        assert got["metadata"]["name"].startswith("guard-stockade-")
        assert got["metadata"]["labels"]["app.kubernetes.io/instance"] == "guard"
        assert got["metadata"]["labels"]["app.kubernetes.io/component"] == "admission"
        assert _sorted_selector_values(got["spec"]) == _sorted_selector_values(want["spec"])
        assert health.object_health(want, got).state == health.OK
    assert env(docs)["STOCKADE_ADMISSION_EXEMPT_GROUPS"] == '["platform:break-glass","system:masters"]'
    assert env(docs)["STOCKADE_ADMISSION_MANAGE_POLICY"] == "false", "the chart's policies, not the operator's"


def test_admission_policies_without_break_glass_let_only_the_operator_through() -> None:
    policies = [d for d in render() if d["kind"] == "ValidatingAdmissionPolicy"
                and d["metadata"]["name"] != "stockade-operator-confinement"]  # holds the operator itself
    assert policies
    for policy in policies:
        # Exactly vap.not_operator without groups: the operator compares what the chart ships with its own.
        assert policy["spec"]["matchConditions"] == [{
            "name": "not-the-stockade-operator",
            "expression": "!(request.userInfo.username in ['system:serviceaccount:stockade-system:stockade'])"}]
    docs = render()
    expected = vap.manifests(["system:serviceaccount:stockade-system:stockade"], ["stockade-system"],
                             prefix=env(docs)["STOCKADE_WEBHOOK_CONFIGURATION"])
    shipped = {(d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"].startswith("ValidatingAdmission")}
    assert health.admission_health(expected, shipped).ok, health.admission_health(expected, shipped).message
    assert "ValidatingAdmissionPolicy" not in kinds(render("admissionPolicy.enabled=false"))


def test_crd_chart_carries_the_generated_crds_and_keeps_them() -> None:
    docs = render(chart=CRD_CHART)
    names = sorted(d["metadata"]["name"] for d in docs)
    assert names == ["agentpolicies.stockade.io", "agentruns.stockade.io", "clusterkopfpeerings.kopf.dev",
                     "kopfpeerings.kopf.dev"]
    for crd in ("agentruns.stockade.io", "agentpolicies.stockade.io"):
        generated = yaml.safe_load((ROOT / "crds" / f"{crd}.yaml").read_text())
        assert one(docs, "CustomResourceDefinition", crd)["spec"] == generated["spec"]
    for doc in docs:
        assert doc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert sorted(d["metadata"]["name"] for d in render("kopfPeering=false", chart=CRD_CHART)) == [
        "agentpolicies.stockade.io", "agentruns.stockade.io"]


def test_committed_manifests_match_the_chart() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "manifests/render.py"), "--check"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
