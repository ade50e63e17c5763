"""The AgentRun API (stockade.io/v1alpha1): the single source of the CRD.

Field names follow the contract in DESIGN.md. Validation that the API server can do lives here as
OpenAPI bounds and CEL rules (``x-kubernetes-validations``), so a bad object is refused by
``kubectl apply`` with a message naming the field, before the operator ever sees it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from stockade import apirules, podshape
from stockade.quantity import parse_duration, parse_quantity

GROUP = "stockade.io"
VERSION = "v1alpha1"
KIND = "AgentRun"
PLURAL = "agentruns"

# Kubernetes' own Quantity pattern (k8s.io/apimachinery resource.Quantity, as controller-gen emits it).
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)"
    r"|(\.[0-9]+))))?$"
)
# Go's time.ParseDuration syntax without a sign: "4h", "1h30m", "90s", "500ms".
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(h|m|s|ms))+$"
# The most a grant may name, so every amount fits the quota and the pod (int64 milli-units, int32
# activeDeadlineSeconds): a value beyond these would be refused by the API server only later, on the
# quota or the pod, where the user never sees why.
QUANTITY_MAX = {"cpu": "1M", "memory": "1Ei", "ephemeralStorage": "1Ei"}
DURATION_MAX_SECONDS = podshape.MAX_INT32
DURATION_MAX = f"{DURATION_MAX_SECONDS}s"
EXTENDED_RESOURCE_PATTERN = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)/[A-Za-z0-9._-]+$"


def _quantity_schema(schema: dict[str, Any]) -> None:
    schema.pop("type", None)
    schema.update(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "pattern": QUANTITY_PATTERN,
        }
    )


def _normalise_quantity(value: object, field: str | None = None) -> str:
    """The quantity as text; with ``field`` (a grant amount) also within 0 and QUANTITY_MAX."""
    text = str(value)
    amount = parse_quantity(text)  # raises ValueError with a readable message
    if field is None:
        return text
    if amount < 0:
        raise ValueError(f"{text!r} is negative: a grant is an amount of 0 or more")
    if amount > parse_quantity(QUANTITY_MAX[field]):
        raise ValueError(f"{text!r} is more than the most a grant may name ({QUANTITY_MAX[field]})")
    return text


def _quantity_rule(field: str) -> list[Any]:
    """CEL for one grant amount: not negative and at most QUANTITY_MAX (the pattern checks the syntax)."""
    value = f"quantity(string(self.{field}))"
    guard = f"!has(self.{field}) || !isQuantity(string(self.{field})) || "
    return [
        {"rule": guard + f"{value}.compareTo(quantity('0')) >= 0", "fieldPath": f".{field}",
         "message": f"{field} must not be negative"},
        {"rule": guard + f"{value}.compareTo(quantity('{QUANTITY_MAX[field]}')) <= 0", "fieldPath": f".{field}",
         "message": f"{field} must be at most {QUANTITY_MAX[field]}"},
    ]


Quantity = Annotated[str, Field(json_schema_extra=_quantity_schema)]
APIGroup = Annotated[str, Field(max_length=253, description='An API group: "" (core), apps, batch, ...')]


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")


class EgressRule(_Model):
    """One destination the agent may reach: exactly one of cidr and host."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.cidr) != has(self.host)",
                    "message": "an egress entry has exactly one of cidr and host",
                },
                {
                    "rule": "!has(self.cidr) || isCIDR(self.cidr)",
                    "message": "cidr must be an IPv4 or IPv6 CIDR such as 10.42.0.0/16 or 2001:db8::/32",
                    "fieldPath": ".cidr",
                },
            ]
        },
        extra="forbid",
    )

    cidr: str | None = Field(default=None, max_length=64, description="An IPv4 or IPv6 CIDR.")
    host: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        description="A DNS name, resolved to IPv4 and IPv6 addresses and kept fresh as its records change.",
    )
    ports: list[Annotated[int, Field(ge=1, le=65535, description="A destination port, 1-65535.")]] = Field(
        min_length=1, max_length=64, description="Destination ports, 1-65535 (1 to 64 of them)."
    )
    protocol: Literal["TCP", "UDP", "SCTP"] = Field(default="TCP", description="Transport protocol.")


