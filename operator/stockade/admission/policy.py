"""What may exist in a run namespace: pure admission decisions, the webhook's whole judgement.

The rule is an allowlist. A run namespace holds what the AgentRun's grant names and nothing else:

* compute: pods within the grant (``grantcheck``: fields, resources left, GPUs, runtime class,
  volumes, up to ``grant.pods`` of them) and the run's own workload, which only the operator
  creates. No other controller kind (Deployments, StatefulSets, DaemonSets, ReplicaSets,
  ReplicationControllers, CronJobs, Jobs of anyone else's) exists in a run namespace.
* ways in and out: ClusterIP and headless Services when ``grant.kubernetesAPI`` lets the agent
  create services (stockade.services), none otherwise; LoadBalancer, NodePort, ExternalName and
  external IPs never, refused by the ValidatingAdmissionPolicy as well, while the operator is down too.
* the fence itself (ServiceAccounts, quota, limits, NetworkPolicies, Roles, RoleBindings, the
  namespace, the quarantine label): changed by the operator only.
* inert data (ConfigMaps, Secrets, Leases, Endpoints, ...) and any other kind the grant's
  ``kubernetesAPI`` rules allow the agent to create. Every other kind is refused: a custom resource
  of some other operator could start compute anywhere, so it must be named to be allowed.

``enforcement: audit`` turns the grant's refusals into warnings. What no grant can allow
(privilege, host access, the fence, a frozen run) is refused in audit mode too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from stockade import apirules, kinds, labels, services
from stockade.admission.podusage import (
    TERMINAL_PHASES,
    Amounts,
    UsageTracker,
    add_usage,
    amounts_of,
    gpu_patch,
    mutate_pod,
    usage_of,
)
from stockade.api.models import AgentRunSpec, Grant
from stockade.grantcheck import Finding, Usage, check_pod
from stockade.services import allows_create as grant_allows_create

# The usage names are re-exported: the webhook's handlers and older import sites use them from here.
__all__ = [
    "ALLOW",
    "TERMINAL_PHASES",
    "Amounts",
    "Decision",
    "Request",
    "Run",
    "UsageTracker",
    "add_usage",
    "amounts_of",
    "decide",
    "gpu_patch",
    "grant_allows_create",
    "is_absolute",
    "mutate_pod",
    "usage_of",
]

Resource = tuple[str, str]  # (API group, plural)

POD: Resource = ("", "pods")
JOB: Resource = ("batch", "jobs")
SERVICE: Resource = ("", "services")
NAMESPACE: Resource = ("", "namespaces")
# Controllers no grant names, and the fence (stockade.kinds).
WORKLOADS: dict[Resource, str] = {kind.resource: kind.kind for kind in kinds.NEVER_GRANTED}
GUARDRAILS: dict[Resource, str] = {kind.resource: kind.kind for kind in kinds.GUARDRAILS}
# Data that starts nothing and opens nothing; the control plane writes some of it in every namespace.
INERT: set[Resource] = {kind.resource for kind in kinds.INERT}
# The control plane's own writes that the fence must let through.
SERVICE_ACCOUNT_CONTROLLER = "system:serviceaccount:kube-system:service-account-controller"
NAMESPACE_CONTROLLER = "system:serviceaccount:kube-system:namespace-controller"
# Findings that no grant can allow: refused in audit mode too.
ABSOLUTE = {"HostAccess", "PrivilegeNotAllowed", "GuardrailChange", "RunNamespaceChange", "QuarantineLabelChange",
            "UnknownRun", "Frozen", "TokenNotGranted", "APIRuleNotGrantable"}

Action = Literal["none", "denied", "warned"]


@dataclass(frozen=True)
class Request:
    """The parts of an AdmissionReview request that decisions use."""

    operation: str  # CREATE | UPDATE | DELETE | CONNECT
    group: str
    resource: str  # plural
    kind: str
    namespace: str
    name: str
    obj: Mapping[str, Any] | None
    old: Mapping[str, Any] | None
    username: str
    groups: tuple[str, ...] = ()
    subresource: str = ""

    @property
    def target(self) -> Resource:
        return (self.group, self.resource)

    @property
    def what(self) -> str:
        name = self.name or ((self.obj or {}).get("metadata") or {}).get("generateName", "")
        return f"{self.kind} {name}".strip() if not self.subresource else \
            f"{self.kind} {self.name} ({self.subresource})"


@dataclass(frozen=True)
class Run:
    """The AgentRun a run namespace belongs to, as the operator's store last saw it."""

    namespace: str
    name: str
    spec: AgentRunSpec
    status: Mapping[str, Any] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)  # the run's other pods (see ``usage_of``)
    namespace_terminating: bool = False

    @property
    def audit(self) -> bool:
        return self.spec.enforcement == "audit"

    @property
    def frozen(self) -> bool:
        quarantine = self.status.get("quarantine") or {}
        return bool(quarantine.get("active")) and "freeze" in (quarantine.get("steps") or [])


