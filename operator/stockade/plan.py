"""spec -> desired objects. Pure builders: each returns a manifest dict, nothing here talks to the API.

The reconciler applies the guardrails first (namespace, then the rest) and the workload only once
every guardrail exists, so an agent never runs outside its fence.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stockade import apirules, labels, podshape
from stockade.api.models import AgentRunSpec, EgressRule, Grant
from stockade.grantcheck import Finding, check_pod
from stockade.harden import harden_pod_spec
from stockade.naming import job_name, label_value, run_namespace_name
from stockade.quantity import format_bytes, format_cpu, parse_quantity
from stockade.quantity import parse_duration as parse_duration  # noqa: PLC0414 (re-exported for the reconciler)


@dataclass(frozen=True)
class PlanSettings:
    """Cluster facts the plan depends on (from the operator's configuration)."""

    dns_namespace: str = "kube-system"
    dns_pod_labels: Mapping[str, str] = field(default_factory=lambda: {"k8s-app": "kube-dns"})
    # GPU resources set to zero in every quota unless granted; admission refuses any other
    # extended resource anyway, this makes the quota say so too.
    gpu_resources: tuple[str, ...] = ("nvidia.com/gpu", "amd.com/gpu")
    default_cpu_limit: str = "1"
    default_memory_limit: str = "1Gi"
    default_ephemeral_limit: str = "1Gi"
    default_cpu_request: str = "100m"
    default_memory_request: str = "256Mi"
    default_ephemeral_request: str = "256Mi"


@dataclass(frozen=True)
class RunRef:
    """Which AgentRun the objects belong to."""

    namespace: str
    name: str
    uid: str = ""
    # The run namespace the reconciler chose (status.runNamespace); the readable default until then.
    chosen_namespace: str = ""

    @property
    def run_namespace(self) -> str:
        return self.chosen_namespace or run_namespace_name(self.namespace, self.name)

    def workload_name(self, kind: str) -> str:
        return job_name(self.name) if kind == "Job" else self.name

    def labels(self) -> dict[str, str]:
        return {
            labels.AGENTRUN: label_value(self.name),
            labels.AGENTRUN_NAMESPACE: self.namespace,
            labels.MANAGED_BY: labels.MANAGED_BY_VALUE,
        }


@dataclass(frozen=True)
class Plan:
    guardrails: list[dict[str, Any]]
    workload: dict[str, Any] | None
    refusals: list[Finding]

    @property
    def namespace(self) -> dict[str, Any]:
        return self.guardrails[0]


def _meta(run: RunRef, name: str, component: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": run.run_namespace,
        "labels": {**run.labels(), labels.COMPONENT: component},
    }


def namespace(run: RunRef, enforcement: str = "enforce") -> dict[str, Any]:
    ns_labels = {**run.labels(), **labels.POD_SECURITY, labels.ENFORCEMENT: enforcement}
    if run.uid:
        ns_labels[labels.AGENTRUN_UID] = run.uid
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": run.run_namespace, "labels": ns_labels}}


def service_account(run: RunRef, grant: Grant) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(run, labels.SERVICE_ACCOUNT, "identity"),
        "automountServiceAccountToken": bool(grant.kubernetesAPI),
    }


def role(run: RunRef, grant: Grant) -> dict[str, Any]:
    rules = []
    for rule in grant.kubernetesAPI:
        item: dict[str, Any] = {"apiGroups": list(rule.apiGroups), "resources": list(rule.resources),
                                "verbs": list(rule.verbs)}
        if rule.resourceNames:
            item["resourceNames"] = list(rule.resourceNames)
        rules.append(item)
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": _meta(run, labels.ROLE, "identity"), "rules": rules}


def role_binding(run: RunRef) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(run, labels.ROLE_BINDING, "identity"),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": labels.ROLE},
        "subjects": [{"kind": "ServiceAccount", "name": labels.SERVICE_ACCOUNT, "namespace": run.run_namespace}],
    }


def _canonical(name: str, value: str) -> str:
    amount = parse_quantity(value)
    return format_cpu(amount) if name == "cpu" else format_bytes(amount)


