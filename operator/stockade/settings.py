"""Operator configuration, from STOCKADE_* environment variables (the chart sets them)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from stockade.plan import PlanSettings


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STOCKADE_", extra="ignore")

    namespace: str = Field(default="stockade-system", description="The operator's own namespace.")
    metrics_port: int = 8080
    # DNS for grant.egress[].host: "host:port" entries; empty uses the system resolver.
    dns_servers: list[str] = Field(default_factory=list)
    dns_min_refresh_seconds: float = 5.0
    dns_max_refresh_seconds: float = 300.0
    cluster_dns_namespace: str = "kube-system"
    cluster_dns_labels: dict[str, str] = Field(default_factory=lambda: {"k8s-app": "kube-dns"})
    gpu_resources: list[str] = Field(default_factory=lambda: ["nvidia.com/gpu", "amd.com/gpu"])
    # Run the operator's API calls as this user (the e2e suite runs as the chart's ServiceAccount).
    impersonate: str | None = None
    api_workers: int = 32
    # Peering (``stockade run --peering``): set by the CLI for the handlers. A dead leader is replaced
    # after this lifetime (kopf's default is 60 s; controller-runtime's lease is 15 s).
    peering_name: str | None = None
    peering_identity: str = ""
    peering_priority: int = 0
    peering_lifetime_seconds: int = Field(default=15, ge=5, le=600)
    # GET /readyz: 200 on the active replica, 503 on a standby (0: off).
    ready_host: str = "0.0.0.0"
    ready_port: int = 0  # the chart sets 8082
    memory_trim_seconds: float = Field(default=10.0, ge=0, description=(
        "glibc's malloc_trim every this many seconds, so memory freed after a burst of runs goes back to the "
        "system; 0 turns it off."))

    def plan_settings(self) -> PlanSettings:
        return PlanSettings(
            dns_namespace=self.cluster_dns_namespace,
            dns_pod_labels=dict(self.cluster_dns_labels),
            gpu_resources=tuple(self.gpu_resources),
        )
