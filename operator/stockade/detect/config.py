"""Detection and response settings, from STOCKADE_* environment variables (the chart sets them)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Severity = Literal["low", "medium", "high", "critical"]


class DetectSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STOCKADE_", extra="ignore")

    # The signal endpoint (Falcosidekick's webhook output, the generic schema). 0 turns it off.
    signal_host: str = "0.0.0.0"  # in a cluster the callers are other pods; "::" for IPv6, 127.0.0.1 locally
    signal_port: int = 8443
    # Callers authenticate with this bearer token, or with a client certificate signed by
    # signal_client_ca (mTLS). With neither configured the endpoint does not start: fail closed.
    signal_token: SecretStr | None = None
    signal_token_file: Path | None = None
    # HTTPS unless turned off explicitly (false: plain HTTP, and the bearer token travels in clear text).
    signal_tls: bool = True
    # The serving certificate: these two files, else tls.crt and tls.key in signal_cert_dir (a mounted
    # Secret: the chart's, cert-manager's or yours). Where neither exists, a self-signed CA and a
    # certificate for signal_cert_names are generated into signal_cert_dir (or a fresh temporary
    # directory), with the CA in ca.crt for callers to trust.
    signal_tls_cert: Path | None = None
    signal_tls_key: Path | None = None
    signal_cert_dir: Path | None = None
    signal_cert_names: list[str] = Field(default_factory=lambda: ["localhost"])
    signal_client_ca: Path | None = None
    # Bounds on what one request may cost: body size, JSON nesting (checked on the raw bytes before
    # parsing), what is read at once (beyond it: 429 with Retry-After), and how long a request
    # waits for its violation to be recorded in the AgentRun's status (beyond it: 503, Retry-After).
    signal_max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    signal_max_depth: int = Field(default=32, ge=2, le=512)
    # Bodies read and judged at once, in bytes: 32 of the largest, thousands of ordinary ones (~1 KiB).
    signal_max_reading_bytes: int = Field(default=8 * 1024 * 1024, ge=256 * 1024)
    # Requests waiting for their status write, per run (one noisy run cannot starve the others) and in all.
    signal_max_waiting_per_run: int = Field(default=32, ge=1)
    signal_max_waiting: int = Field(default=512, ge=1)
    signal_ack_timeout_seconds: float = Field(default=5.0, gt=0)
    signal_retry_after_seconds: int = Field(default=1, ge=1)
    # The cluster resolver's addresses: DNS to them is what grant.dns allows. Empty: port 53 to any
    # cluster-internal address counts as the resolver (the DNS NetworkPolicy narrows it anyway).
    cluster_dns_addresses: list[str] = Field(default_factory=list)

    # Usage metrics: PromQL against this Prometheus. Empty turns the poller off.
    prometheus_url: str = ""
    prometheus_interval: float = Field(default=15.0, gt=0)
    prometheus_timeout: float = Field(default=5.0, gt=0)
    # A GPU counts as in use by a pod when its utilisation (%) or framebuffer use (MiB) is above these.
    gpu_util_threshold: float = 0.0
    gpu_memory_threshold_mib: float = 0.0
    # Bytes per second a pod may send (container_network_transmit_bytes_total); 0 turns the check off.
    network_bytes_rate_limit: float = 0.0
    network_rate_window: str = "1m"
    # A metric violation for the same pod and kind is reported again only after this long.
    metrics_repeat_seconds: float = 300.0

    # Response. Evidence (the signal, the pod as it is, its last Events) is always captured before any
    # rung and written to status before freeze and evict; true also holds isolation until it is
    # written (one more round trip before the pod is cut off).
    evidence_before_isolation: bool = True
    violations_kept: int = Field(default=20, ge=1, le=200)
    quarantine_min_severity: Severity = "low"
    response_concurrency: int = Field(default=16, ge=1)
    # Signals waiting for one run beyond this are folded into a count instead of queued.
    pending_per_run: int = Field(default=500, ge=1)

    @model_validator(mode="after")
    def _a_body_fits_the_reading_budget(self) -> DetectSettings:
        if self.signal_max_reading_bytes < self.signal_max_body_bytes:
            raise ValueError("STOCKADE_SIGNAL_MAX_READING_BYTES must hold at least one body of "
                             "STOCKADE_SIGNAL_MAX_BODY_BYTES, or such a body would never be read")
        return self

    def token(self) -> str | None:
        if self.signal_token is not None and self.signal_token.get_secret_value():
            return self.signal_token.get_secret_value()
        if self.signal_token_file is not None:
            text = self.signal_token_file.read_text().strip()
            return text or None
        return None
