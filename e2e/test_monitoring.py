"""The chart's alerts and dashboard on a real Prometheus scraping the real operator (issue 11, point 3).

Prometheus loads the rule groups of the chart's PrometheusRule as rendered (what the Prometheus Operator
hands it) and scrapes the operator as the chart's ServiceMonitor says (path, honorLabels, the target's
namespace label). A run is quarantined by a real signal and released by a real release; the operator is
stopped and started. The alerts must follow: StockadeRunQuarantined names the run while, and only while, it
is quarantined; StockadeAdmissionMissing fires when no operator is scraped and clears when one is back.
Every dashboard query must be valid PromQL, and the panels about what happened must show it.
StockadeReconcileErrorsRising (10 minutes of errors) is left to promtool's rule tests (tests/unit).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from . import chart
from .conftest import BIN, ROOT, Operator, agentrun, apply, get, ready, simple_spec, wait_for
from .detect_support import Prometheus, Signals, falco_event, releaser_bound, signal_operator

TOKEN = secrets.token_urlsafe(24)
ENABLE = ("metrics.serviceMonitor.enabled=true", "metrics.dashboard.enabled=true",
          "metrics.prometheusRule.enabled=true", "metrics.prometheusRule.admissionMissingFor=5s")


def rendered() -> dict[str, dict[str, Any]]:
    args = [str(BIN / "helm"), "template", chart.RELEASE, str(ROOT / "charts/stockade"), "--namespace",
            chart.NAMESPACE]
    for value in ENABLE:
        args += ["--set", value]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout
    return {doc["kind"]: doc for doc in yaml.safe_load_all(out)
            if doc and doc["kind"] in ("PrometheusRule", "ServiceMonitor", "ConfigMap")
            and (doc["kind"] != "ConfigMap" or "dashboard" in doc["metadata"]["name"])}


def scrape_config(monitor: dict[str, Any], port: int) -> dict[str, Any]:
    """The ServiceMonitor's endpoint as the Prometheus Operator turns it into a scrape config: its path and
    honorLabels, the target labelled with the operator pod's namespace (1 s here instead of its interval)."""
    [endpoint] = monitor["spec"]["endpoints"]
    return {"job_name": "stockade", "metrics_path": endpoint["path"], "honor_labels": endpoint["honorLabels"],
            "static_configs": [{"targets": [f"127.0.0.1:{port}"],
                                "labels": {"namespace": chart.NAMESPACE, "pod": "stockade-0"}}]}


@pytest.fixture(scope="module")
def docs() -> dict[str, dict[str, Any]]:
    return rendered()


