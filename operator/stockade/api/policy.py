"""The AgentPolicy API (stockade.io/v1alpha1, cluster-scoped): what an AgentRun's grant may contain.

A platform admin writes AgentPolicies; each selects team namespaces and bounds every AgentRun in them
(per-run ceilings, egress destinations, API rules, defaults) and, together, their runs (budgets). Several
policies selecting one namespace all apply. The schema refuses a contradictory policy at ``kubectl
apply`` (a default above its ceiling, a CIDR that is not one); the operator treats a policy it cannot
evaluate as admitting nothing.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from stockade.api.models import (
    DURATION_PATTERN,
    EXTENDED_RESOURCE_PATTERN,
    Quantity,
    ResponseStep,
    _normalise_quantity,
)

POLICY_KIND = "AgentPolicy"
POLICY_PLURAL = "agentpolicies"

# A host a policy allows: an exact DNS name, "*.example.com" (any name below example.com, not
# example.com itself) or "*" (any name).
HOST_PATTERN_PATTERN = (
    r"^(\*|(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)$"
)
_QUANTITY_FIELDS = ("cpu", "memory", "ephemeralStorage")
RuntimeClassName = Annotated[str, Field(max_length=253, description="The name of a RuntimeClass.")]
LabelValue = Annotated[str, Field(max_length=63, description="The value the label must have.")]
GPUTotal = Annotated[int, Field(ge=0, description="The most GPUs of this resource in use at once.")]


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")


def _resource_keys(schema: dict[str, Any]) -> None:
    # A structural schema takes no patternProperties: the keys are checked by CEL instead.
    schema["x-kubernetes-validations"] = [{
        "rule": f"self.all(k, k.matches({EXTENDED_RESOURCE_PATTERN!r}))",
        "message": "each key must be an extended resource such as nvidia.com/gpu or nvidia.com/mig-1g.10gb",
    }]


def _check_resource_keys(value: dict[str, int] | None) -> dict[str, int] | None:
    for key in value or {}:
        if not re.match(EXTENDED_RESOURCE_PATTERN, key):
            raise ValueError(f"{key!r} is not an extended resource such as nvidia.com/gpu")
    return value


class LabelSelectorRequirement(_Model):
    """One requirement of a Kubernetes label selector (metav1.LabelSelectorRequirement)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)",
                    "message": "In and NotIn need values; Exists and DoesNotExist take none",
                    "fieldPath": ".values",
                }
            ]
        },
        extra="forbid",
    )

    key: str = Field(min_length=1, max_length=317, description="The label key the requirement applies to.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="How the key's value relates to values: In, NotIn, Exists or DoesNotExist."
    )
    values: list[Annotated[str, Field(max_length=63, description="A label value.")]] | None = Field(
        default=None, max_length=64, description="The values for In and NotIn; empty for Exists and DoesNotExist."
    )


class LabelSelector(_Model):
    """A Kubernetes label selector: every matchLabels pair and every matchExpressions entry must hold."""

    matchLabels: dict[str, LabelValue] | None = Field(
        default=None, description="Labels the namespace must carry with exactly these values."
    )
    matchExpressions: list[LabelSelectorRequirement] | None = Field(
        default=None, max_length=32, description="Requirements on the namespace's labels, all of which must hold."
    )


class APIRule(_Model):
    """An RBAC rule a grant's kubernetesAPI may contain (or be a part of). "*" matches any value."""

    apiGroups: list[Annotated[str, Field(max_length=253, description='An API group, "" (core) or "*".')]] = Field(
        min_length=1, max_length=32, description='API groups ("" is the core group, "*" any group).'
    )
    resources: list[Annotated[str, Field(max_length=253, description='A resource, such as configmaps, pods/log or '
                                         '"*".')]] = Field(
        min_length=1,
        max_length=64,
        description='Resources, with subresources as "pods/log"; "*" any resource, "*/scale" any scale subresource.',
    )
    verbs: list[Annotated[
        Literal["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection", "*"],
        Field(description='One verb, or "*" for any.'),
    ]] = Field(min_length=1, max_length=9, description='Verbs; "*" any verb.')
    resourceNames: list[Annotated[str, Field(max_length=253, description="The name of one object.")]] | None = Field(
        default=None,
        max_length=64,
        description="If set, a grant's rule must name only these objects (a rule without names is refused).",
    )


