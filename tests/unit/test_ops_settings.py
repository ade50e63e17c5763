"""Operability: every STOCKADE_* setting documented (run --help, README), every metric in the README,
ports checked before start, the per-run gauge, and the warning for a person's identity."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from typer.testing import CliRunner

from stockade import cli, metrics, ports, settings_doc
from stockade.admission import metrics as admission_metrics
from stockade.cli_run import identity_warning
from stockade.metrics_serve import run_phases
from stockade.store import Store

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_has_a_description() -> None:
    missing = [variable for _, variable, _, description in settings_doc.rows() if not description]
    assert not missing, f"add these to stockade.settings_doc.DESCRIPTIONS: {missing}"
    assert len(settings_doc.rows()) > 50  # the three settings classes, not one of them


def test_readme_settings_table_is_current() -> None:
    text = README.read_text()
    table = text.split("<!-- settings:begin -->\n", 1)[1].split("<!-- settings:end -->", 1)[0]
    assert table == settings_doc.markdown(), "README settings table is stale: regenerate it with " \
        "python -m stockade.settings_doc"


def test_run_help_lists_every_setting() -> None:
    result = CliRunner().invoke(cli.app, ["run", "--help"], terminal_width=400)
    assert result.exit_code == 0
    for _, variable, _, _ in settings_doc.rows():
        assert variable in result.output, variable


def _metric_names() -> set[str]:
    names = {"stockade_agentrun_status"}
    for module in (metrics, admission_metrics):
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                names.add(value._name + ("_total" if value._type == "counter" else ""))
    return names


def test_readme_lists_every_metric() -> None:
    section = README.read_text().split("## Metrics", 1)[1]
    missing = sorted(name for name in _metric_names() if f"`{name}`" not in section)
    assert not missing, f"metrics missing from the README: {missing}"


def test_no_created_series_and_build_info() -> None:
    metrics.RELEASES.inc()
    text = generate_latest(REGISTRY).decode()
    assert "_created" not in text
    assert 'stockade_build_info{version="' in text


def test_per_run_status_follows_the_store() -> None:
    store = Store()
    run = {"apiVersion": "stockade.io/v1alpha1", "kind": "AgentRun",
           "metadata": {"namespace": "team-a", "name": "r1", "uid": "u1", "resourceVersion": "1"},
           "status": {"phase": "Quarantined"}}
    fresh = {"apiVersion": "stockade.io/v1alpha1", "kind": "AgentRun",
             "metadata": {"namespace": "team-a", "name": "r2", "uid": "u2", "resourceVersion": "2"}}
    store.put_agentrun(run)
    store.put_agentrun(fresh)
    metrics.RUN_STATUS.source = lambda: run_phases(store)
    try:
        text = generate_latest(REGISTRY).decode()
        assert 'stockade_agentrun_status{name="r1",namespace="team-a",phase="Quarantined"} 1.0' in text
        assert 'stockade_agentrun_status{name="r2",namespace="team-a",phase="Pending"} 1.0' in text
        store.forget_agentrun(("team-a", "r1"))
        assert 'name="r1"' not in generate_latest(REGISTRY).decode()
    finally:
        metrics.RUN_STATUS.source = None


def test_violations_carry_the_team_namespace() -> None:
    assert metrics.VIOLATIONS._labelnames == ("namespace", "kind", "source", "action")


def _taken() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock, sock.getsockname()[1]


def test_port_in_use_names_the_port_and_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    sock, port = _taken()
    with sock:
        monkeypatch.setenv("STOCKADE_READY_HOST", "127.0.0.1")
        monkeypatch.setenv("STOCKADE_READY_PORT", str(port))
        monkeypatch.setenv("STOCKADE_METRICS_PORT", "0")
        found = ports.listeners(None)
        assert [(li.setting, li.port) for li in found] == [("STOCKADE_READY_PORT", port)]
        with pytest.raises(ports.PortInUse) as raised:
            ports.check(found)
    message = str(raised.value)
    assert f"readiness port {port} (STOCKADE_READY_PORT)" in message and "\n" not in message


def test_every_listener_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"STOCKADE_METRICS_PORT": "18080", "STOCKADE_READY_PORT": "18082",
                        "STOCKADE_WEBHOOK_PORT": "19443", "STOCKADE_SIGNAL_PORT": "18443",
                        "STOCKADE_SIGNAL_TOKEN": "t"}.items():
        monkeypatch.setenv(name, value)
    found = {li.setting: li.port for li in ports.listeners("http://127.0.0.1:18081/healthz")}
    assert found == {"STOCKADE_METRICS_PORT": 18080, "--liveness": 18081, "STOCKADE_READY_PORT": 18082,
                     "STOCKADE_WEBHOOK_PORT": 19443, "STOCKADE_SIGNAL_PORT": 18443}


def test_no_signal_port_without_a_way_to_authenticate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STOCKADE_SIGNAL_TOKEN", raising=False)
    monkeypatch.delenv("STOCKADE_SIGNAL_CLIENT_CA", raising=False)
    assert "STOCKADE_SIGNAL_PORT" not in {li.setting for li in ports.listeners(None)}


def test_free_ports_pass() -> None:
    ports.check([ports.Listener("metrics", "STOCKADE_METRICS_PORT", "127.0.0.1", 0)])


def test_identity_warning_for_a_person_only() -> None:
    assert identity_warning("system:serviceaccount:stockade-system:stockade") is None
    warning = identity_warning("kubernetes-admin")
    assert warning is not None and "admission exempts" in warning and "ServiceAccount" in warning