@pytest.fixture(scope="module")
def watched(operator: Operator, docs: dict[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[Operator, Signals, Prometheus]]:
    with signal_operator(operator, tmp_path_factory.mktemp("monitoring-operator"), TOKEN) as (mine, client):
        prometheus = Prometheus(tmp_path_factory.mktemp("prometheus"),
                                scrape=[scrape_config(docs["ServiceMonitor"], mine.metrics_port)],
                                rules=docs["PrometheusRule"]["spec"])
        try:
            yield mine, client, prometheus
        finally:
            prometheus.stop()


def active(prometheus: Prometheus, alert: str, state: str = "firing", **labels: str) -> list[dict[str, Any]]:
    return [a for a in prometheus.alerts() if a["labels"].get("alertname") == alert and a["state"] == state
            and all(a["labels"].get(k) == v for k, v in labels.items())]


def ssh_event(ns: str, pod: str) -> dict[str, Any]:
    return falco_event("Disallowed SSH Connection Non Standard Port", ns, pod, **{
        "fd.name": "10.0.0.9:40112->198.51.100.7:443", "fd.lport": 40112, "fd.rport": 443, "fd.type": "ipv4",
        "fd.l4proto": "tcp", "evt.type": "connect", "proc.name": "ssh", "proc.exepath": "/usr/bin/ssh",
        "proc.cmdline": "ssh -p 443 tunnel@198.51.100.7", "user.name": "agent"})


def test_a_quarantine_fires_its_alert_naming_the_run_until_released(
        watched: tuple[Operator, Signals, Prometheus], team_namespace: str) -> None:
    _, client, prometheus = watched
    spec = simple_spec(egress=[{"cidr": "10.42.0.0/16", "ports": [443]}])
    spec["response"] = ["isolate"]
    apply(agentrun("watched", team_namespace, spec))
    wait_for(lambda: ready(team_namespace, "watched"), timeout=30, what="the run to be Ready")
    wait_for(lambda: prometheus.query(
        f'stockade_agentrun_status{{namespace="{team_namespace}",name="watched",phase="Running"}} == 1'),
        timeout=30, what="the run's phase in Prometheus, under the team's namespace label")
    assert not active(prometheus, "StockadeRunQuarantined", state="pending", namespace=team_namespace) + \
        active(prometheus, "StockadeRunQuarantined", namespace=team_namespace)

    ns = get("agentrun", "watched", team_namespace)["status"]["runNamespace"]
    status, answer = client.post("/falco", ssh_event(ns, "watched"))
    assert status == 202, answer
    [alert] = wait_for(lambda: active(prometheus, "StockadeRunQuarantined", namespace=team_namespace),
                       timeout=30, what="StockadeRunQuarantined to fire")
    assert alert["labels"]["name"] == "watched" and alert["labels"]["severity"] == "critical"
    assert alert["annotations"]["summary"] == f"AgentRun {team_namespace}/watched is quarantined"
    assert f"kubectl stockade release watched -n {team_namespace}" in alert["annotations"]["description"]

    with releaser_bound("e2e-monitoring-releaser", "e2e-monitoring-releaser") as user:
        subprocess.run([sys.executable, "-m", "stockade.cli", "release", "watched", "-n", team_namespace,
                        "--as", user], check=True, cwd=ROOT, env=dict(os.environ), timeout=60)
        wait_for(lambda: not active(prometheus, "StockadeRunQuarantined", namespace=team_namespace),
                 timeout=30, what="StockadeRunQuarantined to clear after the release")


def test_every_dashboard_query_is_valid_and_shows_what_happened(
        watched: tuple[Operator, Signals, Prometheus], docs: dict[str, dict[str, Any]], team_namespace: str) -> None:
    _, client, prometheus = watched
    # A violation of our own, so the panels about violations and rungs have something to show.
    apply(agentrun("dashboard", team_namespace, {**simple_spec(), "response": ["isolate"]}))
    wait_for(lambda: ready(team_namespace, "dashboard"), timeout=30, what="the run to be Ready")
    ns = get("agentrun", "dashboard", team_namespace)["status"]["runNamespace"]
    assert client.post("/falco", ssh_event(ns, "dashboard"))[0] == 202
    [board_json] = docs["ConfigMap"]["data"].values()
    panels = {panel["title"]: [t["expr"] for t in panel["targets"]] for panel in json.loads(board_json)["panels"]}
    for title, exprs in panels.items():
        for expr in exprs:
            answer = prometheus.check(expr)
            assert answer["status"] == "success", (title, expr, answer)
    shows = {"Operator version": "stockade_build_info",
             "AgentRuns by phase": "sum by (phase) (stockade_agentruns)",
             "Quarantined runs": f'stockade_agentrun_status{{phase="Quarantined",namespace="{team_namespace}"}} == 1',
             "Violations by team namespace (per minute)":
                 f'sum by (namespace, kind) (rate(stockade_violations_total{{namespace="{team_namespace}"}}[5m]))',
             "Quarantine rungs applied (per minute)":
                 "sum by (step, outcome) (rate(stockade_quarantine_actions_total[5m]))",
             "Reconcile duration p95 (s)":
                 "histogram_quantile(0.95, sum by (le) (rate(stockade_reconcile_duration_seconds_bucket[5m])))"}
    for title, expr in shows.items():
        assert title in panels, title
        wait_for(lambda expr=expr: prometheus.query(expr), timeout=30, what=f"the panel {title!r} to show data")


def test_admission_missing_fires_when_no_operator_is_scraped_and_clears(
        watched: tuple[Operator, Signals, Prometheus]) -> None:
    mine, _, prometheus = watched
    assert not active(prometheus, "StockadeAdmissionMissing")
    mine.stop()
    try:
        [alert] = wait_for(lambda: active(prometheus, "StockadeAdmissionMissing"), timeout=60,
                           what="StockadeAdmissionMissing to fire with the operator gone")
        assert alert["labels"]["severity"] == "critical"
    finally:
        mine.start()
    wait_for(lambda: not active(prometheus, "StockadeAdmissionMissing") and
             not active(prometheus, "StockadeAdmissionMissing", state="pending"), timeout=60,
             what="StockadeAdmissionMissing to clear with the operator back")