@dataclass(frozen=True)
class Decision:
    allowed: bool
    message: str = ""
    warnings: tuple[str, ...] = ()
    findings: tuple[Finding, ...] = ()
    action: Action = "none"  # what to record: nothing, a refusal, or an audit-mode warning

    @property
    def kind(self) -> str:
        return self.findings[0].kind if self.findings else "Allowed"


ALLOW = Decision(True)


def decide(req: Request, run: Run | None, *, is_operator: bool) -> Decision:
    """Allow, refuse or (audit mode) warn about one request in a run namespace."""
    if is_operator:
        return ALLOW  # the operator builds the fence; the webhook configuration does not even send these
    if run is None:
        if req.operation == "DELETE":
            return ALLOW  # a namespace whose AgentRun is gone is being emptied
        return _refuse(req, None, [Finding(
            "UnknownRun", "metadata.namespace",
            f"Stockade knows no AgentRun for namespace {req.namespace or req.name} (it may be starting, "
            "or the AgentRun is being deleted)", "nothing until the AgentRun is known", "retry in a moment")])
    findings = _findings(req, run)
    if not findings:
        return ALLOW
    absolute = [f for f in findings if is_absolute(f)]
    if run.audit and not absolute:
        return Decision(True, warnings=tuple(_warning(f) for f in findings), findings=tuple(findings),
                        action="warned")
    return _refuse(req, run, findings)


def is_absolute(finding: Finding) -> bool:
    return finding.kind in ABSOLUTE or finding.field.endswith(".hostPath")


def _refuse(req: Request, run: Run | None, findings: Sequence[Finding]) -> Decision:
    where = f"run namespace {req.namespace or req.name}"
    if run is not None:
        where += f" of AgentRun {run.namespace}/{run.name}"
    message = f"Stockade refused {req.operation} of {req.what} in {where}: " + " | ".join(f.text() for f in findings)
    return Decision(False, message, findings=tuple(findings), action="denied")


def _warning(finding: Finding) -> str:
    # The API server truncates long warnings; the field and the grant come first.
    text = f"stockade audit (would be refused): {finding.text()}"
    return text if len(text) <= 250 else text[:247] + "..."


def _findings(req: Request, run: Run) -> list[Finding]:
    if req.operation == "CREATE" and run.frozen:
        return [Finding("Frozen", "metadata.namespace", "the run is quarantined and frozen: nothing new may be "
                        "created in its namespace", "nothing while frozen",
                        "release the quarantine (kubectl stockade release) to lift the freeze")]
    target = req.target
    if target == NAMESPACE:
        return _namespace(req, run)
    if target in GUARDRAILS:
        return _guardrail(req, run)
    if target == POD:
        return _pod(req, run)
    if target == JOB:
        return _job(req, run)
    if target in WORKLOADS:
        return _workload(req)
    if target == SERVICE:
        return _service(req, run.spec.grant)
    if req.operation != "CREATE":
        return []
    return _other_kind(req, run.spec.grant)


# The fence ---------------------------------------------------------------------------------------------
def _namespace(req: Request, run: Run) -> list[Finding]:
    if req.operation not in ("UPDATE", "DELETE"):
        return []
    # Its labels select this webhook and the policies: whoever could relabel it could lift the fence.
    return [Finding("RunNamespaceChange", "metadata", "the run namespace (its labels, PodSecurity level and "
                    "lifetime) is managed by Stockade only", "no changes by anyone but the operator",
                    f"change or delete the AgentRun {run.namespace}/{run.name} instead")]


def _guardrail(req: Request, run: Run) -> list[Finding]:
    kind = GUARDRAILS[req.target]
    if req.operation == "DELETE" and (run.namespace_terminating or req.username == NAMESPACE_CONTROLLER):
        return []
    if req.operation == "CREATE" and req.target == ("", "serviceaccounts") and req.name == "default" \
            and req.username == SERVICE_ACCOUNT_CONTROLLER:
        return []  # every namespace gets one; agent pods may not use it (grantcheck)
    if req.operation not in ("CREATE", "UPDATE", "DELETE"):
        return []
    return [Finding("GuardrailChange", f"{kind} {req.name}".strip(),
                    f"{kind}s in a run namespace are the fence: only the Stockade operator creates, changes "
                    "or deletes them", "no changes by anyone but the operator",
                    f"change spec.grant on the AgentRun {run.namespace}/{run.name} and Stockade updates the fence"),
            *_role_rules(req)]


def _role_rules(req: Request) -> list[Finding]:
    """Never-grantable rules in a Role, named (the same table the CRD and the reconciler use).

    The ValidatingAdmissionPolicy ``stockade-baseline`` refuses every Role write by anyone but the
    operator before this webhook is asked; this names the rules where that policy is not installed."""
    if req.target != ("rbac.authorization.k8s.io", "roles") or req.operation not in ("CREATE", "UPDATE"):
        return []
    rules = (req.obj or {}).get("rules")
    return [Finding("APIRuleNotGrantable", field, message, "namespaced rules of the run's own resources")
            for field, message in apirules.rules_findings(rules if isinstance(rules, list) else [], "rules")]


