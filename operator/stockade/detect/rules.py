"""(grant, observation) -> Violation: pure rules, one per kind of signal.

Nothing here talks to the cluster; callers hand in the grant, what the watches or a detector saw,
and the time to stamp. The response (what to do about a violation) lives in ``stockade.detect.respond``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from stockade import kinds, labels, services
from stockade.api.models import AgentRunSpec, Grant, Violation
from stockade.detect.falco import Endpoint, RuntimeEvent, normalise_ip
from stockade.detect.schema import CONNECTION_KINDS, Signal
from stockade.grantcheck import Usage, check_pod_spec, pod_amounts
from stockade.naming import job_name, label_value

Severity = Literal["low", "medium", "high", "critical"]
Source = Literal["admission", "api", "runtime", "metrics", "signal"]
SEVERITIES: tuple[Severity, ...] = ("low", "medium", "high", "critical")

# Violation kinds, with the severity each has unless the signal says worse.
KINDS: dict[str, Severity] = {
    # The Kubernetes API.
    "PodExceedsGrant": "high",
    "PodsBeyondGrant": "high",
    "ServiceNotGranted": "medium",
    "WorkloadNotGranted": "high",
    "NetworkPolicyNotGranted": "high",
    "RBACNotGranted": "high",
    "GuardrailEdited": "medium",
    "QuarantineTampered": "critical",
    "PodStartedWhileQuarantined": "high",
    # Runtime security events.
    "UngrantedEgress": "high",
    "SSHConnection": "high",
    "CryptoMiner": "critical",
    "ReverseShell": "critical",
    "C2Connection": "critical",
    "ShellInContainer": "medium",
    "RuntimeAlert": "low",
    # Usage metrics.
    "GPUNotGranted": "high",
    "GPUsBeyondGrant": "high",
    "EgressRateExceeded": "medium",
}
_CATEGORY_KINDS = {"ssh": "SSHConnection", "miner": "CryptoMiner", "reverse-shell": "ReverseShell",
                   "c2": "C2Connection", "shell": "ShellInContainer"}
# From the table of kinds (stockade.kinds): what makes pods, the fence, and where each kind lives.
WORKLOAD_KINDS = {kind.kind for kind in kinds.DETECTED if kind.makes_pods}
GUARDRAIL_KINDS = {kind.kind for kind in kinds.GUARDRAILS}
# Kinds whose children are flagged through the parent (a Deployment's ReplicaSets, a CronJob's Jobs).
_PARENTS = {"ReplicaSet": {"Deployment"}, "Job": {"CronJob"}}
_RESOURCES = {kind.kind: kind.resource for kind in (*kinds.DETECTED, kinds.named("Pod"))}
# Guardrails that, made by someone other than Stockade, widen the agent's reach (the violation and why).
_FOREIGN_GUARDRAILS = {"NetworkPolicy": ("NetworkPolicyNotGranted", "could open a way out of the fence"),
                       "Role": ("RBACNotGranted", "could widen the agent's access"),
                       "RoleBinding": ("RBACNotGranted", "could widen the agent's access")}
WRITE_VERBS = ("create", "update", "patch", "delete")


def worse(a: Severity, b: Severity) -> Severity:
    return a if SEVERITIES.index(a) >= SEVERITIES.index(b) else b


def at_least(severity: str, minimum: str) -> bool:
    return SEVERITIES.index(_severity(severity)) >= SEVERITIES.index(_severity(minimum))


def _severity(value: str) -> Severity:
    for known in SEVERITIES:
        if value == known:
            return known
    return "medium"


def violation(kind: str, detail: str, source: Source, at: str, *, pod: str | None = None,
              severity: Severity | None = None, evidence: Mapping[str, Any] | None = None) -> Violation:
    return Violation(time=at, kind=kind, severity=severity or KINDS.get(kind, "high"), pod=pod,
                     detail=detail[:1024], source=source, evidence=dict(evidence) if evidence else None)


# Egress -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EgressVerdict:
    granted: bool
    why: str


def _private(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return ip.is_private or ip.is_link_local


def judge_egress(grant: Grant, resolved: Mapping[str, Sequence[str]], address: str, port: int | None,
                 protocol: str | None, *, dns_addresses: Iterable[str] = (),
                 peers: Collection[str] = ()) -> EgressVerdict:
    """Whether the grant allows a connection to address:port/protocol (port None: any port); ``peers``:
    the run's pods the source may reach (stockade.detect.peers, empty without grant.podToPod)."""
    normalised = normalise_ip(address)
    if normalised is None:
        return EgressVerdict(False, f"{address!r} is not an IP address")
    ip = ipaddress.ip_address(normalised)
    if ip.is_loopback:
        return EgressVerdict(True, "loopback stays inside the pod")
    if grant.podToPod and normalised in peers:
        return EgressVerdict(True, "another of the run's pods (grant.podToPod)")
    if grant.dns and port == 53 and protocol in (None, "UDP", "TCP"):
        servers = {normalise_ip(a) for a in dns_addresses}
        # Without configured resolver addresses, port 53 to a cluster-internal address is taken for
        # the cluster resolver; the DNS NetworkPolicy narrows it to the resolver's pods anyway.
        if normalised in servers or (not servers and _private(ip)):
            return EgressVerdict(True, "DNS to the cluster resolver (grant.dns)")
    for index, rule in enumerate(grant.egress):
        if protocol is not None and protocol != rule.protocol:
            continue
        if rule.cidr:
            network = ipaddress.ip_network(rule.cidr, strict=False)
            if ip.version != network.version or ip not in network:
                continue
            target = rule.cidr
        else:
            addresses = {normalise_ip(a) for a in resolved.get(rule.host or "", [])}
            if normalised not in addresses:
                continue
            target = f"{rule.host} ({normalised})"
        if port is not None and port not in rule.ports:
            continue
        return EgressVerdict(True, f"grant.egress[{index}] allows {target}")
    where = f"{normalised}:{port}" if port is not None else normalised
    proto = f"/{protocol}" if protocol else ""
    return EgressVerdict(False, f"{where}{proto} is not in the egress grant")


