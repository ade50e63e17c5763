"""Every STOCKADE_* setting, documented from the pydantic settings classes themselves.

``stockade run --help`` prints :func:`help_text`, and the README's settings table is :func:`markdown`
(tests/unit/test_settings_doc.py fails when the README is stale or a setting has no description here).
A field's own ``Field(description=...)`` wins; the table below covers the fields whose meaning lives in a
comment beside them.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, SecretStr

DESCRIPTIONS: dict[str, str] = {
    # stockade.settings.Settings
    "metrics_port": "Port of the Prometheus /metrics endpoint (every interface); 0 turns it off.",
    "dns_servers": "DNS servers (JSON list of host:port) that resolve grant.egress[].host; empty: the system "
                   "resolver.",
    "dns_min_refresh_seconds": "Shortest time between two resolutions of one egress host.",
    "dns_max_refresh_seconds": "Longest time an egress host's addresses are kept before they are resolved again.",
    "cluster_dns_namespace": "Namespace of the cluster DNS pods that grant.dns allows.",
    "cluster_dns_labels": "Labels (JSON object) of the cluster DNS pods that grant.dns allows.",
    "gpu_resources": "Extended resources (JSON list) counted as GPUs.",
    "impersonate": "Make every API call as this user (the e2e suite runs as the chart's ServiceAccount).",
    "api_workers": "Threads making API calls.",
    "peering_name": "kopf peering name; set by stockade run --peering.",
    "peering_identity": "This replica's peering identity; set by stockade run.",
    "peering_priority": "This replica's peering priority (also --priority); default: the start time in ms, "
                        "so the newest replica leads.",
    "peering_lifetime_seconds": "A silent leader is replaced after this long.",
    "ready_host": "Address of GET /readyz (200 on the leader only).",
    "ready_port": "Port of GET /readyz; 0 turns it off (the chart sets 8082).",
    # stockade.admission.config.AdmissionSettings
    "webhook_host": "Address the admission webhook listens on (default: 0.0.0.0 in a cluster, 127.0.0.1 locally).",
    "webhook_port": "Port of the admission webhook (default: 9443 in a cluster, a free port locally).",
    "webhook_service": "namespace/name of the Service in front of the webhook (in a cluster); unset: the webhook "
                       "configurations name a URL to host:port.",
    "webhook_service_port": "Port of that Service.",
    "webhook_cert_dir": "Directory of tls.crt, tls.key and ca.crt for the webhook (missing ones are generated); "
                        "unset: a fresh directory each start.",
    "webhook_timeout_seconds": "timeoutSeconds of every webhook.",
    "webhook_configuration": "Name of the validating and mutating webhook configurations, and the prefix of every "
                             "admission policy and binding (the chart: its full name).",
    "operator_usernames": "The operator's own identities (JSON list), exempt from admission; empty: asked from "
                          "the API server at start (SelfSubjectReview).",
    "admission_exempt_groups": "Break-glass groups (JSON list) whose members admission lets through like the "
                               "operator; the fence they change is still restored and recorded.",
    "admission_manage_policy": "Apply the ValidatingAdmissionPolicies at start and restore them when missing or "
                               "changed (false when the chart ships them).",
    "admission_manage_webhooks": "Apply the webhook configurations at start (and restore them when changed).",
    "admission_watch_policy": "Watch the admission policies and report them on every AgentRun (AdmissionReady) "
                              "when missing or changed; false when the chart ships none.",
    "admission_recreate_webhooks": "Re-create a deleted webhook configuration (false under the chart, which owns "
                                   "them: a deleted one is reported, not re-created).",
    "admission_violations_kept": "Admission violations kept in an AgentRun's status (older ones stay in Events "
                                 "and metrics).",
    "admission_floor_endpoint": "Also serve /stockade-floor/<id>, a webhook that allows every request, on the same "
                                "server (a baseline for bench/admission_latency.py; never point a configuration "
                                "at it in production).",
    "admission_switch_interval_seconds": "sys.setswitchinterval for the operator's process (webhook latency).",
    # stockade.detect.config.DetectSettings
    "signal_host": "Address of the signal endpoint (Falcosidekick's webhook output).",
    "signal_port": "Port of the signal endpoint; 0 turns it off.",
    "signal_token": "Bearer token callers of the signal endpoint present.",
    "signal_token_file": "File holding that bearer token.",
    "signal_tls": "Serve the signal endpoint over HTTPS (false: plain HTTP, the token in clear text).",
    "signal_tls_cert": "The signal endpoint's serving certificate.",
    "signal_tls_key": "Its private key.",
    "signal_cert_dir": "Directory of tls.crt and tls.key for the signal endpoint (generated with ca.crt when "
                       "missing).",
    "signal_cert_names": "DNS names (JSON list) of a generated signal certificate.",
    "signal_client_ca": "CA whose client certificates authenticate signal callers (mTLS).",
    "signal_max_body_bytes": "Largest signal body accepted.",
    "signal_max_depth": "Deepest JSON nesting accepted in a signal.",
    "signal_max_reading_bytes": "Signal bytes read and judged at once; beyond: 429 with Retry-After.",
    "signal_max_waiting_per_run": "Signals of one run waiting for their status write; beyond: 503.",
    "signal_max_waiting": "Signals waiting for their status write in all; beyond: 503.",
    "signal_ack_timeout_seconds": "How long a signal waits for its violation to be recorded; beyond: 503.",
    "signal_retry_after_seconds": "Retry-After sent with 429 and 503.",
    "cluster_dns_addresses": "The cluster resolver's addresses (JSON list): DNS to them is what grant.dns allows; "
                             "empty: port 53 to any cluster-internal address.",
    "prometheus_url": "Prometheus queried for usage metrics (GPU, network); empty turns the poller off.",
    "prometheus_interval": "Seconds between two Prometheus polls.",
    "prometheus_timeout": "Timeout of one Prometheus query, in seconds.",
    "gpu_util_threshold": "GPU utilisation (%) above which a GPU counts as in use by a pod.",
    "gpu_memory_threshold_mib": "GPU framebuffer use (MiB) above which a GPU counts as in use by a pod.",
    "network_bytes_rate_limit": "Bytes per second a pod may send; 0 turns the check off.",
    "network_rate_window": "PromQL rate window of that check.",
    "metrics_repeat_seconds": "A metric violation for the same pod and kind is reported again only after this long.",
    "evidence_before_isolation": "Hold isolation until the evidence is written to status.",
    "violations_kept": "Violations kept in an AgentRun's status.",
    "quarantine_min_severity": "Lowest severity that starts the quarantine ladder.",
    "response_concurrency": "Runs responded to at once.",
    "pending_per_run": "Signals queued for one run; beyond, they are folded into a count.",
}


def settings_classes() -> list[tuple[str, type[BaseModel]]]:
    from stockade.admission.config import AdmissionSettings
    from stockade.detect.config import DetectSettings
    from stockade.settings import Settings

    return [("operator", Settings), ("admission", AdmissionSettings), ("detection", DetectSettings)]


def _default(value: Any) -> str:
    if value is None or value in ("", [], {}):
        return "-"
    if isinstance(value, SecretStr):
        return "(secret)"
    return value if isinstance(value, str) else json.dumps(value)


def rows() -> list[tuple[str, str, str, str]]:
    """(area, variable, default, description) for every setting, in class order."""
    found = []
    for area, cls in settings_classes():
        prefix = str(cls.model_config.get("env_prefix", "")).upper()
        for name, field in cls.model_fields.items():
            description = field.description or DESCRIPTIONS.get(name, "")
            found.append((area, prefix + name.upper(), _default(field.get_default(call_default_factory=True)),
                          description))
    return found


def help_text() -> str:
    """The epilog of ``stockade run --help`` (click keeps \\b paragraphs as they are)."""
    lines = ["\b", "Settings (environment variables; lists and maps are JSON):"]
    for _, variable, default, description in rows():
        lines.append(f"  {variable} (default {default}): {description}")
    return "\n".join(lines)


def markdown() -> str:
    lines = ["| Variable | Area | Default | Meaning |", "|---|---|---|---|"]
    for area, variable, default, description in rows():
        lines.append(f"| `{variable}` | {area} | `{default}` | {description.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(markdown())
