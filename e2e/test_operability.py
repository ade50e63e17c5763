"""Operability against the real cluster: a port in use stops `stockade run` at once with the port and its
setting named; `stockade doctor` passes with the chart-installed operator and fails without a webhook
configuration; `stockade release` of a run that is not quarantined exits non-zero and changes nothing; the
per-run status gauge appears and goes with its AgentRun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .chart import free_port
from .conftest import (
    KUBECONFIG,
    ROOT,
    Dnsmasq,
    Operator,
    agentrun,
    apply,
    get,
    kubectl,
    ready,
    simple_spec,
    wait_for,
)


def stockade(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "KUBECONFIG": KUBECONFIG, **(env or {})}
    return subprocess.run([sys.executable, "-m", "stockade.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=full, cwd=ROOT, check=False)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port some other program listens on, on every interface."""
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


PORT_SETTINGS = ("STOCKADE_METRICS_PORT", "STOCKADE_READY_PORT", "STOCKADE_WEBHOOK_PORT", "STOCKADE_SIGNAL_PORT")


@pytest.mark.parametrize("setting", [*PORT_SETTINGS, "--liveness"])
def test_port_in_use_stops_the_operator_at_once(operator: Operator, taken_port: int, setting: str) -> None:
    # The suite's operator holds its own ports: every other port is a free one, this one is taken.
    env = {**operator.env, **{name: str(free_port()) for name in PORT_SETTINGS}}
    liveness = taken_port if setting == "--liveness" else free_port()
    if setting != "--liveness":
        env[setting] = str(taken_port)
    args = [*operator.args, f"--liveness=http://127.0.0.1:{liveness}/healthz"]
    try:
        result = stockade(*args, env=env, timeout=45)
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"stockade run kept running with {setting}={taken_port} in use") from err
    assert result.returncode == 1, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"port {taken_port} ({setting})" in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_doctor_passes_then_fails_without_a_webhook_configuration(operator: Operator, dnsmasq: Dnsmasq) -> None:
    name = operator.env.get("STOCKADE_WEBHOOK_CONFIGURATION", "stockade")
    args = ["doctor", f"--liveness=http://127.0.0.1:{operator.health_port}/healthz",
            f"--dns-server=127.0.0.1:{dnsmasq.port}", f"--webhook-configuration={name}", "-o", "json"]
    passed = stockade(*args)
    report = json.loads(passed.stdout)
    assert passed.returncode == 0 and report["ok"], json.dumps(report, indent=2)
    assert {c["name"] for c in report["checks"]} >= {
        "CRD agentruns.stockade.io", "CRD agentpolicies.stockade.io", "operator liveness",
        f"ValidatingWebhookConfiguration {name}", f"MutatingWebhookConfiguration {name}",
        "ValidatingAdmissionPolicies", "DNS for host grants"}

    saved = json.loads(kubectl("get", "validatingwebhookconfiguration", name, "-o", "json"))
    for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields", "generation"):
        saved["metadata"].pop(key, None)
    kubectl("delete", "validatingwebhookconfiguration", name)
    try:
        failed = stockade(*args)
        checks = {c["name"]: c for c in json.loads(failed.stdout)["checks"]}
        assert failed.returncode == 1
        assert not checks[f"ValidatingWebhookConfiguration {name}"]["ok"]
        assert checks[f"MutatingWebhookConfiguration {name}"]["ok"]
        table = stockade(*args[:-2])
        assert table.returncode == 1 and f"ValidatingWebhookConfiguration {name}" in table.stdout
        assert "missing" in table.stdout
    finally:
        if not get("validatingwebhookconfiguration", name):
            kubectl("create", "-f", "-", stdin=json.dumps(saved))


def test_release_of_a_run_not_quarantined_exits_3_and_changes_nothing(operator: Operator,
                                                                       team_namespace: str) -> None:
    apply(agentrun("calm", team_namespace, simple_spec(duration="4h")))
    wait_for(lambda: ready(team_namespace, "calm"), timeout=30, what="the run to be Ready")
    result = stockade("release", "calm", "-n", team_namespace)
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert "is not quarantined (phase Running)" in result.stderr
    as_json = stockade("release", "calm", "-n", team_namespace, "-o", "json")
    assert as_json.returncode == 3 and json.loads(as_json.stdout)["exitCode"] == 3
    annotations = get("agentrun", "calm", team_namespace)["metadata"].get("annotations") or {}
    assert "stockade.io/release" not in annotations
    missing = stockade("release", "nosuch", "-n", team_namespace, "-o", "json")
    assert missing.returncode == 2 and json.loads(missing.stdout)["status"] == 404


def _samples(operator: Operator, metric: str) -> list[dict[str, Any]]:
    return [dict(s.labels, value=s.value) for family in text_string_to_metric_families(operator.metrics())
            for s in family.samples if s.name == metric]


def test_per_run_status_gauge_follows_the_run(operator: Operator, team_namespace: str) -> None:
    apply(agentrun("gauged", team_namespace, simple_spec(duration="4h")))
    wait_for(lambda: ready(team_namespace, "gauged"), timeout=30, what="the run to be Ready")
    mine = {"namespace": team_namespace, "name": "gauged"}

    def series() -> list[dict[str, Any]]:
        return [s for s in _samples(operator, "stockade_agentrun_status")
                if s["namespace"] == team_namespace and s["name"] == "gauged"]

    wait_for(lambda: series() == [{**mine, "phase": "Running", "value": 1.0}], timeout=15,
             what="stockade_agentrun_status for the run, Running")
    text = operator.metrics()
    assert "_created" not in text
    assert [s["version"] for s in _samples(operator, "stockade_build_info")]
    kubectl("delete", "agentrun", "gauged", "-n", team_namespace, "--wait=true", "--timeout=60s")
    wait_for(lambda: series() == [] or None, timeout=15, what="the run's series to go with it")


def test_a_violation_is_counted_by_team_namespace_and_the_gauge_shows_quarantine(operator: Operator,
                                                                                  team_namespace: str) -> None:
    from .detect_support import Signals, falco_event

    apply(agentrun("noisy", team_namespace, simple_spec(duration="4h")))
    run = wait_for(lambda: ready(team_namespace, "noisy"), timeout=30, what="the run to be Ready")
    pod = run["status"]["workload"].split("/", 1)[1]
    client = Signals(int(operator.env["STOCKADE_SIGNAL_PORT"]), operator.env["STOCKADE_SIGNAL_TOKEN"])
    status, answer = client.post("/falco", falco_event("Terminal shell in container", run["status"]["runNamespace"],
                                                       pod, "Warning", **{"proc.name": "bash"}))
    assert status in (200, 202), answer

    def counted() -> list[dict[str, Any]]:
        return [s for s in _samples(operator, "stockade_violations_total") if s.get("namespace") == team_namespace]

    found = wait_for(counted, timeout=15, what="the violation counted under the team's namespace")
    assert found[0]["kind"] == "ShellInContainer" and found[0]["value"] >= 1, found
    wait_for(lambda: [s for s in _samples(operator, "stockade_agentrun_status")
                      if s["namespace"] == team_namespace and s["name"] == "noisy" and s["phase"] == "Quarantined"],
             timeout=15, what="stockade_agentrun_status with phase Quarantined")