class PolicyRule(_Model):
    """An RBAC rule granted to the agent's ServiceAccount, namespaced to the run.

    Rules that are a way out of the fence (stockade.apirules: pods/binding, serviceaccounts/token,
    wildcards, cluster-scoped resources, ...) are refused here by CEL generated from that table.
    """

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": apirules.cel_rules()}, extra="forbid")

    apiGroups: list[APIGroup] = Field(
        default_factory=lambda: [""], min_length=1, max_length=32,
        json_schema_extra={"default": [""]},
        description='API groups of the resources ("" is the core group, the default).',
    )
    resources: list[Annotated[str, Field(max_length=253, description="A resource's plural name, such as configmaps, "
                                         "pods or pods/log.")]] = Field(
        min_length=1, max_length=64, description="Resources (plural names) in those groups; pods/log is the only "
        "subresource a grant may name. Ways out of the fence are refused by the API server: other subresources "
        "(pods/exec, pods/portforward, serviceaccounts/token, ...), pods/binding, wildcards, cluster-scoped "
        "resources, and writes to the fence (serviceaccounts, resourcequotas, limitranges, networkpolicies, roles, "
        "rolebindings).")
    verbs: list[Annotated[
        Literal["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"],
        Field(description="One verb: get, list, watch, create, update, patch, delete or deletecollection."),
    ]] = Field(min_length=1, max_length=8, description="What the agent may do with them.")
    resourceNames: list[Annotated[str, Field(max_length=253, description="The name of one object.")]] | None = Field(
        default=None, max_length=64, description="Only objects of these names (all of them if unset).")