# Runtime events (Falco) ----------------------------------------------------------------------------
def _endpoint_text(end: Endpoint | None) -> str:
    if end is None:
        return "?"
    host = f"[{end.ip}]" if ":" in end.ip else end.ip
    return f"{host}:{end.port}" if end.port is not None else host


def judge_runtime(event: RuntimeEvent, grant: Grant, resolved: Mapping[str, Sequence[str]], pod_ips: Iterable[str],
                  at: str, *, dns_addresses: Iterable[str] = (), source: Source = "runtime",
                  peers: Collection[str] = ()) -> Violation | None:
    """A runtime event for a run's pod: the rule's meaning, and any outbound connection the grant lacks."""
    own = {normalise_ip(ip) for ip in pod_ips}
    destination = event.destination
    outbound = event.outbound
    if destination is not None and destination.ip in own:
        outbound = False  # the pod is the server: an inbound connection
    elif outbound is None:
        outbound = destination is not None
    verdict = None
    if outbound and destination is not None:
        verdict = judge_egress(grant, resolved, destination.ip, destination.port, event.protocol,
                               dns_addresses=dns_addresses, peers=peers)
    ungranted = verdict is not None and not verdict.granted
    kind = _CATEGORY_KINDS.get(event.category)
    if kind is None:
        if ungranted:
            kind = "UngrantedEgress"
        elif event.category == "other":
            kind = "RuntimeAlert"
        else:
            return None  # an outbound connection the grant allows
    severity = worse(KINDS[kind], _severity(event.severity))
    process = event.process or "a process"
    detail = f"{event.rule}: {process}"
    if outbound and destination is not None:
        detail += f" connected to {_endpoint_text(destination)}"
        detail += f" ({verdict.why})" if verdict is not None else ""
    if event.cmdline:
        detail += f"; command: {event.cmdline[:300]}"
    evidence: dict[str, Any] = {"rule": event.rule, "priority": event.priority, "eventTime": event.time}
    if destination is not None:
        evidence["destination"] = {"ip": destination.ip, "port": destination.port, "protocol": event.protocol,
                                   "outbound": outbound, "granted": None if verdict is None else verdict.granted}
    if event.process:
        evidence["process"] = event.process
    if event.cmdline:
        evidence["cmdline"] = event.cmdline[:1024]
    return violation(kind, detail, source, at, pod=event.pod, severity=severity, evidence=evidence)


