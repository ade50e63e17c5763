"""One AgentRun's fence as a plain report (pure): what ``stockade status`` shows and prints as JSON.

Input is what the API server holds: the AgentRun and the objects in its run namespace. The set of
guardrails that should exist comes from the planner itself (``plan.build`` with the addresses the
operator resolved), so the report cannot disagree with the reconciler about what a fence is.
The JSON form is a contract for scripts: keys are only ever added, never renamed.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from stockade import kinds, labels
from stockade.api.models import AgentRunSpec
from stockade.findings import refusal_text
from stockade.grantpolicy.budget import amount
from stockade.naming import run_namespace_name
from stockade.plan import PlanSettings, RunRef, build
from stockade.quantity import parse_quantity

REPORT_KIND = "FenceReport"
REPORT_VERSION = "stockade.io/v1alpha1"

# What a fence is made of: the kinds read from the run namespace (apiVersion, kind). The Namespace
# itself is read by name; Pods are not guardrails but show what the fence holds.
FENCE_KINDS: tuple[tuple[str, str], ...] = (*(kind.ref for kind in kinds.GUARDRAILS), kinds.named("Pod").ref)
# Components whose objects the operator manages in a run namespace; one not planned is "extra".
_GUARDRAIL_COMPONENTS = {*kinds.GUARDRAIL_COMPONENTS, "quarantine"}  # and the responder's quarantine policy


@dataclass(frozen=True)
class Fence:
    """What was read from the run namespace. A kind missing from ``objects`` could not be read
    (``unreadable`` says why): its guardrails are "unknown", not "missing"."""

    namespace: Mapping[str, Any] | None
    objects: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    unreadable: Mapping[str, str] = field(default_factory=dict)
    # The AgentPolicies named in status.policies, as read (one that could not be read is absent).
    policies: Sequence[Mapping[str, Any]] = ()


def parse_time(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def _seconds(since: datetime.datetime | None, until: datetime.datetime | None) -> int | None:
    return None if since is None or until is None else int((until - since).total_seconds())


def _spec(raw: Mapping[str, Any]) -> tuple[AgentRunSpec | None, str | None]:
    try:
        return AgentRunSpec.model_validate(raw.get("spec") or {}), None
    except ValidationError as err:
        problems = "; ".join(f"spec.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        return None, problems


def _grant(spec: AgentRunSpec | None, raw: Mapping[str, Any], resolved: Mapping[str, list[str]]) -> dict[str, Any]:
    if spec is None:  # an invalid spec is still shown, as written
        return dict((raw.get("spec") or {}).get("grant") or {})
    grant = spec.grant.model_dump(exclude_none=True)
    for rule in grant["egress"]:
        if "host" in rule:
            # Which addresses the host stands for right now; an unresolved host allows nothing. A host
            # looked up without an answer is listed in resolvedEgress with no address: not resolved.
            rule["addresses"] = list(resolved.get(rule["host"], []))
            rule["resolved"] = bool(rule["addresses"])
    return grant


def _expected(run: RunRef, spec: AgentRunSpec | None, resolved: Mapping[str, list[str]],
              settings: PlanSettings, quarantine: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(kind, name) of every guardrail the run should have."""
    if spec is None:
        return [("Namespace", run.run_namespace)]
    plan = build(run, spec, resolved, settings)
    expected = [(obj["kind"], obj["metadata"]["name"]) for obj in plan.guardrails]
    if quarantine.get("active") and "isolate" in (quarantine.get("steps") or []):
        expected.append(("NetworkPolicy", labels.POLICY_QUARANTINE))
    return expected


def _refusals(status: Mapping[str, Any]) -> list[str]:
    """Why the template was refused, one item per finding, as the operator recorded it in status.refusals
    (its word, not a re-check here: an operator of another version may judge differently, and it acts)."""
    return [refusal_text(r) for r in status.get("refusals") or [] if isinstance(r, Mapping)]


def _frozen(quarantine: Mapping[str, Any]) -> bool:
    return bool(quarantine.get("active")) and "freeze" in (quarantine.get("steps") or [])


