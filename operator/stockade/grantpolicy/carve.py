"""No grant from thin air: an AgentRun made by a run (from inside its run namespace, or with its
ServiceAccount anywhere) is carved out of that run's grant.

Refused unless the parent's grant has ``delegation``. Then the children's grants plus the parent's own
pods stay within the parent's grant (cpu, memory, ephemeral storage, GPUs, pods); the child's egress,
API rules, runtime classes and DNS are within the parent's; it ends no later than the parent; it is
enforced if the parent is, with at least the parent's response.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from stockade.api.models import AgentRunSpec, EgressRule, Grant
from stockade.grantcheck import granted_amounts, pod_amounts
from stockade.grantpolicy import rules
from stockade.grantpolicy.egress import network
from stockade.grantpolicy.findings import GRANT, PolicyFinding
from stockade.quantity import format_bytes, format_cpu, parse_duration

# A parent in one of these phases gives nothing more.
ENDED = ("Succeeded", "Failed", "Expired", "Quarantined")
_FIELDS = {"cpu": "cpu", "memory": "memory", "ephemeral-storage": "ephemeralStorage"}


@dataclass(frozen=True)
class Parent:
    """The run whose agent asks, as the store holds it."""

    namespace: str
    name: str
    spec: AgentRunSpec
    status: Mapping[str, Any]

    def label(self) -> str:
        return f"the parent run {self.namespace}/{self.name}"


def pods_usage(pods: Iterable[Mapping[str, Any]]) -> dict[str, Decimal]:
    """What the parent's own live pods hold: per resource, the larger of requests and limits."""
    total: dict[str, Decimal] = {}
    for pod in pods:
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        spec = pod.get("spec") or {}
        requests, limits = pod_amounts(spec, "requests"), pod_amounts(spec, "limits")
        for resource in {*requests, *limits}:
            amount = max(requests.get(resource, Decimal(0)), limits.get(resource, Decimal(0)))
            total[resource] = total.get(resource, Decimal(0)) + amount
        total["pods"] = total.get("pods", Decimal(0)) + 1
    return total


def _show(resource: str, amount: Decimal) -> str:
    if resource == "cpu":
        return format_cpu(amount)
    if resource in ("memory", "ephemeral-storage"):
        return format_bytes(amount)
    return str(amount.normalize()) if amount != amount.to_integral_value() else str(int(amount))


def _amounts(grant: Grant) -> dict[str, Decimal]:
    amounts = granted_amounts(grant)
    amounts["pods"] = Decimal(grant.pods)
    return amounts


def _field_of(resource: str, parent: Grant) -> str:
    if resource == parent.gpuResource or "/" in resource:
        return f"{GRANT}.gpu"
    return f"{GRANT}.{_FIELDS.get(resource, resource)}"


def _resources(child: Grant, parent: Parent, siblings: Sequence[Grant], used: Mapping[str, Decimal]
               ) -> list[PolicyFinding]:
    out = []
    have = _amounts(parent.spec.grant)
    taken = dict(used)
    for sibling in siblings:
        for resource, amount in _amounts(sibling).items():
            taken[resource] = taken.get(resource, Decimal(0)) + amount
    for resource, asked in _amounts(child).items():
        if asked == 0:
            continue
        limit = have.get(resource, Decimal(0))
        left = max(limit - taken.get(resource, Decimal(0)), Decimal(0))
        if asked > left:
            out.append(PolicyFinding(
                "DelegationExceeded", _field_of(resource, parent.spec.grant),
                f"{_show(resource, asked)} {resource} asked", parent.label(),
                f"{_show(resource, left)} left of its {_show(resource, limit)} (its pods and other children hold "
                f"{_show(resource, taken.get(resource, Decimal(0)))})"))
    return out


def _egress_within(rule: EgressRule, allowed: Sequence[EgressRule]) -> bool:
    for outer in allowed:
        if outer.protocol != rule.protocol or not set(rule.ports) <= set(outer.ports):
            continue
        if rule.host is not None and outer.host == rule.host:
            return True
        if rule.cidr is not None and outer.cidr is not None:
            inner, wide = network(rule.cidr), network(outer.cidr)
            if inner.version == wide.version and inner.subnet_of(wide):  # type: ignore[arg-type]
                return True
    return False