# The generic signal ------------------------------------------------------------------------------
def judge_signal(signal: Signal, grant: Grant, resolved: Mapping[str, Sequence[str]], at: str, *,
                 dns_addresses: Iterable[str] = (), peers: Collection[str] = ()) -> Violation | None:
    """Another detector's report; a destination in it is judged against the egress grant here."""
    evidence: dict[str, Any] = {"detector": signal.detector}
    if signal.time:
        evidence["eventTime"] = signal.time
    detail = f"{signal.detector}: {signal.detail}"
    severity: Severity = signal.severity
    if signal.destination is not None:
        dest = signal.destination
        verdict = judge_egress(grant, resolved, dest.ip, dest.port, dest.protocol, dns_addresses=dns_addresses,
                               peers=peers)
        evidence["destination"] = {**dest.model_dump(exclude_none=True), "granted": verdict.granted}
        if signal.kind in CONNECTION_KINDS:
            if verdict.granted:
                return None
            return violation("UngrantedEgress", f"{detail} ({verdict.why})", "signal", at, pod=signal.pod,
                             severity=worse(severity, KINDS["UngrantedEgress"]), evidence=evidence)
        detail += f" ({verdict.why})"
    return violation(signal.kind, detail, "signal", at, pod=signal.pod, severity=severity, evidence=evidence)


# The Kubernetes API: pods --------------------------------------------------------------------------
# Set by the API server or the scheduler on every live pod, never by the agent.
_SERVER_SET = ("nodeName",)


def _live(pod: Mapping[str, Any]) -> bool:
    meta = pod.get("metadata") or {}
    phase = (pod.get("status") or {}).get("phase")
    return not meta.get("deletionTimestamp") and phase not in ("Succeeded", "Failed")


def _created(pod: Mapping[str, Any]) -> tuple[str, str]:
    meta = pod.get("metadata") or {}
    return str(meta.get("creationTimestamp") or ""), str(meta.get("name") or "")


def judge_pods(pods: Iterable[Mapping[str, Any]], grant: Grant, at: str) -> list[Violation]:
    """Live pods held against the grant, oldest first: the first ones within it are fine, and a pod
    that takes the run past a total (pods, CPU, GPUs, ...) or asks for what is never granted is not."""
    violations = []
    usage = Usage()
    for pod in sorted((p for p in pods if _live(p)), key=_created):
        name = pod["metadata"]["name"]
        spec = {k: v for k, v in (pod.get("spec") or {}).items() if k not in _SERVER_SET}
        findings = check_pod_spec(spec, grant, path="spec", usage=usage)
        beyond = [f for f in findings if f.kind == "PodsExceedGrant"]
        other = [f for f in findings if f.kind != "PodsExceedGrant"]
        evidence = {"uid": pod["metadata"].get("uid"), "fields": sorted({f.field for f in findings})}
        if beyond:
            violations.append(violation("PodsBeyondGrant", f"pod {name}: " + beyond[0].text(), "api", at, pod=name,
                                        evidence=evidence))
        if other:
            text = "; ".join(f.text() for f in other)
            violations.append(violation("PodExceedsGrant", f"pod {name}: {text}", "api", at, pod=name,
                                        evidence=evidence))
        usage.pods += 1
        for resource, amount in _taken(spec).items():
            usage.amounts[resource] = usage.amounts.get(resource, Decimal(0)) + amount
    return violations


