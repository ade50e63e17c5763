"""Admission metrics (served with the operator's others). Refusals also count in stockade_violations_total."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter("stockade_admission_requests_total", "Admission requests answered", ["webhook", "decision"])
SECONDS = Histogram(
    "stockade_admission_handler_duration_seconds", "Time the operator spent deciding one admission request",
    ["webhook"], buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
SERVED = Histogram(
    "stockade_admission_request_duration_seconds",
    "Time from reading an admission request to answering it, kopf's parsing and dispatch included",
    ["webhook"], buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
