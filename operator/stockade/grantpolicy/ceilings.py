"""A grant against the AgentPolicies that bound it: per-run ceilings, egress, API rules, defaults.

Every selecting policy applies: a grant must fit each of them, and each misfit is a finding naming the
field, the policy and its limit. No selecting policy: refused (closed by default). A policy that cannot
be evaluated admits nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from stockade.api.models import AgentRunSpec, Grant
from stockade.api.policy import AgentPolicySpec, LabelSelector
from stockade.grantpolicy import rules
from stockade.grantpolicy.egress import Network, cidr_within, host_within, network
from stockade.grantpolicy.findings import GRANT, PolicyFinding, policy_label
from stockade.grantpolicy.selector import selects
from stockade.quantity import parse_duration
from stockade.quantity import parse_quantity as _parse_quantity

# Policies and grants repeat the same few amounts: parse each once (Decimals are immutable).
parse_quantity = lru_cache(maxsize=4096)(_parse_quantity)

DEFAULT_PROTOCOLS: tuple[Literal["TCP", "UDP", "SCTP"], ...] = ("TCP",)
# More permissions than this in one grant are refused rather than checked one SubjectAccessReview each.
MAX_PERMISSIONS = 256
HOW_TO_CREATE = ("a platform admin must create an AgentPolicy whose namespaceSelector selects it "
                 "(see README, \"Policies and budgets\"; the chart ships one: policy.default.enabled)")


@dataclass(frozen=True)
class Bound:
    """One policy as admission uses it: parsed once per generation, or why it cannot be evaluated."""

    name: str
    spec: AgentPolicySpec | None
    error: str = ""
    networks: tuple[Network, ...] = field(default=())
    # Whom it selects; None (select all) when even the selector cannot be read: a broken policy bounds
    # every namespace it might have meant.
    selector: LabelSelector | None = None

    @classmethod
    def of(cls, name: str, raw_spec: Mapping[str, Any] | None) -> Bound:
        raw = raw_spec or {}
        try:
            selector: LabelSelector | None = LabelSelector.model_validate(raw.get("namespaceSelector") or {})
        except ValueError:
            selector = None
        try:
            spec = AgentPolicySpec.model_validate(raw)
            networks = tuple(network(cidr) for cidr in spec.egress.cidrs)
            for duration in (spec.ceilings.maxDuration, spec.defaults.duration):
                if duration is not None:
                    parse_duration(duration)
        except ValueError as err:  # pydantic's ValidationError is a ValueError
            return cls(name, None, " ".join(str(err).split())[:300], selector=selector)
        return cls(name, spec, networks=networks, selector=selector)

    def selects(self, namespace_labels: Mapping[str, str]) -> bool:
        return self.selector is None or selects(self.selector, namespace_labels)


def _finding(kind: str, fld: str, message: str, bound: Bound, limit: str, *, hint: str = "") -> PolicyFinding:
    return PolicyFinding(kind, fld, message, policy_label(bound.name), limit, hint=hint)


def _quantities(grant: Grant, spec: AgentPolicySpec, bound: Bound) -> list[PolicyFinding]:
    out = []
    for name in ("cpu", "memory", "ephemeralStorage"):
        ceiling = getattr(spec.ceilings, name)
        asked = getattr(grant, name)
        if ceiling is not None and parse_quantity(asked) > parse_quantity(ceiling):
            out.append(_finding("CeilingExceeded", f"{GRANT}.{name}", f"{asked} asked", bound,
                                f"at most {ceiling} (ceilings.{name})"))
    if spec.ceilings.pods is not None and grant.pods > spec.ceilings.pods:
        out.append(_finding("CeilingExceeded", f"{GRANT}.pods", f"{grant.pods} asked", bound,
                            f"at most {spec.ceilings.pods} (ceilings.pods)"))
    gpus = spec.ceilings.gpus
    if gpus is not None and grant.gpu > 0:
        resource = grant.gpuResource or ""
        if resource not in gpus:
            allowed = ", ".join(f"{r} (at most {n})" for r, n in sorted(gpus.items())) or "no GPUs"
            out.append(_finding("GPUResourceNotAllowed", f"{GRANT}.gpuResource", f"{resource or 'none'} asked",
                                bound, f"{allowed} (ceilings.gpus)"))
        elif grant.gpu > gpus[resource]:
            out.append(_finding("CeilingExceeded", f"{GRANT}.gpu", f"{grant.gpu} {resource} asked", bound,
                                f"at most {gpus[resource]} {resource} (ceilings.gpus[{resource}])"))
    return out


def _duration(grant: Grant, spec: AgentPolicySpec, bound: Bound) -> list[PolicyFinding]:
    ceiling = spec.ceilings.maxDuration
    if ceiling is None:
        return []
    if grant.duration is None:
        return [_finding("CeilingExceeded", f"{GRANT}.duration", "no duration (the run would never expire)", bound,
                         f"at most {ceiling} (ceilings.maxDuration)", hint="set spec.grant.duration")]
    if parse_duration(grant.duration) > parse_duration(ceiling):
        return [_finding("CeilingExceeded", f"{GRANT}.duration", f"{grant.duration} asked", bound,
                         f"at most {ceiling} (ceilings.maxDuration)")]
    return []


def _runtime(run: AgentRunSpec, spec: AgentPolicySpec, bound: Bound) -> list[PolicyFinding]:
    out = []
    allowed, required = spec.ceilings.runtimeClassNames, spec.ceilings.requiredRuntimeClassName
    for index, name in enumerate(run.grant.runtimeClassNames):
        if allowed is not None and name not in allowed:
            out.append(_finding("RuntimeClassNotAllowed", f"{GRANT}.runtimeClassNames[{index}]", f"{name} asked",
                                bound, f"{', '.join(allowed) or 'no RuntimeClass'} (ceilings.runtimeClassNames)"))
        elif required is not None and name != required:
            out.append(_finding("RuntimeClassNotAllowed", f"{GRANT}.runtimeClassNames[{index}]", f"{name} asked",
                                bound, f"only {required} (ceilings.requiredRuntimeClassName)"))
    if required is not None:
        if required not in run.grant.runtimeClassNames:
            out.append(_finding("RuntimeClassRequired", f"{GRANT}.runtimeClassNames", "the required class is missing",
                                bound, f"{required} only, and requires it (ceilings.requiredRuntimeClassName)"))
        asked = (run.template.get("spec") or {}).get("runtimeClassName")
        if asked != required:
            out.append(_finding("RuntimeClassRequired", "spec.template.spec.runtimeClassName",
                                f"{asked or 'none'} asked", bound,
                                f"{required} only, and requires it (ceilings.requiredRuntimeClassName)"))
    return out


def _mode(run: AgentRunSpec, spec: AgentPolicySpec, bound: Bound) -> list[PolicyFinding]:
    out = []
    if run.enforcement == "audit" and not spec.ceilings.allowAudit:
        out.append(_finding("AuditNotAllowed", "spec.enforcement", "audit asked", bound,
                            "enforce only (ceilings.allowAudit is false)"))
    if run.grant.podToPod and not spec.ceilings.allowPodToPod:
        out.append(_finding("PodToPodNotAllowed", f"{GRANT}.podToPod", "traffic among the run's pods asked", bound,
                            "none (ceilings.allowPodToPod is false)"))
    for rung in spec.ceilings.requiredResponse or []:
        if rung not in run.response:
            out.append(_finding("ResponseTooWeak", "spec.response", f"{rung} is missing from {run.response}", bound,
                                f"a response containing {', '.join(spec.ceilings.requiredResponse or [])} "
                                "(ceilings.requiredResponse)"))
    return out


def _egress(grant: Grant, spec: AgentPolicySpec, bound: Bound) -> list[PolicyFinding]:
    out = []
    policy = spec.egress
    protocols = policy.protocols or list(DEFAULT_PROTOCOLS)
    for index, rule in enumerate(grant.egress):
        path = f"{GRANT}.egress[{index}]"
        if rule.cidr is not None and not cidr_within(rule.cidr, bound.networks):
            out.append(_finding("EgressNotAllowed", f"{path}.cidr", f"{rule.cidr} asked", bound,
                                f"CIDRs within {', '.join(policy.cidrs) or 'none'} (egress.cidrs)"))
        if rule.host is not None and not host_within(rule.host, policy.hosts):
            out.append(_finding("EgressNotAllowed", f"{path}.host", f"{rule.host} asked", bound,
                                f"hosts {', '.join(policy.hosts) or 'none'} (egress.hosts)"))
        outside = [port for port in rule.ports if policy.ports and port not in policy.ports]
        if outside:
            out.append(_finding("EgressNotAllowed", f"{path}.ports", f"{', '.join(map(str, outside))} asked", bound,
                                f"ports {', '.join(map(str, policy.ports))} (egress.ports)"))
        if rule.protocol not in protocols:
            out.append(_finding("EgressNotAllowed", f"{path}.protocol", f"{rule.protocol} asked", bound,
                                f"{', '.join(protocols)} (egress.protocols)"))
    if grant.dns and not policy.dns:
        out.append(_finding("EgressNotAllowed", f"{GRANT}.dns", "DNS asked", bound, "no DNS (egress.dns is false)"))
    return out


def _api(grant: Grant, spec: AgentPolicySpec, bound: Bound) -> list[PolicyFinding]:
    out = []
    for index, rule in enumerate(grant.kubernetesAPI):
        missing = rules.uncovered(rule, spec.kubernetesAPI)
        if missing:
            shown = ", ".join(perm.text() for perm in missing[:3]) + (" ..." if len(missing) > 3 else "")
            out.append(_finding("APIRuleNotAllowed", f"{GRANT}.kubernetesAPI[{index}]", f"{shown} asked", bound,
                                f"{rules.describe(spec.kubernetesAPI)} (kubernetesAPI)"))
    return out


def check_policy(run: AgentRunSpec, bound: Bound) -> list[PolicyFinding]:
    """Every way ``run`` does not fit one policy (nothing fits a policy that cannot be evaluated)."""
    if bound.spec is None:
        return [PolicyFinding("PolicyInvalid", "spec.grant", "cannot be checked", policy_label(bound.name),
                              f"nothing: the policy cannot be evaluated ({bound.error})",
                              "a platform admin must fix or delete the policy")]
    spec = bound.spec
    return [*_quantities(run.grant, spec, bound), *_duration(run.grant, spec, bound), *_runtime(run, spec, bound),
            *_mode(run, spec, bound), *_egress(run.grant, spec, bound), *_api(run.grant, spec, bound)]


def too_many_permissions(grant: Grant) -> PolicyFinding | None:
    total = sum(rules.count(rule) for rule in grant.kubernetesAPI)
    if total <= MAX_PERMISSIONS:
        return None
    return PolicyFinding("TooManyPermissions", f"{GRANT}.kubernetesAPI", f"{total} permissions asked",
                         "Stockade", f"at most {MAX_PERMISSIONS} (each is checked against the requester's own)",
                         "use fewer resourceNames or split the rules")


def check(run: AgentRunSpec, bounds: Sequence[Bound], namespace: str) -> list[PolicyFinding]:
    """The grant against every policy selecting its namespace; closed when none does."""
    if not bounds:
        return [PolicyFinding("NoPolicy", "metadata.namespace", f"no AgentPolicy selects namespace {namespace}",
                              "Stockade", "no AgentRun there", HOW_TO_CREATE)]
    out: list[PolicyFinding] = []
    for bound in bounds:
        out.extend(check_policy(run, bound))
    return out


# Defaults -----------------------------------------------------------------------------------------------
def defaults(raw_grant: Mapping[str, Any], bounds: Sequence[Bound]) -> dict[str, Any]:
    """Grant fields to fill in: those the grant omits and some policy gives a default for. Where several
    policies do, the shortest duration wins, else the first policy by name."""
    out: dict[str, Any] = {}
    valid = sorted((b for b in bounds if b.spec is not None), key=lambda b: b.name)
    durations = [b.spec.defaults.duration for b in valid if b.spec is not None and b.spec.defaults.duration]
    if "duration" not in raw_grant and durations:
        out["duration"] = min(durations, key=parse_duration)
    for name in ("runtimeClassNames", "gpuResource"):
        if name in raw_grant:
            continue
        given = [getattr(b.spec.defaults, name) for b in valid if b.spec is not None]
        chosen = next((value for value in given if value is not None), None)
        if chosen is not None:
            out[name] = chosen
    return out