def _taken(spec: Mapping[str, Any]) -> dict[str, Decimal]:
    requests, limits = pod_amounts(spec, "requests"), pod_amounts(spec, "limits")
    return {name: max(requests.get(name, Decimal(0)), limits.get(name, Decimal(0)))
            for name in set(requests) | set(limits)}


def pod_gpus(pod: Mapping[str, Any], grant: Grant) -> int:
    """GPUs of the granted resource this pod asked for (0 when the run has no GPU grant)."""
    if not grant.gpu or not grant.gpuResource:
        return 0
    return int(_taken(pod.get("spec") or {}).get(grant.gpuResource, Decimal(0)))


# The Kubernetes API: other objects in the run namespace ---------------------------------------------
def agent_may(grant: Grant, kind: str, verbs: Iterable[str] = WRITE_VERBS) -> bool:
    """Whether the agent's own RBAC (grant.kubernetesAPI) could have written an object of this kind."""
    group, resource = _RESOURCES.get(kind, ("", kind.lower() + "s"))
    wanted = set(verbs)
    for rule in grant.kubernetesAPI:
        groups = set(rule.apiGroups) or {""}
        if (group in groups or "*" in groups) and (resource in rule.resources or "*" in rule.resources) and \
                (wanted & set(rule.verbs)):
            return True
    return False


def _ours(obj: Mapping[str, Any], run_name: str) -> bool:
    found = (obj.get("metadata") or {}).get("labels") or {}
    # Long AgentRun names are shortened in label values (stockade.naming.label_value).
    managed = found.get(labels.MANAGED_BY) == labels.MANAGED_BY_VALUE
    return managed and found.get(labels.AGENTRUN) == label_value(run_name)


def _owner_kinds(obj: Mapping[str, Any]) -> set[str]:
    return {str(ref.get("kind")) for ref in (obj.get("metadata") or {}).get("ownerReferences") or []}


def judge_object(obj: Mapping[str, Any], spec: AgentRunSpec, run_name: str, at: str) -> Violation | None:
    """An object in the run namespace that the grant does not cover (or a guardrail someone edited)."""
    kind = str(obj.get("kind"))
    meta = obj.get("metadata") or {}
    name = str(meta.get("name"))
    if meta.get("deletionTimestamp"):
        return None
    evidence: dict[str, Any] = {"object": {"kind": kind, "name": name, "uid": meta.get("uid")}}
    if kind == "Service":
        body = obj.get("spec") or {}
        if not services.exposure(body) and services.granted(spec.grant):
            return None  # grant.kubernetesAPI names services: a ClusterIP or headless one is the agent's
        exposed = body.get("type") in ("NodePort", "LoadBalancer") or bool(body.get("externalIPs"))
        ports = [f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in body.get("ports") or []]
        evidence["service"] = {"type": body.get("type", "ClusterIP"), "ports": ports,
                               "selector": body.get("selector")}
        return violation("ServiceNotGranted",
                         f"Service {name} ({body.get('type', 'ClusterIP')}, ports {', '.join(ports) or 'none'}) "
                         "opens a way in that the grant does not give", "api", at,
                         severity="high" if exposed else None, evidence=evidence)
    if kind in WORKLOAD_KINDS:
        if kind == "Job" and spec.workload == "Job" and name == job_name(run_name) and _ours(obj, run_name):
            return None
        if _owner_kinds(obj) & _PARENTS.get(kind, set()):
            return None
        return violation("WorkloadNotGranted", f"{kind} {name} is a workload the grant does not give "
                         f"(the run's workload is its {spec.workload})", "api", at, evidence=evidence)
    if kind in GUARDRAIL_KINDS:
        if _ours(obj, run_name):
            return guardrail_edit(obj, at)
        if kind in _FOREIGN_GUARDRAILS:
            what, why = _FOREIGN_GUARDRAILS[kind]
            return violation(what, f"{kind} {name} was not made by Stockade and {why}", "api", at, evidence=evidence)
    return None