def _fence(child: AgentRunSpec, parent: Parent) -> list[PolicyFinding]:
    out = []
    have, label = parent.spec.grant, parent.label()
    for index, rule in enumerate(child.grant.egress):
        if not _egress_within(rule, have.egress):
            dest = rule.cidr or rule.host
            out.append(PolicyFinding("DelegationExceeded", f"{GRANT}.egress[{index}]",
                                     f"{dest} ports {rule.ports} {rule.protocol} asked", label,
                                     "only destinations within its own egress"))
    if child.grant.dns and not have.dns:
        out.append(PolicyFinding("DelegationExceeded", f"{GRANT}.dns", "DNS asked", label, "no DNS"))
    if child.grant.podToPod and not have.podToPod:
        out.append(PolicyFinding("DelegationExceeded", f"{GRANT}.podToPod", "traffic among its pods asked", label,
                                 "no pod-to-pod traffic"))
    for index, api_rule in enumerate(child.grant.kubernetesAPI):
        missing = rules.uncovered(api_rule, have.kubernetesAPI)
        if missing:
            out.append(PolicyFinding("DelegationExceeded", f"{GRANT}.kubernetesAPI[{index}]",
                                     f"{', '.join(p.text() for p in missing[:3])} asked", label,
                                     f"only its own API rules: {rules.describe(have.kubernetesAPI)}"))
    extra = [name for name in child.grant.runtimeClassNames if name not in have.runtimeClassNames]
    if extra:
        out.append(PolicyFinding("DelegationExceeded", f"{GRANT}.runtimeClassNames", f"{', '.join(extra)} asked",
                                 label, f"only {', '.join(have.runtimeClassNames) or 'no RuntimeClass'}"))
    if child.enforcement == "audit" and parent.spec.enforcement != "audit":
        out.append(PolicyFinding("DelegationExceeded", "spec.enforcement", "audit asked", label, "enforce only"))
    weaker = [rung for rung in parent.spec.response if rung not in child.response]
    if weaker:
        out.append(PolicyFinding("DelegationExceeded", "spec.response", f"{', '.join(weaker)} missing", label,
                                 f"a response containing {', '.join(parent.spec.response)}"))
    return out


def _parse_time(text: str) -> datetime.datetime | None:
    try:
        parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def _ends(child: Grant, parent: Parent, now: datetime.datetime) -> list[PolicyFinding]:
    expires = parent.status.get("expiresAt")
    if parent.spec.grant.duration is None and not expires:
        return []
    deadline = _parse_time(str(expires)) if expires else None
    if deadline is None:  # the parent has a duration but has not started its clock: no later than that
        deadline = now + datetime.timedelta(seconds=parse_duration(parent.spec.grant.duration or "0s"))
    label, stamp = parent.label(), deadline.strftime("%Y-%m-%dT%H:%M:%SZ")
    if child.duration is None:
        return [PolicyFinding("DelegationExceeded", f"{GRANT}.duration", "no duration (never expires)", label,
                              f"an end no later than its own, {stamp}", hint="set spec.grant.duration")]
    if now + datetime.timedelta(seconds=parse_duration(child.duration)) > deadline:
        left = max(int((deadline - now).total_seconds()), 0)
        return [PolicyFinding("DelegationExceeded", f"{GRANT}.duration", f"{child.duration} asked", label,
                              f"an end no later than its own, {stamp} ({left}s from now)")]
    return []


def check(child: AgentRunSpec, parent: Parent | None, *, siblings: Sequence[Grant] = (),
          used: Mapping[str, Decimal] | None = None, now: datetime.datetime, asked_by: str) -> list[PolicyFinding]:
    """A run's request for a child AgentRun; ``asked_by`` says how it was recognised as the run's."""
    if parent is None:
        return [PolicyFinding("NoParent", "metadata.namespace", f"an AgentRun {asked_by}", "Stockade",
                              "nothing: the run that owns it is gone")]
    label = parent.label()
    if not parent.spec.grant.delegation:
        return [PolicyFinding("DelegationNotGranted", f"{GRANT}", f"an AgentRun {asked_by}", label,
                              "no child runs (its spec.grant.delegation is false)",
                              hint="whoever owns the parent can set spec.grant.delegation: true")]
    phase = parent.status.get("phase")
    if phase in ENDED:
        return [PolicyFinding("DelegationNotGranted", f"{GRANT}", f"an AgentRun {asked_by}", label,
                              f"no child runs while it is {phase}")]
    return [*_resources(child.grant, parent, siblings, used or {}), *_fence(child, parent),
            *_ends(child.grant, parent, now)]
