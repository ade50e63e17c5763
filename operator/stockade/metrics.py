"""Prometheus metrics, served on STOCKADE_METRICS_PORT at /metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from stockade import __version__

# Counters and histograms carry no *_created series: one per label set doubles what is scraped and nobody
# alerts on it (PROMETHEUS_DISABLE_CREATED_SERIES does the same for the whole process).
disable_created_metrics()  # type: ignore[no-untyped-call]

RUNS = Gauge("stockade_agentruns", "AgentRuns by phase", ["phase"])
RECONCILE_SECONDS = Histogram(
    "stockade_reconcile_duration_seconds", "Time spent in one reconcile of an AgentRun",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RECONCILE_ERRORS = Counter("stockade_reconcile_errors_total", "Reconciles that failed", ["reason"])
# After a start it climbs from 0 to the number of AgentRuns as the first passes find each fence in place
# (bench/restart.py times a restart by it); a run whose fence is incomplete or that is gone is not counted.
FENCES_CONFIRMED = Gauge("stockade_fences_confirmed", "AgentRuns whose fence this process has seen complete")
APPLIES = Counter("stockade_applies_total", "Server-side applies issued", ["kind"])
DRIFT = Counter("stockade_drift_repaired_total", "Guardrails found missing or changed and restored", ["kind"])
REFUSALS = Counter("stockade_template_refusals_total", "Templates refused for asking beyond the grant")
# namespace: the AgentRun's (the team's) namespace, bounded by the teams; never the run or pod name.
VIOLATIONS = Counter("stockade_violations_total", "Violations recorded, by the AgentRun's namespace",
                     ["namespace", "kind", "source", "action"])
# The operator's webhook configurations and admission policies (stockade.admission.guard).
ADMISSION_READY = Gauge("stockade_admission_ready", "1 while a webhook configuration or admission policy is as the "
                        "operator wants it, 0 while it is missing or changed", ["kind", "name"])
ADMISSION_RESTORED = Counter("stockade_admission_restored_total",
                             "Webhook configurations and admission policies found missing or changed and restored",
                             ["kind"])
BUILD_INFO = Gauge("stockade_build_info", "The operator's version (always 1)", ["version"])
BUILD_INFO.labels(version=__version__).set(1)

# Detection and response (stockade.detect).
SIGNALS = Counter("stockade_signals_total", "Signals received, by source and outcome", ["source", "outcome"])
QUARANTINE_ACTIONS = Counter("stockade_quarantine_actions_total", "Rungs of the quarantine ladder applied",
                             ["step", "outcome"])
DETECTION_LATENCY = Histogram(
    "stockade_detection_to_isolation_seconds",
    "From a signal's arrival to its pod's isolation (quarantine label and deny-all policy in place)", ["source"],
    buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 10),
)
RELEASES = Counter("stockade_quarantine_releases_total", "Quarantines lifted by a release")
RESPONSE_BACKLOG = Gauge("stockade_response_backlog", "Violations waiting for the responder")

# Budgets and team quotas (stockade.budget_gate, stockade.policy_status).
QUEUED_RUNS = Gauge("stockade_queued_agentruns", "AgentRuns waiting Queued for a budget or a team quota")
QUEUED_SECONDS = Histogram(
    "stockade_queued_seconds", "Time an AgentRun spent Queued before it was admitted",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
BUDGET_USED = Gauge("stockade_policy_budget_used", "Use of an AgentPolicy's total budget by admitted runs "
                    "(runs, cpu in cores, memory in bytes, GPUs per resource)", ["policy", "resource"])
BUDGET_LIMIT = Gauge("stockade_policy_budget_limit", "An AgentPolicy's total budget (only the resources it budgets)",
                     ["policy", "resource"])


RunPhases = Callable[[], Iterable[tuple[str, str, str]]]


class RunStatusCollector(Collector):
    """``stockade_agentrun_status{namespace,name,phase} 1``: one series per AgentRun that exists, read from the
    operator's store at each scrape, so a deleted run's series goes with it (no bookkeeping to leak)."""

    def __init__(self) -> None:
        self.source: RunPhases | None = None

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        for namespace, name, phase in self.source() if self.source is not None else ():
            family.add_metric([namespace, name, phase], 1)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily("stockade_agentrun_status", "1 for each AgentRun, labelled with its phase",
                                 labels=["namespace", "name", "phase"])


RUN_STATUS = RunStatusCollector()
REGISTRY.register(RUN_STATUS)