def _state(kind: str, name: str, fence: Fence, quarantine: Mapping[str, Any]) -> str:
    if kind == "Namespace" and kind not in fence.unreadable:
        return "present" if fence.namespace is not None else "missing"
    if kind not in fence.objects:
        return "unknown"
    present = any(obj["metadata"]["name"] == name for obj in fence.objects[kind])
    if kind == "RoleBinding" and _frozen(quarantine):
        # The freeze rung takes the agent's RoleBinding away on purpose: absent is the fence
        # working, present means the agent still holds its API access.
        return "unrevoked" if present else "revoked"
    return "present" if present else "missing"


def _guardrails(expected: list[tuple[str, str]], fence: Fence, quarantine: Mapping[str, Any],
                planned: bool) -> list[dict[str, str]]:
    rows = [{"kind": kind, "name": name, "state": _state(kind, name, fence, quarantine)} for kind, name in expected]
    wanted = set(expected)
    for kind, objects in fence.objects.items():
        for obj in objects:
            meta = obj["metadata"]
            component = (meta.get("labels") or {}).get(labels.COMPONENT)
            if component in _GUARDRAIL_COMPONENTS and (kind, meta["name"]) not in wanted:
                # Without a usable spec there is no plan to compare with: what exists is just present.
                rows.append({"kind": kind, "name": meta["name"], "state": "extra" if planned else "present"})
    return rows


def _named(fence: Fence, kind: str, name: str) -> Mapping[str, Any] | None:
    return next((o for o in fence.objects.get(kind, ()) if o["metadata"]["name"] == name), None)


def _exceeded(used: Any, hard: Any) -> bool:
    """More in use than the quota allows: the grant was narrowed under running pods."""
    try:
        return used is not None and parse_quantity(used) > parse_quantity(hard)
    except ValueError:
        return False


def _quota(fence: Fence) -> dict[str, Any] | None:
    quota = _named(fence, "ResourceQuota", labels.QUOTA)
    if quota is None:
        return None
    status = quota.get("status") or {}
    # status.hard is what the quota controller enforces; spec.hard until it has caught up.
    hard = status.get("hard") or (quota.get("spec") or {}).get("hard") or {}
    used = status.get("used") or {}
    resources = [{"resource": key, "used": used.get(key), "hard": hard[key],
                  "exceeded": _exceeded(used.get(key), hard[key])} for key in sorted(hard)]
    return {"name": labels.QUOTA, "enforced": bool(status.get("hard")), "resources": resources}


def _limits(fence: Fence) -> list[dict[str, Any]] | None:
    limit_range = _named(fence, "LimitRange", labels.LIMIT_RANGE)
    if limit_range is None:
        return None
    keep = ("type", "max", "default", "defaultRequest")
    return [{k: item[k] for k in keep if k in item} for item in (limit_range.get("spec") or {}).get("limits") or []]


def _pods(fence: Fence) -> list[dict[str, Any]] | None:
    if "Pod" not in fence.objects:
        return None
    rows = []
    for pod in sorted(fence.objects["Pod"], key=lambda p: str(p["metadata"]["name"])):
        meta, status = pod["metadata"], pod.get("status") or {}
        rows.append({
            "name": meta["name"],
            "phase": status.get("phase"),
            "node": (pod.get("spec") or {}).get("nodeName"),
            "quarantined": (meta.get("labels") or {}).get(labels.QUARANTINED) == "true",
            "terminating": bool(meta.get("deletionTimestamp")),
        })
    return rows


def _left(usage: Any) -> str | None:
    """What a "used/limit" budget string has left, in the same units; None where it is unbounded."""
    used, _, limit = str(usage or "").partition("/")
    if not limit:
        return None
    try:
        left = max(parse_quantity(limit) - parse_quantity(used), Decimal(0))
    except ValueError:
        return None
    unit = "memory" if limit[-1:] in "iKMGTPE" else "cpu" if limit.endswith("m") else "count"
    return amount(unit, left)


