"""The CLI's operability: version, JSON errors on every command, doctor's judgements, unwrapped pipes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from stockade import cli, cli_doctor
from stockade.cli_doctor import Check

runner = CliRunner()


def test_version_plain_and_json() -> None:
    from stockade import __version__

    assert runner.invoke(cli.app, ["version"]).output.strip() == f"stockade {__version__}"
    assert json.loads(runner.invoke(cli.app, ["version", "-o", "json"]).output) == {"version": __version__}


def test_json_errors_are_json() -> None:
    result = runner.invoke(cli.app, ["explain", "grant.nosuch", "-o", "json"])
    assert result.exit_code == cli.NOT_FOUND
    doc = json.loads(result.stdout)
    assert doc["exitCode"] == cli.NOT_FOUND and "nosuch" in doc["error"] and doc["field"] == "grant.nosuch"


def test_status_api_failure_is_json(monkeypatch: pytest.MonkeyPatch) -> None:
    from stockade.kube import KubeError

    def broken(namespace: str, name: str) -> Any:
        raise KubeError(403, "Forbidden", "agentruns is forbidden")

    monkeypatch.setattr(cli, "fetch_fence", broken)
    result = runner.invoke(cli.app, ["status", "r", "-n", "team", "-o", "json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["name"] == "r"


def test_completion_is_offered() -> None:
    assert "--install-completion" in runner.invoke(cli.app, ["--help"]).output


def test_console_off_a_terminal_does_not_cut_at_80(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    assert cli.console().width >= 200


def crd(status: str | None) -> dict[str, Any]:
    return {"status": {"conditions": [{"type": "Established", "status": status}]}} if status else {"status": {}}


def test_crd_checks() -> None:
    checks = cli_doctor.crd_checks({"agentruns.stockade.io": crd("True"), "agentpolicies.stockade.io": crd(None)})
    assert [c.ok for c in checks] == [True, False]
    assert "no status yet" in checks[1].detail
    assert not cli_doctor.crd_checks({})[0].ok


def test_webhook_checks_need_webhooks_with_live_endpoints() -> None:
    live = {"webhooks": [{"name": "a", "clientConfig": {"url": "https://127.0.0.1:1"}}]}
    dead = {"webhooks": [{"name": "b", "clientConfig": {"service": {"namespace": "x", "name": "y"}}}]}

    def reach(client: Any) -> str | None:
        return None if "url" in client else "no ready endpoints"

    ok, bad = cli_doctor.webhook_checks("stockade", {"ValidatingWebhookConfiguration": live,
                                                     "MutatingWebhookConfiguration": dead}, reach)
    assert ok.ok and not bad.ok and "b: no ready endpoints" in bad.detail
    missing = cli_doctor.webhook_checks("stockade", {"ValidatingWebhookConfiguration": {"webhooks": []}}, reach)
    assert [c.ok for c in missing] == [False, False]
    assert "no webhooks" in missing[0].detail and "missing" in missing[1].detail


def test_policy_checks_need_a_binding_each() -> None:
    policy = {"metadata": {"name": "p"}}
    assert not cli_doctor.policy_checks([], [])[0].ok
    assert not cli_doctor.policy_checks([policy], [])[0].ok
    assert cli_doctor.policy_checks([policy], [{"spec": {"policyName": "p"}}])[0].ok


def test_dns_check_fails_for_a_silent_server() -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound, never answers
        silent.bind(("127.0.0.1", 0))
        check = cli_doctor.dns_check([f"127.0.0.1:{silent.getsockname()[1]}"])
    assert isinstance(check, Check) and not check.ok and "no answer" in check.detail