class Ceilings(_Model):
    """Per-run maxima. An omitted field is not bounded by this policy (other policies may bound it)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.requiredRuntimeClassName) || !has(self.runtimeClassNames) "
                    "|| self.requiredRuntimeClassName in self.runtimeClassNames",
                    "message": "requiredRuntimeClassName must be one of runtimeClassNames",
                    "fieldPath": ".requiredRuntimeClassName",
                },
                {
                    "rule": "!has(self.maxDuration) || duration(self.maxDuration) > duration('0s')",
                    "message": "maxDuration must be a positive duration such as 8h",
                    "fieldPath": ".maxDuration",
                },
            ]
        },
        extra="forbid",
    )

    cpu: Quantity | None = Field(default=None, description="Most CPU one run may be granted (grant.cpu).")
    memory: Quantity | None = Field(default=None, description="Most memory one run may be granted (grant.memory).")
    ephemeralStorage: Quantity | None = Field(
        default=None, description="Most ephemeral storage one run may be granted (grant.ephemeralStorage)."
    )
    pods: int | None = Field(default=None, ge=1, le=1000, description="Most pods one run may be granted (grant.pods).")
    gpus: dict[str, Annotated[int, Field(ge=0, le=64, description="The most GPUs of this resource one run may "
                                         "be granted (0-64).")]] | None = Field(
        default=None,
        max_length=32,
        json_schema_extra=_resource_keys,
        description="The GPU resources a run may be granted (grant.gpuResource, MIG resources included) and the "
        "most of each (grant.gpu). When set, a resource not listed cannot be granted at all.",
    )
    maxDuration: str | None = Field(
        default=None,
        max_length=32,
        pattern=DURATION_PATTERN,
        description="Longest grant.duration (Go duration: 4h, 90m); a grant without a duration is refused.",
    )
    runtimeClassNames: list[RuntimeClassName] | None = Field(
        default=None, max_length=16, description="The only RuntimeClasses a grant may name (grant.runtimeClassNames)."
    )
    requiredRuntimeClassName: str | None = Field(
        default=None,
        max_length=253,
        description="A RuntimeClass every run must use (for example gvisor): the grant names only it and the "
        "AgentRun's template asks for it.",
    )
    allowAudit: bool = Field(default=False, description="Whether spec.enforcement: audit may be used.")
    allowPodToPod: bool = Field(
        default=False, description="Whether grant.podToPod may be true (traffic among a run's own pods)."
    )
    requiredResponse: list[Annotated[ResponseStep, Field(description="isolate, freeze or evict.")]] | None = Field(
        default=None, max_length=3, description="Rungs spec.response must contain (isolate, freeze, evict)."
    )

    @field_validator(*_QUANTITY_FIELDS, mode="before")
    @classmethod
    def _quantity(cls, value: object) -> str | None:
        return None if value is None else _normalise_quantity(value)

    @field_validator("gpus")
    @classmethod
    def _gpu_keys(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        return _check_resource_keys(value)


class EgressCeiling(_Model):
    """The destinations a grant's egress may name. Omitted or empty lists allow none of that kind."""

    cidrs: list[Annotated[str, Field(max_length=64, description="An IPv4 or IPv6 CIDR, such as 10.0.0.0/8.")]] = Field(
        default_factory=list,
        max_length=256,
        json_schema_extra={"x-kubernetes-validations": [
            {"rule": "self.all(c, isCIDR(c))", "message": "every cidr must be an IPv4 or IPv6 CIDR such as 10.0.0.0/8"}
        ]},
        description="A granted cidr must lie inside one of these (IPv4 or IPv6).",
    )
    hosts: list[Annotated[str, Field(max_length=253, pattern=HOST_PATTERN_PATTERN,
                                     description='A host name, "*.example.com" or "*".')]] = Field(
        default_factory=list,
        max_length=256,
        description='Host names a grant may name: exact, "*.example.com" for any name below it, or "*" for any.',
    )
    ports: list[Annotated[int, Field(ge=1, le=65535, description="A port, 1-65535.")]] = Field(
        default_factory=list, max_length=64, description="Ports a grant's egress may use; empty: any port."
    )
    protocols: list[Annotated[Literal["TCP", "UDP", "SCTP"], Field(description="TCP, UDP or SCTP.")]] = Field(
        default_factory=list, max_length=3, description="Protocols a grant's egress may use; empty: TCP only."
    )
    dns: bool = Field(default=False, description="Whether grant.dns may be true.")