# Compute ----------------------------------------------------------------------------------------------
def _pod(req: Request, run: Run) -> list[Finding]:
    grant = run.spec.grant
    if req.subresource == "ephemeralcontainers":
        return [Finding("EphemeralContainerNotGranted", "spec.ephemeralContainers",
                        "debug containers would run unchecked code inside the agent's pod", "none",
                        "start a new pod within spec.grant.pods instead")]
    if req.operation not in ("CREATE", "UPDATE") or req.obj is None:
        return []
    findings = _quarantine_label(req)
    if req.subresource not in ("", "resize"):
        return findings
    new = _pod_findings(req.obj, grant, run.usage)
    if req.operation == "UPDATE" and req.old is not None:
        # An update may not add anything the pod did not already have: fields the control plane
        # sets after creation (nodeName) and the pod's own share of the usage stay as they were.
        before = {(f.kind, f.field) for f in _pod_findings(req.old, grant, run.usage)}
        new = [f for f in new if (f.kind, f.field) not in before]
    return findings + new


def _pod_findings(pod: Mapping[str, Any], grant: Grant, usage: Usage) -> list[Finding]:
    # The very check the operator applies to the workload it creates (grantcheck.check_pod).
    return check_pod(pod, grant, usage=usage)


def _quarantine_label(req: Request) -> list[Finding]:
    new = (_meta(req.obj).get("labels") or {}).get(labels.QUARANTINED)
    old = (_meta(req.old).get("labels") or {}).get(labels.QUARANTINED) if req.old is not None else None
    if new == old:
        return []
    return [Finding("QuarantineLabelChange", f"metadata.labels[{labels.QUARANTINED}]",
                    "the quarantine label is set and removed by the Stockade operator only",
                    "no changes by anyone but the operator", "release the run with kubectl stockade release")]


def _job(req: Request, run: Run) -> list[Finding]:
    if req.operation == "UPDATE" and req.old is not None and \
            (req.obj or {}).get("spec") == (req.old or {}).get("spec"):
        return []  # labels, annotations and finalizers
    if req.operation not in ("CREATE", "UPDATE"):
        return []
    findings = [Finding("WorkloadNotGranted", "kind", "a Job in a run namespace is the run's own workload, "
                        "which only Stockade creates and changes",
                        f"the AgentRun's workload (spec.workload: {run.spec.workload}) and up to "
                        f"{run.spec.grant.pods} pod(s)",
                        "run more work as pods within spec.grant.pods, or set spec.workload: Job on the AgentRun")]
    template = (((req.obj or {}).get("spec") or {}).get("template") or {})
    # The Job's pods meet the mutating webhook (which hides GPUs) only when they are created.
    return findings + check_pod(template, run.spec.grant, path="spec.template", require_hidden_gpus=False)


def _workload(req: Request) -> list[Finding]:
    if req.operation not in ("CREATE", "UPDATE"):
        return []
    kind = WORKLOADS[req.target]
    return [Finding("WorkloadNotGranted", "kind", f"a grant never names {kind}s: a controller that makes pods "
                    "of its own is compute the AgentRun did not ask for",
                    "the AgentRun's workload and up to spec.grant.pods pods",
                    "raise spec.grant.pods on the AgentRun and create Pods instead")]


# Ways in and out -------------------------------------------------------------------------------------
def _service(req: Request, grant: Grant) -> list[Finding]:
    if req.operation not in ("CREATE", "UPDATE"):
        return []
    hint = "a grant cannot open the run to outside traffic"
    out = [Finding("ServiceNotGranted", field, why, "ClusterIP and headless Services only", hint)
           for field, why in services.exposure((req.obj or {}).get("spec") or {})]
    if req.operation == "CREATE" and not services.granted(grant):
        # Without the grant a Service is only a way in waiting for a hole (detection reports any
        # Service in a run namespace as ServiceNotGranted too).
        out.insert(0, Finding("ServiceNotGranted", "kind", "a Service is a way in, and the grant does not name "
                              "services", "no Services in a run namespace", "add a rule for services with verb "
                              "create to spec.grant.kubernetesAPI (ClusterIP and headless Services only)"))
    return out


# Everything else ----------------------------------------------------------------------------------------
def _other_kind(req: Request, grant: Grant) -> list[Finding]:
    if req.target == ("", "secrets") and (req.obj or {}).get("type") == "kubernetes.io/service-account-token":
        return [Finding("TokenNotGranted", "type", "a ServiceAccount token Secret mints a long-lived API "
                        "credential", "the agent's projected token when spec.grant.kubernetesAPI is set",
                        "grant API access with spec.grant.kubernetesAPI")]
    if req.target in INERT or grant_allows_create(grant, req.group, req.resource):
        return []
    group = req.group or "core"
    return [Finding("KindNotGranted", "kind", f"{req.kind} ({req.resource}.{group}) is not something the grant "
                    "names", "pods, the run's workload, ConfigMaps, Secrets and what spec.grant.kubernetesAPI "
                    "allows the agent to create",
                    f"add a rule for {req.resource} in group {req.group!r} with verb create to "
                    "spec.grant.kubernetesAPI")]


def _meta(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return (obj or {}).get("metadata") or {}
