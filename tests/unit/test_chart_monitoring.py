"""The chart's Grafana dashboard and PrometheusRule: off by default, switchable, every expression valid and
about metrics the operator really registers, and the alerts fire (promtool test rules, Prometheus's own
evaluator) on the series that mean trouble."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from stockade import metrics
from stockade.admission import metrics as admission_metrics

from .test_chart import kinds, one, render

ENABLE = ("metrics.dashboard.enabled=true", "metrics.prometheusRule.enabled=true")
PROMTOOL = shutil.which("promtool")


def _registered() -> set[str]:
    names = {"stockade_agentrun_status"}
    for module in (metrics, admission_metrics):
        for value in vars(module).values():
            name = getattr(value, "_name", None)
            if isinstance(name, str):
                names.add(name)
    return names


def _used(expr: str) -> set[str]:
    found = set(re.findall(r"\bstockade_[a-z_]+", expr))
    return {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in found}


def test_off_by_default_and_switchable() -> None:
    assert not {"PrometheusRule"} & set(kinds(render()))
    assert not [d for d in render() if d["metadata"]["name"].endswith("-dashboard")]
    docs = render(*ENABLE, "metrics.dashboard.namespace=monitoring", "metrics.prometheusRule.labels.release=prom")
    rule = one(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prom"
    dashboard = one(docs, "ConfigMap", "stockade-dashboard")
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_schema_rejects_a_wrong_severity() -> None:
    from .test_chart import template

    assert template("metrics.prometheusRule.severity.quarantined=loud").returncode != 0


def test_dashboard_and_alerts_use_only_registered_metrics() -> None:
    docs = render(*ENABLE)
    board = json.loads(one(docs, "ConfigMap", "stockade-dashboard")["data"]["stockade.json"])
    exprs = [t["expr"] for panel in board["panels"] for t in panel["targets"]]
    exprs += [r["expr"] for r in one(docs, "PrometheusRule")["spec"]["groups"][0]["rules"]]
    unknown = {name for expr in exprs for name in _used(expr)} - _registered()
    assert not unknown, f"not registered by the operator: {unknown}"
    alerts = [r["alert"] for r in one(docs, "PrometheusRule")["spec"]["groups"][0]["rules"]]
    assert alerts == ["StockadeRunQuarantined", "StockadeAdmissionMissing", "StockadeReconcileErrorsRising"]


def test_the_service_monitor_keeps_the_team_namespace_label() -> None:
    monitor = one(render("metrics.serviceMonitor.enabled=true"), "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True


PROMTOOL_TESTS = """
rule_files: [rules.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'stockade_agentrun_status{namespace="team-a",name="r1",phase="Quarantined"}'
        values: '1x10'
      - series: 'stockade_agentrun_status{namespace="team-a",name="r2",phase="Running"}'
        values: '1x10'
      - series: 'stockade_reconcile_errors_total{namespace="stockade-system",reason="ApiError"}'
        values: '0+2x30'
    alert_rule_test:
      - eval_time: 2m
        alertname: StockadeRunQuarantined
        exp_alerts:
          - exp_labels: {severity: critical, namespace: team-a, name: r1}
            exp_annotations:
              summary: AgentRun team-a/r1 is quarantined
              description: "A violation quarantined the run; look, then: kubectl stockade release r1 -n team-a"
      - eval_time: 10m
        alertname: StockadeAdmissionMissing
        exp_alerts:
          - exp_labels: {severity: critical, namespace: stockade-system}
            exp_annotations:
              summary: "No Stockade operator is scraped in stockade-system: admission is not answered"
              description: Run kubectl stockade doctor to see which part of the fence machinery is missing.
      - eval_time: 25m
        alertname: StockadeReconcileErrorsRising
        exp_alerts:
          - exp_labels: {severity: warning}
            exp_annotations:
              summary: Stockade reconciles are failing (20 in 10 minutes)
              description: See stockade_reconcile_errors_total by reason and the operator's logs.
  - interval: 1m
    input_series:
      - series: 'stockade_build_info{namespace="stockade-system",version="0.1.0"}'
        values: '1x20'
      - series: 'stockade_agentrun_status{namespace="team-a",name="r2",phase="Running"}'
        values: '1x20'
      - series: 'stockade_reconcile_errors_total{namespace="stockade-system",reason="ApiError"}'
        values: '0x30'
    alert_rule_test:
      - {eval_time: 15m, alertname: StockadeRunQuarantined, exp_alerts: []}
      - {eval_time: 15m, alertname: StockadeAdmissionMissing, exp_alerts: []}
      - {eval_time: 25m, alertname: StockadeReconcileErrorsRising, exp_alerts: []}
"""


@pytest.mark.skipif(PROMTOOL is None, reason="promtool comes with Debian's prometheus (make deps)")
def test_alerts_fire_on_trouble_and_only_then(tmp_path: Path) -> None:
    rule = one(render(*ENABLE), "PrometheusRule")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    (tmp_path / "tests.yaml").write_text(PROMTOOL_TESTS)
    checked = subprocess.run([str(PROMTOOL), "check", "rules", "rules.yaml"], cwd=tmp_path, capture_output=True,
                             text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([str(PROMTOOL), "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True,
                            text=True, check=False)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_both_carry_the_standard_labels() -> None:
    from .test_chart import STANDARD_LABELS

    docs = render(*ENABLE)
    for doc in (one(docs, "PrometheusRule"), one(docs, "ConfigMap", "stockade-dashboard")):
        assert all(label in doc["metadata"]["labels"] for label in STANDARD_LABELS), doc["kind"]
