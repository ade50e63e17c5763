"""Admission settings, from STOCKADE_* environment variables (the chart sets them)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AdmissionSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STOCKADE_", extra="ignore")

    # Where the webhook listens. Local runs (no STOCKADE_WEBHOOK_SERVICE) listen on 127.0.0.1 and
    # pick a free port unless one is given, so several local operators (one per cluster) never
    # share a port; in a cluster they listen on every interface, port 9443, behind the Service.
    webhook_host: str | None = None
    webhook_port: int | None = None
    # "namespace/name" of the Service in front of the webhook (in-cluster); unset: a URL to host:port.
    webhook_service: str | None = None
    webhook_service_port: int = 443
    # tls.crt, tls.key and ca.crt (cert-manager's Secret layout). Missing files are generated
    # (a self-signed CA and a serving certificate); unset: a fresh directory for each start.
    webhook_cert_dir: str | None = None
    webhook_timeout_seconds: int = Field(default=5, ge=1, le=30)
    # The name of both webhook configurations (a chart names them after its release and creates them empty),
    # and the start of every admission policy's and binding's name (<name>-baseline, ...). The local
    # operator's default is not a chart's name: `helm uninstall` never removes what `make run` applied.
    webhook_configuration: str = "stockade-local"
    # The operator's own identities: never refused, never sent to the webhook. Empty: asked from
    # the API server at startup (SelfSubjectReview), which is right both in-cluster and locally.
    operator_usernames: list[str] = Field(default_factory=list)
    # Break-glass: groups whose members Stockade's admission lets through like the operator (JSON list).
    # The reconciler still restores the fence they change, and detection still records it.
    admission_exempt_groups: list[str] = Field(default_factory=list)
    # Apply the ValidatingAdmissionPolicies and the webhook configurations at startup. A chart that
    # ships the policies itself sets STOCKADE_ADMISSION_MANAGE_POLICY=false.
    admission_manage_policy: bool = True
    admission_manage_webhooks: bool = True
    # Watch the admission policies and report them on every AgentRun when missing or changed (the chart sets
    # admissionPolicy.enabled). Policies the operator applies are also restored; shipped ones only reported.
    admission_watch_policy: bool = True
    # Re-create a deleted webhook configuration. The chart sets false: it owns them (helm uninstall removes
    # them with the operator, and no fail-closed webhook may outlive it), so one deleted is reported only.
    admission_recreate_webhooks: bool = True
    # Violations kept in an AgentRun's status (the newest; older ones stay in Events and metrics).
    admission_violations_kept: int = Field(default=20, ge=1, le=200)
    # Serve /stockade-floor, a webhook that allows everything, beside the real ones (admission.server.FLOOR_PATH).
    admission_floor_endpoint: bool = False
    # sys.setswitchinterval for the operator's process (see stockade.app: App._start_admission).
    admission_switch_interval_seconds: float = Field(default=0.0005, gt=0, le=0.1)

    def service_ref(self) -> tuple[str, str] | None:
        if not self.webhook_service:
            return None
        namespace, _, name = self.webhook_service.partition("/")
        if not namespace or not name:
            raise ValueError(f"STOCKADE_WEBHOOK_SERVICE must be namespace/name, not {self.webhook_service!r}")
        return namespace, name