class Grant(_Model):
    """What the agent is granted. Anything not named here is denied."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.gpu) || self.gpu == 0 || has(self.gpuResource)",
                    "message": "gpu > 0 needs gpuResource (for example nvidia.com/gpu)",
                    "fieldPath": ".gpuResource",
                },
                {
                    "rule": "!has(self.duration) || duration(self.duration) > duration('0s')",
                    "message": "duration must be a positive duration such as 4h or 90m",
                    "fieldPath": ".duration",
                },
                {
                    "rule": f"!has(self.duration) || duration(self.duration) <= duration('{DURATION_MAX}')",
                    "message": f"duration must be at most {DURATION_MAX_SECONDS // 3600}h (the most a pod's "
                               "activeDeadlineSeconds holds)",
                    "fieldPath": ".duration",
                },
                *[rule for field in ("cpu", "memory", "ephemeralStorage") for rule in _quantity_rule(field)],
            ]
        },
        extra="forbid",
    )

    cpu: Quantity = Field(description="CPU across all of the run's pods (quota on requests and limits).")
    memory: Quantity = Field(description="Memory across all of the run's pods.")
    gpu: int = Field(default=0, ge=0, le=64, description="GPUs across all of the run's pods.")
    gpuResource: str | None = Field(
        default=None,
        max_length=253,
        pattern=EXTENDED_RESOURCE_PATTERN,
        description="The extended resource the GPUs come as: nvidia.com/gpu or a MIG resource.",
    )
    ephemeralStorage: Quantity = Field(default="10Gi", description="Ephemeral storage across all pods.")
    pods: int = Field(default=1, ge=1, le=1000, description="Most pods that may exist at once.")
    egress: list[EgressRule] = Field(
        default_factory=list, max_length=256, description="The only destinations a pod may reach."
    )
    dns: bool = Field(default=False, description="Allow DNS to the cluster resolver (and nowhere else).")
    podToPod: bool = Field(
        default=False,
        description="Allow traffic among the run's own pods (ingress and egress, any port), quarantined pods "
        "excepted; the NetworkPolicies and every detection rule follow it. Off: the run's pods cannot reach "
        "each other.",
    )
    kubernetesAPI: list[PolicyRule] = Field(
        default_factory=list,
        max_length=64,
        description="RBAC rules for the agent's ServiceAccount; empty: no token is mounted.",
    )
    duration: str | None = Field(
        default=None,
        max_length=32,
        pattern=DURATION_PATTERN,
        description="After this the run is Expired and its pods are gone (Go duration: 4h, 90m).",
    )
    runtimeClassNames: list[Annotated[str, Field(max_length=253, description="The name of a RuntimeClass.")]] = Field(
        default_factory=list,
        max_length=16,
        description="RuntimeClasses a pod may name in spec.template.spec.runtimeClassName (for example nvidia or "
        "gvisor). None are allowed unless granted.",
    )
    delegation: bool = Field(
        default=False,
        description="May the agent create AgentRuns of its own (children)? Their grants are carved out of this one: "
        "together with this run's pods they stay within it, and they end no later than it does.",
    )

    @field_validator("cpu", "memory", "ephemeralStorage", mode="before")
    @classmethod
    def _quantity(cls, value: object, info: ValidationInfo) -> str:
        return _normalise_quantity(value, str(info.field_name))

    @field_validator("duration")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None and not 0 < parse_duration(value) <= DURATION_MAX_SECONDS:
            raise ValueError(f"{value!r} must be more than 0s and at most {DURATION_MAX_SECONDS // 3600}h")
        return value


Enforcement = Literal["enforce", "audit"]
ResponseStep = Literal["isolate", "freeze", "evict"]
WorkloadKind = Literal["Pod", "Job"]
Phase = Literal["Pending", "Queued", "Running", "Quarantined", "Succeeded", "Failed", "Expired"]


def _template_schema(schema: dict[str, Any]) -> None:
    # A PodTemplateSpec is open-ended (unknown fields kept, for the grant check to refuse by name), but
    # every field Stockade reads is typed (stockade.podshape), so the API server refuses a template
    # without containers, or with ``volumes: 5``, before the operator sees it.
    schema.clear()
    schema.update(podshape.template_schema())


class AgentRunSpec(_Model):
    """What the team asks for: the agent's pod template, its grant, and how violations are answered.

    Stockade builds a run namespace with a fence from the grant (NetworkPolicies, ResourceQuota, RBAC, a
    ServiceAccount), then starts the template inside it; anything not granted is refused or detected."""

    template: dict[str, Any] = Field(json_schema_extra=_template_schema)
    grant: Grant
    enforcement: Enforcement = Field(
        default="enforce", description="enforce: refuse and quarantine; audit: detect and report only."
    )
    response: list[Annotated[ResponseStep, Field(description="A rung: isolate (cut the pod's network), freeze "
                                                    "(stop its processes) or evict (delete the pod).")]] = Field(
        default_factory=lambda: list[ResponseStep](["isolate", "evict"]),
        max_length=3,
        json_schema_extra={"default": ["isolate", "evict"]},
        description="The quarantine ladder applied to a violation in enforce mode, in order; "
        "`stockade release` lifts it.",
    )
    workload: WorkloadKind = Field(default="Pod", description="Run the template as a Pod or as a Job.")


class Condition(_Model):
    """One condition of the run, as in every Kubernetes status (kstatus: Flux and Argo CD read it).

    Types: Ready, GuardrailsReady, Reconciling, Stalled, Quarantined, Admitted, PolicyCompliant,
    EgressResolved, AdmissionReady. Every reason, what it means and what to do: `stockade explain reasons`
    or docs/reasons.md."""

    type: str = Field(description="Ready, GuardrailsReady, Reconciling, Stalled, Quarantined, Admitted, "
                      "PolicyCompliant, EgressResolved or AdmissionReady.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="Why, in one CamelCase word (such as TemplateExceedsGrant); "
                        "`stockade explain reasons` says what each means and what to do.")
    message: str = Field(default="", description="What happened, for a person: the field, the grant or the object.")
    observedGeneration: int | None = Field(
        default=None, description="The spec generation the condition was computed for; older than "
        "metadata.generation means the operator has not caught up yet.")
    lastTransitionTime: str | None = Field(default=None, description="When status last changed (RFC 3339).")


class Violation(_Model):
    """Something the agent did that its grant does not allow, as a detector reported it."""

    time: str = Field(description="When it was seen (RFC 3339).")
    kind: str = Field(description="What it was, CamelCase: UngrantedEgress, PodExceedsGrant, RBACNotGranted, "
                      "CryptoMiner, ... (docs/detection.md lists them).")
    severity: Literal["low", "medium", "high", "critical"] = Field(
        default="high", description="low, medium, high or critical.")
    pod: str | None = Field(default=None, description="The agent pod it came from, when a pod is known.")
    detail: str = Field(description="What happened, for a person.")
    source: Literal["admission", "api", "runtime", "metrics", "signal"] = Field(
        description="Who saw it: admission (the webhook refused a request), api (an object in the run "
        "namespace), runtime (Falco), metrics (Prometheus) or signal (a detector posting to /signal).")
    action: str = Field(default="none", description="What Stockade did about it: the rungs applied (isolate, "
                        "freeze, evict), or none and why (audit mode, already quarantined).")
    evidence: dict[str, Any] | None = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
        description="The detector's own data (a flow, a Falco event, the object), kept bounded; its fields "
        "depend on the source.",
    )
    count: int | None = Field(
        default=None, ge=1, description="How many identical signals this entry stands for (duplicates fold in)."
    )
    lastTime: str | None = Field(default=None, description="When the latest of those duplicates arrived.")


class Refusal(_Model):
    """One thing the template asks for that the grant does not give (Ready=False, TemplateExceedsGrant)."""

    kind: str = Field(description="What was found, CamelCase (such as PodExceedsGrant).")
    field: str = Field(description="Where, as a path in the template (such as spec.containers[0].image).")
    message: str = Field(description="What it asks for, for a person.")
    allowed: str = Field(default="", description="What the grant allows there, if it names something.")
    hint: str = Field(default="", description="How to allow it, if the grant can (such as raising spec.grant.cpu).")


class Quarantine(_Model):
    """The quarantine the run is under (or was, until released)."""

    active: bool = Field(default=False, description="true while the run is quarantined; `stockade release` ends "
                         "it.")
    reason: str | None = Field(default=None, description="The kind of the violation that started it.")
    message: str | None = Field(default=None, description="That violation's detail.")
    since: str | None = Field(default=None, description="When it started (RFC 3339).")
    pods: list[Annotated[str, Field(description="A pod's name.")]] = Field(
        default_factory=list, description="Pods the ladder was applied to.")
    steps: list[Annotated[ResponseStep, Field(description="isolate, freeze or evict.")]] = Field(
        default_factory=list, description="Rungs of the ladder applied.")
    releasedAt: str | None = Field(default=None, description="When it was released (RFC 3339).")
    releasedBy: str | None = Field(default=None, description="Who released it (the user `stockade release` ran "
                                   "as).")


class AgentRunStatus(_Model):
    """What the operator reports: phase, conditions, violations and quarantine. Written by Stockade only."""

    model_config = ConfigDict(extra="ignore")

    phase: Phase | None = Field(default=None, description="Pending, Queued (waiting for a budget), Running, "
                                "Quarantined, Succeeded, Failed or Expired (grant.duration passed).")
    runNamespace: str | None = Field(default=None, description="The namespace Stockade made for the run, where "
                                     "the agent's pod and its fence live.")
    observedGeneration: int | None = Field(default=None, description="The spec generation this status describes.")
    conditions: list[Condition] = Field(
        default_factory=list, description="The run's conditions, one per type.")
    violations: list[Violation] = Field(default_factory=list, description="What detectors reported, newest last "
                                        "(bounded; identical ones fold into count).")
    quarantine: Quarantine | None = None
    refusals: list[Refusal] | None = Field(
        default=None, description="Why the template was refused, one item per finding (while Ready is False with "
        "reason TemplateExceedsGrant; absent otherwise). No pod is made until the template fits the grant.")
    startTime: str | None = Field(default=None, description="When the run was first admitted (RFC 3339).")
    expiresAt: str | None = Field(default=None, description="startTime + grant.duration: when the run is Expired.")
    workload: str | None = Field(default=None, description="The agent's workload, pod/<name> or job/<name>, in "
                                 "runNamespace.")
    resolvedEgress: dict[str, Annotated[list[Annotated[str, Field(description="An IPv4 or IPv6 address.")]], Field(
        description="The addresses one host resolved to.")]] | None = Field(
        default=None, description="Addresses that each granted host resolved to, as enforced now; an empty list: "
        "the host resolved to nothing and allows nothing (condition EgressResolved=False, reason HostUnresolved)."
    )
    policies: list[Annotated[str, Field(description="An AgentPolicy's name.")]] | None = Field(
        default=None, description="The AgentPolicies that bound the run (its grant and its budgets), by name."
    )


class AgentRun(_Model):
    """The whole object, for the CRD generator; the operator reads spec and status separately."""

    spec: AgentRunSpec
    status: AgentRunStatus | None = None