def resource_quota(run: RunRef, spec: AgentRunSpec, settings: PlanSettings) -> dict[str, Any]:
    grant = spec.grant
    hard: dict[str, str] = {}
    for name, value in (("cpu", grant.cpu), ("memory", grant.memory), ("ephemeral-storage", grant.ephemeralStorage)):
        canonical = _canonical(name, value)
        hard[f"requests.{name}"] = canonical
        hard[f"limits.{name}"] = canonical
    for gpu in settings.gpu_resources:
        hard[f"requests.{gpu}"] = "0"
    if grant.gpuResource:
        hard[f"requests.{grant.gpuResource}"] = str(grant.gpu)
    hard["pods"] = str(grant.pods)
    # Ways in and out, storage and compute the grant never names: zero.
    for key in ("services.loadbalancers", "services.nodeports", "persistentvolumeclaims", "requests.storage",
                "replicationcontrollers", "count/deployments.apps", "count/replicasets.apps",
                "count/statefulsets.apps", "count/daemonsets.apps", "count/cronjobs.batch"):
        hard[key] = "0"
    hard["count/jobs.batch"] = "1" if spec.workload == "Job" else "0"
    return {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": _meta(run, labels.QUOTA, "quota"),
            "spec": {"hard": dict(sorted(hard.items()))}}


def _at_most(name: str, preferred: str, granted: str) -> str:
    return _canonical(name, preferred if parse_quantity(preferred) <= parse_quantity(granted) else granted)


def limit_range(run: RunRef, grant: Grant, settings: PlanSettings) -> dict[str, Any]:
    granted = {"cpu": grant.cpu, "memory": grant.memory, "ephemeral-storage": grant.ephemeralStorage}
    limits = {"cpu": settings.default_cpu_limit, "memory": settings.default_memory_limit,
              "ephemeral-storage": settings.default_ephemeral_limit}
    requests = {"cpu": settings.default_cpu_request, "memory": settings.default_memory_request,
                "ephemeral-storage": settings.default_ephemeral_request}
    maximum = {name: _canonical(name, value) for name, value in granted.items()}
    return {
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": _meta(run, labels.LIMIT_RANGE, "limits"),
        "spec": {
            "limits": [
                {
                    "type": "Container",
                    "default": {n: _at_most(n, limits[n], granted[n]) for n in granted},
                    "defaultRequest": {n: _at_most(n, requests[n], granted[n]) for n in granted},
                    "max": maximum,
                },
                {"type": "Pod", "max": maximum},
            ]
        },
    }


def _not_quarantined() -> dict[str, Any]:
    # Allow policies never select a quarantined pod, so only the deny-all policy applies to it.
    # DoesNotExist rather than NotIn [true]: same meaning in Kubernetes, and some policy evaluators
    # get NotIn wrong for pods without the key.
    return {"matchExpressions": [{"key": labels.QUARANTINED, "operator": "DoesNotExist"}]}


def address_order(address: str) -> tuple[int, bytes]:
    """IPv4 before IPv6, then numerically: a stable order, so an unchanged answer changes no policy."""
    ip = ipaddress.ip_address(address)
    return ip.version, ip.packed


def _peer_blocks(rule: EgressRule, resolved: Mapping[str, list[str]]) -> list[dict[str, Any]]:
    if rule.cidr:
        network = ipaddress.ip_network(rule.cidr, strict=False)
        return [{"ipBlock": {"cidr": str(network)}}]
    blocks = []
    for address in sorted(resolved.get(rule.host or "", []), key=address_order):
        ip = ipaddress.ip_address(address)
        blocks.append({"ipBlock": {"cidr": f"{ip}/{ip.max_prefixlen}"}})
    return blocks


def deny_all_policy(run: RunRef) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(run, labels.POLICY_DENY_ALL, "network"),
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    }


def egress_policy(run: RunRef, grant: Grant, resolved: Mapping[str, list[str]]) -> dict[str, Any]:
    rules = []
    for rule in grant.egress:
        peers = _peer_blocks(rule, resolved)
        if not peers:
            continue  # an empty "to" would mean every destination: an unresolved host allows nothing
        ports = [{"protocol": rule.protocol, "port": port} for port in rule.ports]
        rules.append({"to": peers, "ports": ports})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(run, labels.POLICY_EGRESS, "network"),
        "spec": {"podSelector": _not_quarantined(), "policyTypes": ["Egress"], "egress": rules},
    }


def dns_policy(run: RunRef, settings: PlanSettings) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(run, labels.POLICY_DNS, "network"),
        "spec": {
            "podSelector": _not_quarantined(),
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": settings.dns_namespace}
                            },
                            "podSelector": {"matchLabels": dict(settings.dns_pod_labels)},
                        }
                    ],
                    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                }
            ],
        },
    }


