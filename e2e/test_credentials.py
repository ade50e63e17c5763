"""How the operator logs in (stockade.kubeconn), against the real API server: a kubeconfig token, a
credential plugin (exec, through the official client), and a token that stops working while it runs.
The rest of the suite runs the operator on the cluster's client certificate."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from stockade import kubeconn
from stockade.kube import Kube, KubeError

from .conftest import KUBECONFIG, ROOT, kubectl, wait_for

_WHO = ("from stockade.kube import Kube; print(Kube.connect(workers=1).request('POST', "
        "'/apis/authentication.k8s.io/v1/selfsubjectreviews', {'apiVersion': 'authentication.k8s.io/v1', "
        "'kind': 'SelfSubjectReview'})['status']['userInfo']['username'])")
REVIEW = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}


def account(namespace: str, name: str) -> str:
    """A new ServiceAccount's token (TokenRequest), and so a credential the test can take away."""
    kubectl("create", "serviceaccount", name, "-n", namespace)
    return kubectl("create", "token", name, "-n", namespace, "--duration=10m").strip()


def write_kubeconfig(path: Path, user: dict[str, Any]) -> Path:
    """The suite's cluster and context with ``user`` as the only credential."""
    config = yaml.safe_load(Path(KUBECONFIG).read_text())
    current = next(c for c in config["contexts"] if c["name"] == config["current-context"])
    current["context"]["user"] = "under-test"
    config["users"], config["contexts"] = [{"name": "under-test", "user": user}], [current]
    path.write_text(yaml.safe_dump(config))
    return path


def who(kube: Kube) -> str:
    return str(kube.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", REVIEW)
               ["status"]["userInfo"]["username"])


def test_a_kubeconfig_token_is_the_operators_identity(team_namespace: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    namespace = team_namespace
    token = account(namespace, "op")
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "config", {"token": token})))
    assert who(Kube.connect(workers=1)) == f"system:serviceaccount:{namespace}:op"


def test_a_credential_plugin_is_run_through_the_official_client(team_namespace: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    namespace = team_namespace
    token = account(namespace, "plugin")
    plugin = tmp_path / "plugin"
    credential = {"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": {"token": token}}
    plugin.write_text(f"#!{sys.executable}\nprint({json.dumps(json.dumps(credential))})\n")
    plugin.chmod(plugin.stat().st_mode | stat.S_IEXEC)
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": str(plugin),
                     "interactiveMode": "Never"}}
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "config", user)))
    assert kubeconn.needs_official_client()
    # In a process of its own, as the operator's: the official client reads KUBECONFIG once, at its import.
    asked = subprocess.run([sys.executable, "-c", _WHO], env={**os.environ, "PYTHONPATH": str(ROOT / "operator")},
                           capture_output=True, text=True, check=True, timeout=60)
    assert asked.stdout.strip() == f"system:serviceaccount:{namespace}:plugin"


def test_after_a_401_the_operator_logs_in_again_with_what_the_kubeconfig_says_now(
        team_namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    namespace = team_namespace
    config = write_kubeconfig(tmp_path / "config", {"token": account(namespace, "before")})
    monkeypatch.setenv("KUBECONFIG", str(config))
    kube = Kube.connect(workers=1)
    assert who(kube) == f"system:serviceaccount:{namespace}:before"

    kubectl("delete", "serviceaccount", "before", "-n", namespace)  # its token is no credential any more

    def refused() -> bool:
        try:
            who(kube)
        except KubeError as err:
            return err.status == 401
        return False

    wait_for(refused, timeout=30, what="the deleted account's token to be refused")
    write_kubeconfig(config, {"token": account(namespace, "after")})  # as a rotated token file would be
    assert who(kube) == f"system:serviceaccount:{namespace}:after"  # the same Kube, logged in again