def guardrail_edit(obj: Mapping[str, Any], at: str) -> Violation | None:
    """A guardrail whose fields another manager has written (the reconciler restores it; this records it)."""
    meta = obj.get("metadata") or {}
    edits = [entry for entry in meta.get("managedFields") or []
             if entry.get("manager") != labels.FIELD_MANAGER and not entry.get("subresource")
             and entry.get("operation") in ("Update", "Apply")]
    if not edits:
        return None
    latest = max(edits, key=lambda e: str(e.get("time") or ""))
    return violation("GuardrailEdited",
                     f"{obj.get('kind')} {meta.get('name')} was changed by {latest.get('manager')!r} "
                     f"({latest.get('operation')} at {latest.get('time')})", "api", at,
                     evidence={"object": {"kind": obj.get("kind"), "name": meta.get("name"), "uid": meta.get("uid")},
                               "manager": latest.get("manager"), "operation": latest.get("operation"),
                               "editedAt": latest.get("time")})


def attributable(found: Violation, kind: str, grant: Grant) -> bool:
    """Whether the agent can have done this: pods are the agent's; other objects only if its RBAC lets it."""
    return found.pod is not None or agent_may(grant, kind)


# Usage metrics --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GpuSample:
    gpu: str
    util: float | None = None  # DCGM_FI_DEV_GPU_UTIL, percent
    memory_mib: float | None = None  # DCGM_FI_DEV_FB_USED, MiB


def judge_gpu(pod: Mapping[str, Any], samples: Iterable[GpuSample], grant: Grant, at: str, *,
              util_threshold: float = 0.0, memory_threshold_mib: float = 0.0) -> Violation | None:
    """GPU activity in a pod without a GPU grant, or on more GPUs than the pod (and the run) were granted."""
    by_gpu: dict[str, GpuSample] = {}
    for sample in samples:
        seen = by_gpu.get(sample.gpu, GpuSample(sample.gpu))
        by_gpu[sample.gpu] = GpuSample(sample.gpu, _most(seen.util, sample.util),
                                       _most(seen.memory_mib, sample.memory_mib))
    active = sorted(g for g, s in by_gpu.items()
                    if (s.util or 0) > util_threshold or (s.memory_mib or 0) > memory_threshold_mib)
    if not active:
        return None
    name = pod["metadata"]["name"]
    granted = min(pod_gpus(pod, grant), grant.gpu)
    readings = ", ".join(f"gpu {g}: {_fmt(by_gpu[g].util)}% util, {_fmt(by_gpu[g].memory_mib)} MiB" for g in active)
    evidence = {"gpus": {g: {"util": by_gpu[g].util, "memoryMiB": by_gpu[g].memory_mib} for g in active},
                "granted": granted}
    if granted == 0:
        return violation("GPUNotGranted", f"pod {name} is using {len(active)} GPU(s) without a GPU grant "
                         f"({readings})", "metrics", at, pod=name, evidence=evidence)
    if len(active) > granted:
        return violation("GPUsBeyondGrant", f"pod {name} is using {len(active)} GPUs, {granted} granted "
                         f"({readings})", "metrics", at, pod=name, evidence=evidence)
    return None


def judge_egress_rate(pod: str, bytes_per_second: float, limit: float, window: str, at: str) -> Violation | None:
    if limit <= 0 or bytes_per_second <= limit:
        return None
    return violation("EgressRateExceeded", f"pod {pod} sent {bytes_per_second:.0f} B/s over {window}, "
                     f"above the limit of {limit:.0f} B/s", "metrics", at, pod=pod,
                     evidence={"bytesPerSecond": bytes_per_second, "limit": limit, "window": window})


def _most(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _fmt(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"