def pod_to_pod_policy(run: RunRef) -> dict[str, Any]:
    """grant.podToPod: the run's non-quarantined pods reach each other (any port), both ways. A peer
    without a namespaceSelector is a pod of this namespace, and only the run's pods live there."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(run, labels.POLICY_POD_TO_POD, "network"),
        "spec": {"podSelector": _not_quarantined(), "policyTypes": ["Ingress", "Egress"],
                 "ingress": [{"from": [{"podSelector": _not_quarantined()}]}],
                 "egress": [{"to": [{"podSelector": _not_quarantined()}]}]},
    }


def _fill_limits(spec: dict[str, Any]) -> None:
    """A container with a request but no limit gets limit = request, so the LimitRange default limit
    can never fall below its request (which the API server would refuse)."""
    for key in ("initContainers", "containers"):
        for container in spec.get(key) or []:
            resources = container.setdefault("resources", {})
            requests = resources.get("requests") or {}
            limits = resources.setdefault("limits", {})
            for name, value in requests.items():
                limits.setdefault(name, value)


def pod_spec(spec: AgentRunSpec) -> dict[str, Any]:
    hardened = harden_pod_spec((spec.template.get("spec") or {}), spec.grant)
    _fill_limits(hardened)
    if spec.grant.duration:
        seconds = int(parse_duration(spec.grant.duration)) or 1
        current = hardened.get("activeDeadlineSeconds")
        hardened["activeDeadlineSeconds"] = min(current, seconds) if current else seconds
    return hardened


def workload(run: RunRef, spec: AgentRunSpec) -> dict[str, Any]:
    template_meta = spec.template.get("metadata") or {}
    pod_labels = {**(template_meta.get("labels") or {}), **run.labels(), labels.COMPONENT: "agent"}
    pod_meta: dict[str, Any] = {"labels": pod_labels}
    if template_meta.get("annotations"):
        pod_meta["annotations"] = dict(template_meta["annotations"])
    body = pod_spec(spec)
    if spec.workload == "Job":
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": _meta(run, run.workload_name("Job"), "agent"),
            "spec": {"backoffLimit": 0, "template": {"metadata": pod_meta, "spec": body}},
        }
    meta = _meta(run, run.name, "agent")
    meta["labels"] = {**pod_labels}
    if "annotations" in pod_meta:
        meta["annotations"] = pod_meta["annotations"]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": body}


def build(
    run: RunRef, spec: AgentRunSpec, resolved: Mapping[str, list[str]], settings: PlanSettings, *, frozen: bool = False
) -> Plan:
    """Everything the run should have, in the order it must be applied.

    A frozen run (quarantine rung "freeze") keeps its fence but loses its API access: no Role or
    RoleBinding, whatever the grant says, until it is released.
    """
    grant = spec.grant
    guardrails = [
        namespace(run, spec.enforcement),
        service_account(run, grant),
        resource_quota(run, spec, settings),
        limit_range(run, grant, settings),
        deny_all_policy(run),
        egress_policy(run, grant, resolved),
    ]
    if grant.dns:
        guardrails.append(dns_policy(run, settings))
    if grant.podToPod:
        guardrails.append(pod_to_pod_policy(run))
    not_grantable = api_rule_findings(grant)
    if grant.kubernetesAPI and not frozen and not not_grantable:
        guardrails += [role(run, grant), role_binding(run)]
    shape = podshape.template_findings(spec.template)
    if shape:  # nothing to harden or check: the template is not a pod (the CRD schema refuses this too)
        refusals = not_grantable + [Finding("InvalidField", f, m, "the Kubernetes type of the field") for f, m in shape]
        return Plan(guardrails=guardrails, workload=None, refusals=refusals)
    desired = workload(run, spec)
    pod = desired["spec"]["template"] if desired["kind"] == "Job" else desired
    # The webhook's own check of a pod an agent creates, metadata included (the operator's pods skip the webhook).
    refusals = not_grantable + check_pod(pod, grant, path="spec.template")
    return Plan(guardrails=guardrails, workload=None if refusals else desired, refusals=refusals)


def api_rule_findings(grant: Grant) -> list[Finding]:
    """Rules of grant.kubernetesAPI that are never grantable (the CRD refuses them; a Role never carries them)."""
    rules = [rule.model_dump(exclude_none=True) for rule in grant.kubernetesAPI]
    return [Finding("APIRuleNotGrantable", field, message, "namespaced rules of the run's own resources",
                    "remove the rule from spec.grant.kubernetesAPI")
            for field, message in apirules.rules_findings(rules, "spec.grant.kubernetesAPI")]