class Budget(_Model):
    """Totals over active runs. An omitted field is not budgeted."""

    cpu: Quantity | None = Field(default=None, description="Total grant.cpu of the active runs.")
    memory: Quantity | None = Field(default=None, description="Total grant.memory of the active runs.")
    gpus: dict[str, GPUTotal] | None = Field(
        default=None,
        max_length=32,
        json_schema_extra=_resource_keys,
        description="Total grant.gpu of the active runs, per GPU resource.",
    )
    runs: int | None = Field(default=None, ge=0, description="Most runs active at once.")

    @field_validator("cpu", "memory", mode="before")
    @classmethod
    def _quantity(cls, value: object) -> str | None:
        return None if value is None else _normalise_quantity(value)

    @field_validator("gpus")
    @classmethod
    def _gpu_keys(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        return _check_resource_keys(value)


class Budgets(_Model):
    """Totals a policy allows across runs; a run past one waits Queued (the reconciler decides)."""

    perNamespace: Budget | None = Field(default=None, description="Totals over the active runs of ONE namespace.")
    total: Budget | None = Field(default=None, description="Totals over the active runs of ALL selected namespaces.")


class Defaults(_Model):
    """Filled into a grant that omits the field (at admission, before the ceilings are checked).

    Only fields a grant can omit are here: grant.cpu and grant.memory are required, and ephemeralStorage,
    pods and dns carry schema defaults the API server fills in before any webhook sees the object.
    """

    duration: str | None = Field(
        default=None, max_length=32, pattern=DURATION_PATTERN, description="grant.duration when it is omitted."
    )
    runtimeClassNames: list[RuntimeClassName] | None = Field(
        default=None, max_length=16, description="grant.runtimeClassNames when it is omitted."
    )
    gpuResource: str | None = Field(
        default=None,
        max_length=253,
        pattern=EXTENDED_RESOURCE_PATTERN,
        description="grant.gpuResource when it is omitted.",
    )


def _policy_spec_schema(schema: dict[str, Any]) -> None:
    schema["x-kubernetes-validations"] = [
        {
            "rule": "!has(self.defaults) || !has(self.defaults.duration) || !has(self.ceilings) "
            "|| !has(self.ceilings.maxDuration) "
            "|| duration(self.defaults.duration) <= duration(self.ceilings.maxDuration)",
            "message": "defaults.duration must not exceed ceilings.maxDuration",
            "fieldPath": ".defaults.duration",
        },
        {
            "rule": "!has(self.defaults) || !has(self.defaults.runtimeClassNames) || !has(self.ceilings) "
            "|| !has(self.ceilings.runtimeClassNames) "
            "|| self.defaults.runtimeClassNames.all(r, r in self.ceilings.runtimeClassNames)",
            "message": "defaults.runtimeClassNames must be within ceilings.runtimeClassNames",
            "fieldPath": ".defaults.runtimeClassNames",
        },
        {
            "rule": "!has(self.defaults) || !has(self.defaults.gpuResource) || !has(self.ceilings) "
            "|| !has(self.ceilings.gpus) || self.defaults.gpuResource in self.ceilings.gpus",
            "message": "defaults.gpuResource must be one of ceilings.gpus",
            "fieldPath": ".defaults.gpuResource",
        },
    ]


class AgentPolicySpec(_Model):
    """What a platform admin allows the AgentRuns of the selected namespaces: per-run ceilings, egress, API
    rules, defaults and budgets across runs."""

    model_config = ConfigDict(json_schema_extra=_policy_spec_schema, extra="forbid")

    namespaceSelector: LabelSelector = Field(
        description="The team namespaces (holding AgentRuns) this policy bounds; {} selects every namespace."
    )
    ceilings: Ceilings = Field(default_factory=Ceilings, description="Per-run maxima.")
    egress: EgressCeiling = Field(
        default_factory=EgressCeiling, description="Destinations a grant may name; omitted: no egress, no DNS."
    )
    kubernetesAPI: list[APIRule] = Field(
        default_factory=list,
        max_length=64,
        description="Rules grant.kubernetesAPI may contain: every permission a grant's rule gives must be given by "
        "one of these. Empty: no API access may be granted.",
    )
    budgets: Budgets | None = Field(default=None, description="Totals across the active runs of selected namespaces.")
    defaults: Defaults = Field(default_factory=Defaults, description="Filled into a grant that omits the field.")
    onNarrowed: Literal["Continue", "Stop"] = Field(
        default="Continue",
        description="A running run found above this policy after it was narrowed gets a PolicyViolated condition; "
        "Stop also ends it.",
    )

    @field_validator("ceilings", "egress", "defaults", mode="before")
    @classmethod
    def _none_is_empty(cls, value: object) -> object:
        return {} if value is None else value


class PolicyUsage(_Model):
    """Use of the total budget, as "used/limit" strings."""

    model_config = ConfigDict(extra="ignore")

    runs: str | None = Field(default=None, description="Active runs against budgets.total.runs, e.g. 2/5.")
    gpus: dict[str, Annotated[str, Field(description="used/limit for one GPU resource, e.g. 2/4.")]] | None = Field(
        default=None, description="GPUs in use per resource against the budget.")
    gpusTotal: str | None = Field(default=None, description="All GPU resources summed, e.g. 3/8 (printer column).")
    cpu: str | None = Field(default=None, description="CPU granted to active runs against the budget.")
    memory: str | None = Field(default=None, description="Memory granted to active runs against the budget.")


class PolicyCondition(_Model):
    """A condition of the policy, as in every Kubernetes status."""

    model_config = ConfigDict(extra="ignore")

    type: str = Field(description="The condition's type, e.g. Ready.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="A CamelCase reason, e.g. Invalid.")
    message: str = Field(default="", description="What a person needs to know.")
    observedGeneration: int | None = Field(default=None, description="The generation the condition describes.")
    lastTransitionTime: str | None = Field(default=None, description="When status last changed.")


class AgentPolicyStatus(_Model):
    """What the operator reports: whether the policy can be evaluated, and the use of its budgets."""

    model_config = ConfigDict(extra="ignore")

    observedGeneration: int | None = Field(default=None, description="The generation this status describes.")
    conditions: list[PolicyCondition] = Field(
        default_factory=list, description="Ready (False with reason Invalid when the policy cannot be evaluated)."
    )
    usage: PolicyUsage | None = Field(default=None, description="Use of the total budget.")
    selectedNamespaces: int | None = Field(default=None, description="How many namespaces the policy selects.")


class AgentPolicy(_Model):
    """The whole object, for the CRD generator."""

    spec: AgentPolicySpec
    status: AgentPolicyStatus | None = None