def _policies(status: Mapping[str, Any], fence: Fence) -> list[dict[str, Any]]:
    """The AgentPolicies that bound the run, each with its budgets and what is left of its total budget."""
    read = {str(p["metadata"]["name"]): p for p in fence.policies}
    rows = []
    for name in status.get("policies") or []:
        policy = read.get(name)
        if policy is None:
            rows.append({"name": name, "readable": False})
            continue
        usage = dict((policy.get("status") or {}).get("usage") or {})
        flat = {k: v for k, v in usage.items() if k in ("runs", "cpu", "memory")}
        flat.update({f"gpus[{r}]": v for r, v in (usage.get("gpus") or {}).items()})
        budgets = (policy.get("spec") or {}).get("budgets") or {}
        rows.append({"name": name, "readable": True, "total": flat,
                     "left": {k: left for k, v in flat.items() if (left := _left(v)) is not None},
                     "perNamespace": dict(budgets.get("perNamespace") or {}),
                     "onNarrowed": (policy.get("spec") or {}).get("onNarrowed", "Continue")})
    return rows


def _conditions(status: Mapping[str, Any]) -> list[dict[str, Any]]:
    keep = ("type", "status", "reason", "message", "lastTransitionTime", "observedGeneration")
    return [{k: c.get(k) for k in keep} for c in status.get("conditions") or []]


def _admission_ready(status: Mapping[str, Any]) -> bool | None:
    found = next((c for c in status.get("conditions") or [] if c.get("type") == "AdmissionReady"), None)
    return None if found is None or found.get("status") == "Unknown" else found.get("status") == "True"


def _violations(status: Mapping[str, Any], last: int) -> list[dict[str, Any]]:
    keep = ("time", "lastTime", "count", "kind", "severity", "source", "pod", "action", "detail")
    recorded = status.get("violations") or []  # the responder appends: oldest first
    return [{k: v.get(k) for k in keep} for v in recorded[-last:]] if last > 0 else []


def build_report(agentrun: Mapping[str, Any], fence: Fence, now: datetime.datetime, *, violations: int = 10,
                 settings: PlanSettings | None = None) -> dict[str, Any]:
    """The report for one AgentRun; ``now`` makes ages and the time left reproducible."""
    meta = agentrun["metadata"]
    status = agentrun.get("status") or {}
    run = RunRef(meta["namespace"], meta["name"])
    spec, spec_error = _spec(agentrun)
    resolved: Mapping[str, list[str]] = status.get("resolvedEgress") or {}
    quarantine: Mapping[str, Any] = status.get("quarantine") or {}
    expected = _expected(run, spec, resolved, settings or PlanSettings(), quarantine)
    guardrails = _guardrails(expected, fence, quarantine, planned=spec is not None)
    expires = parse_time(status.get("expiresAt"))
    return {
        "apiVersion": REPORT_VERSION,
        "kind": REPORT_KIND,
        "agentRun": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
            "generation": meta.get("generation"),
            "observedGeneration": status.get("observedGeneration"),
            "createdAt": meta.get("creationTimestamp"),
            "ageSeconds": _seconds(parse_time(meta.get("creationTimestamp")), now),
        },
        "phase": status.get("phase"),
        "runNamespace": status.get("runNamespace") or run_namespace_name(run.namespace, run.name),
        "enforcement": spec.enforcement if spec else None,
        "response": list(spec.response) if spec else None,
        "workload": status.get("workload"),
        "startTime": status.get("startTime"),
        "expiresAt": status.get("expiresAt"),
        "expiresInSeconds": _seconds(now, expires),
        "specError": spec_error,
        "conditions": _conditions(status),
        # The operator's webhook configurations and admission policies whole (AdmissionReady; None: not said).
        "admissionReady": _admission_ready(status),
        "grant": _grant(spec, agentrun, resolved),
        "refusals": _refusals(status),
        "guardrails": guardrails,
        "fenceComplete": all(row["state"] in ("present", "revoked", "extra") for row in guardrails),
        "unreadable": dict(fence.unreadable),
        "quota": _quota(fence),
        "limits": _limits(fence),
        "pods": _pods(fence),
        "violationsTotal": len(status.get("violations") or []),
        "violations": _violations(status, violations),
        "quarantine": dict(quarantine) if quarantine else None,
        "policies": _policies(status, fence),
    }
