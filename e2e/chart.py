"""The chart's operator, run as a process on this machine: the Deployment's arguments and environment,
resolved as the kubelet would, and a token of the chart's ServiceAccount as its only credential.

kwok runs no containers, so the operator pod the chart makes is a fake; the same code runs here instead,
with exactly the identity and settings the pod would have. Only what cannot work from outside a pod
changes: the webhook is served on a local URL (the operator writes it into the chart's webhook
configurations), and ports are free local ones.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

RELEASE = "stockade"  # the defaults, as a user installs it: full name, ServiceAccount, peering all "stockade"
CRD_RELEASE = "stockade-crds"
NAMESPACE = "stockade-system"
OPERATOR_USER = f"system:serviceaccount:{NAMESPACE}:{RELEASE}"

# kubectl(*args, stdin=None) -> stdout, against the cluster the chart is installed in.
Kubectl = Callable[..., str]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return found


def operator_args(deployment: dict[str, Any]) -> list[str]:
    """`stockade run ...` as the chart starts it, less the liveness address (the caller picks a port)."""
    return [a for a in _container(deployment)["args"] if not a.startswith("--liveness")]


def operator_env(deployment: dict[str, Any], kubectl: Kubectl) -> dict[str, str]:
    """The chart's container environment, resolved here (field references, Secret references)."""
    env: dict[str, str] = {}
    for var in _container(deployment)["env"]:
        source = var.get("valueFrom") or {}
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            env[var["name"]] = NAMESPACE if path == "metadata.namespace" else f"{RELEASE}-local"
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            secret = json.loads(kubectl("get", "secret", ref["name"], "--namespace", NAMESPACE, "-o", "json"))
            env[var["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
    # Served on a local URL with a certificate for it (the chart's is for the Service's name).
    for name in ("STOCKADE_WEBHOOK_SERVICE", "STOCKADE_WEBHOOK_SERVICE_PORT", "STOCKADE_WEBHOOK_CERT_DIR"):
        env.pop(name, None)
    if env.get("STOCKADE_SIGNAL_CERT_DIR"):  # the chart's signal certificate, as the pod would mount it
        env["STOCKADE_SIGNAL_CERT_DIR"] = str(mounted_secret(deployment, kubectl, "signal-tls"))
    env["STOCKADE_SIGNAL_HOST"] = "127.0.0.1"  # loopback only on this machine
    env.update(STOCKADE_WEBHOOK_HOST="127.0.0.1", STOCKADE_WEBHOOK_PORT=str(free_port()),
               STOCKADE_SIGNAL_PORT=str(free_port()), STOCKADE_METRICS_PORT=str(free_port()),
               STOCKADE_READY_HOST="127.0.0.1", STOCKADE_READY_PORT=str(free_port()))
    return env


def mounted_secret(deployment: dict[str, Any], kubectl: Kubectl, volume: str) -> Path:
    """A Secret volume of the chart's pod, written to a local directory as the kubelet would mount it."""
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    name = next(v["secret"]["secretName"] for v in volumes if v["name"] == volume)
    secret = json.loads(kubectl("get", "secret", name, "--namespace", NAMESPACE, "-o", "json"))
    directory = Path(tempfile.mkdtemp(prefix=f"stockade-{volume}-"))
    for key, value in (secret.get("data") or {}).items():
        path = directory / key
        path.write_bytes(base64.b64decode(value))
        path.chmod(0o600)
    return directory


def serviceaccount_kubeconfig(kubectl: Kubectl, path: Path, duration: str = "6h") -> Path:
    """A kubeconfig whose only credential is a token of the chart's ServiceAccount."""
    config = json.loads(kubectl("config", "view", "--minify", "--raw", "--flatten", "-o", "json"))
    token = kubectl("create", "token", RELEASE, "--namespace", NAMESPACE, f"--duration={duration}").strip()
    config["users"] = [{"name": "operator", "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = "operator"
    path.write_text(json.dumps(config))
    return path


def rbac_refusals(log_lines: list[str]) -> list[str]:
    """The operator's log lines where RBAC refused it ('User "..." cannot VERB resource "..."'). Other
    403s (a namespace being deleted refuses new Events) are not about the chart's permissions."""
    return [line for line in log_lines if re.search(r"cannot [a-z]+ resource", line)]
