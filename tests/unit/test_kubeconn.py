"""How the operator finds its credentials (stockade.kubeconn), from kubeconfig files on disk."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stockade import kubeconn

ROOT = Path(__file__).resolve().parents[2]


def kubeconfig(path: Path, user: dict[str, object], *, namespace: str | None = None,
               ca: str = "ca.crt") -> Path:
    context: dict[str, object] = {"cluster": "c", "user": "u", **({"namespace": namespace} if namespace else {})}
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "ctx",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443", "certificate-authority": ca}}],
        "contexts": [{"name": "ctx", "context": context}],
        "users": [{"name": "u", "user": user}],
    }))
    return path


@pytest.fixture(autouse=True)
def _out_of_a_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def test_a_token_user_logs_in_without_the_official_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "config", {"token": "abc"}, namespace="team")))
    assert not kubeconn.needs_official_client()
    info = kubeconn.login()
    assert (info.server, info.as_http_headers()) == ("https://127.0.0.1:6443", {"Authorization": "Bearer abc"})
    assert kubeconn.context_namespace() == "team"


def test_a_relative_certificate_path_is_read_from_the_kubeconfigs_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = {"client-certificate": "pki/admin.crt", "client-key": "/abs/admin.key"}
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "config", user)))
    info = kubeconn.login()
    assert (info.ca_path, info.certificate_path, info.private_key_path) == (
        str(tmp_path / "ca.crt"), str(tmp_path / "pki/admin.crt"), "/abs/admin.key")


@pytest.mark.parametrize("user", [{"exec": {"command": "aws"}}, {"auth-provider": {"name": "oidc"}},
                                  {"tokenFile": "/var/token"}])
def test_a_user_that_runs_a_plugin_needs_the_official_client(
        user: dict[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "config", user)))
    assert kubeconn.needs_official_client()


def test_the_first_kubeconfig_file_that_names_the_context_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = kubeconfig(tmp_path / "a", {"token": "first"})
    second = kubeconfig(tmp_path / "b", {"exec": {"command": "plugin"}}, namespace="second")
    monkeypatch.setenv("KUBECONFIG", f"{first}{os.pathsep}{second}")
    assert kubeconn.current_context() == ({"cluster": "c", "user": "u"}, {"token": "first"})
    assert kubeconn.context_namespace() == "default"


def test_no_kubeconfig_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    with pytest.raises(kubeconn.NoCredentials, match="absent"):
        kubeconn.login()


_LOADED = ("from stockade import kubeconn; kubeconn.keep_official_client_out(); "
           "import kopf, stockade.handlers, sys; print(sys.modules.get('kubernetes') is not None)")


@pytest.mark.parametrize(("user", "loaded"), [({"token": "abc"}, "False"), ({"exec": {"command": "p"}}, "True")])
def test_the_operator_process_loads_the_official_client_only_for_a_plugin(
        user: dict[str, object], loaded: str, tmp_path: Path) -> None:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig(tmp_path / "config", user)),
           "PYTHONPATH": str(ROOT / "operator")}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    out = subprocess.run([sys.executable, "-c", _LOADED], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == loaded
