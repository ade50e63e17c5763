"""The rules that hold while the operator is down: ValidatingAdmissionPolicies, evaluated in the API server.

Pure manifest builders. The operator applies them at startup (``make run`` gets them); the chart
ships the same objects, rendered by ``stockade admission-manifests``; the e2e suite applies them
exactly as shipped. They hold only what no grant can change, so they need no AgentRun:

* ``stockade-baseline``: privileged containers, host namespaces, hostPath volumes, added
  capabilities and host ports, in pods and in every pod template; and the fence itself
  (ServiceAccounts, quota, limits, NetworkPolicies, Roles, RoleBindings) changed by anyone but
  the operator. Always Deny, audit mode included.
* ``stockade-run-namespace``: the run namespace's own labels select every layer here, so only
  the operator may change or delete it.
* ``stockade-grant``: controller kinds that a grant never names (Deployments, StatefulSets,
  DaemonSets, ReplicaSets, ReplicationControllers, CronJobs) and Services of any type but
  ClusterIP or with external IPs. Deny, or Warn and Audit where the reconciler labelled the
  namespace ``stockade.io/enforcement=audit``.
* ``stockade-operator-confinement``: the other way round, the operator's own ServiceAccount may not
  create, change or delete pods, Jobs or fence objects in any namespace that is not a run namespace
  (kube-system and its own included). Its ClusterRole must hold those verbs cluster-wide, since RBAC
  cannot select namespaces by label and run namespaces come and go; this makes the API server refuse
  the rest, so a bug in the operator (a name from a signal, say) cannot act outside the runs.

PodSecurity ``restricted`` covers most of the baseline for pods too; these also cover pod
templates (PodSecurity only warns about those) and are Stockade's own, not a label someone flips.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from stockade import kinds, labels

API_VERSION = "admissionregistration.k8s.io/v1"
ENFORCEMENT = labels.ENFORCEMENT  # namespace label: "enforce" or "audit" (set by the reconciler)
SYSTEM_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")
SERVICE_ACCOUNT_CONTROLLER = "system:serviceaccount:kube-system:service-account-controller"
NAMESPACE_CONTROLLER = "system:serviceaccount:kube-system:namespace-controller"

# From the table of kinds (stockade.kinds): what makes pods, the controllers no grant names, the fence.
WORKLOAD_RULES = kinds.rules(kinds.MAKES_PODS)
POD_KINDS = tuple(plural for _, plurals in WORKLOAD_RULES for plural in plurals)
WORKLOAD_KINDS = tuple(kind.plural for kind in kinds.NEVER_GRANTED)
GUARDRAIL_RULES = kinds.rules(kinds.GUARDRAILS)
GUARDRAIL_KINDS = [plural for _, plurals in GUARDRAIL_RULES for plural in plurals]
# What stockade-grant judges: those controllers, and Services by their type.
GRANT_RULES = kinds.rules((*kinds.NEVER_GRANTED, *kinds.EXPOSING))
COMMON_LABELS = {"app.kubernetes.io/name": "stockade", "app.kubernetes.io/component": "admission"}
# What the operator writes in run namespaces, and nowhere else (operator/stockade/rbac.py): the workload,
# a quarantined pod's label and its eviction, and the fence. Events (on AgentRuns, in team namespaces),
# AgentRuns and cluster-scoped objects are written elsewhere and are not listed.
CONFINED_RULES = kinds.rules((kind for kind in kinds.KINDS if kind.run_workload or kind.guardrail),
                             lambda kind: (kind.plural, f"{kind.plural}/*") if kind.run_workload else (kind.plural,))
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"


def cel_string(text: str) -> str:
    """A CEL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def cel_list(items: Sequence[str]) -> str:
    return "[" + ", ".join(cel_string(item) for item in items) + "]"


def not_operator(usernames: Sequence[str], exempt_groups: Sequence[str] = ()) -> dict[str, str]:
    """The operator builds the fence: its requests are never evaluated (nor sent to the webhook).
    Members of ``exempt_groups`` (break-glass, empty by default) pass too; the reconciler still puts
    back whatever they change in the fence."""
    operator = f"request.userInfo.username in {cel_list(sorted(set(usernames)))}"
    if not exempt_groups:
        return {"name": "not-the-stockade-operator", "expression": f"!({operator})"}
    groups = f"request.userInfo.groups.exists(g, g in {cel_list(sorted(set(exempt_groups)))})"
    return {"name": "not-the-stockade-operator", "expression": f"!({operator} || {groups})"}


def run_namespaces(excluded: Sequence[str] = ()) -> dict[str, Any]:
    """Run namespaces only; the control plane's and the operator's own never, whatever their labels."""
    return {"matchExpressions": [
        {"key": labels.AGENTRUN, "operator": "Exists"},
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
         "values": sorted({*SYSTEM_NAMESPACES, *excluded})},
    ]}


def _rules(groups: list[tuple[str, list[str]]], operations: list[str]) -> list[dict[str, Any]]:
    return [{"apiGroups": [group], "apiVersions": ["*"], "resources": plurals, "operations": operations,
             "scope": "Namespaced"} for group, plurals in groups]


def _meta(name: str) -> dict[str, Any]:
    return {"name": name, "labels": dict(COMMON_LABELS)}


def _check(expression: str, message: str, field: str | None = None) -> dict[str, Any]:
    check: dict[str, Any] = {"expression": expression, "message": f"Stockade: {message}", "reason": "Forbidden"}
    if field:
        check["messageExpression"] = f"{cel_string(f'Stockade: {message} (')} + {field} + ')'"
    return check


def _where() -> str:
    # The field path for messages: where the pod spec sits in this kind.
    return ("request.resource.resource == 'pods' ? 'spec' : request.resource.resource == 'cronjobs' ? "
            "'spec.jobTemplate.spec.template.spec' : 'spec.template.spec'")


def baseline_policy(usernames: Sequence[str], excluded: Sequence[str] = (),
                    exempt_groups: Sequence[str] = ()) -> dict[str, Any]:
    absent_or_false = "!has({0}) || {0} == false"
    guardrail_exempt = (
        "(request.operation == 'DELETE' && (has(namespaceObject.metadata.deletionTimestamp) || "
        f"request.userInfo.username == {cel_string(NAMESPACE_CONTROLLER)})) || "
        "(request.operation == 'CREATE' && request.resource.resource == 'serviceaccounts' && "
        f"object.metadata.name == 'default' && request.userInfo.username == {cel_string(SERVICE_ACCOUNT_CONTROLLER)})"
    )
    return {
        "apiVersion": API_VERSION,
        "kind": "ValidatingAdmissionPolicy",
        "metadata": _meta("stockade-baseline"),
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "namespaceSelector": run_namespaces(excluded),
                "resourceRules": _rules(WORKLOAD_RULES, ["CREATE", "UPDATE"])
                + _rules(GUARDRAIL_RULES, ["CREATE", "UPDATE", "DELETE"]),
            },
            "matchConditions": [not_operator(usernames, exempt_groups)],
            "variables": [
                {"name": "workload", "expression": f"request.resource.resource in {cel_list(POD_KINDS)}"},
                {"name": "guardrail", "expression": f"request.resource.resource in {cel_list(GUARDRAIL_KINDS)}"},
                {"name": "where", "expression": _where()},
                {"name": "spec", "expression": (
                    "request.resource.resource == 'pods' ? object.spec : "
                    "request.resource.resource == 'cronjobs' ? object.spec.jobTemplate.spec.template.spec : "
                    "object.spec.template.spec")},
                {"name": "containers", "expression": (
                    "variables.spec.containers"
                    " + (has(variables.spec.initContainers) ? variables.spec.initContainers : [])"
                    " + (has(variables.spec.ephemeralContainers) ? variables.spec.ephemeralContainers : [])")},
            ],
            "validations": [
                _check("!variables.workload || variables.containers.all(c, !has(c.securityContext) || "
                       + absent_or_false.format("c.securityContext.privileged") + ")",
                       "privileged containers are never granted in a run namespace",
                       "variables.where + '.containers[*].securityContext.privileged'"),
                _check("!variables.workload || ((" + absent_or_false.format("variables.spec.hostNetwork")
                       + ") && (" + absent_or_false.format("variables.spec.hostPID")
                       + ") && (" + absent_or_false.format("variables.spec.hostIPC") + "))",
                       "host namespaces are never granted in a run namespace",
                       "variables.where + '.hostNetwork, hostPID, hostIPC'"),
                _check("!variables.workload || !has(variables.spec.volumes) || "
                       "variables.spec.volumes.all(v, !has(v.hostPath))",
                       "hostPath volumes are never granted in a run namespace",
                       "variables.where + '.volumes[*].hostPath'"),
                _check("!variables.workload || variables.containers.all(c, !has(c.securityContext) || "
                       "!has(c.securityContext.capabilities) || !has(c.securityContext.capabilities.add) || "
                       "size(c.securityContext.capabilities.add) == 0)",
                       "added capabilities are never granted in a run namespace",
                       "variables.where + '.containers[*].securityContext.capabilities.add'"),
                _check("!variables.workload || variables.containers.all(c, !has(c.ports) || "
                       "c.ports.all(p, !has(p.hostPort) || p.hostPort == 0))",
                       "host ports are never granted in a run namespace",
                       "variables.where + '.containers[*].ports[*].hostPort'"),
                _check(f"!variables.guardrail || {guardrail_exempt}",
                       "the run's guardrails are part of its fence: only the Stockade operator creates, changes or "
                       "deletes them; change spec.grant on the AgentRun instead",
                       "request.kind.kind + ' ' + request.name"),
            ],
        },
    }


def run_namespace_policy(usernames: Sequence[str], excluded: Sequence[str] = (),
                         exempt_groups: Sequence[str] = ()) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ValidatingAdmissionPolicy",
        "metadata": _meta("stockade-run-namespace"),
        "spec": {
            "failurePolicy": "Fail",
            # An objectSelector matches the old object too, so removing the label is caught.
            "matchConstraints": {
                "objectSelector": {"matchExpressions": [{"key": labels.AGENTRUN, "operator": "Exists"}]},
                "namespaceSelector": {"matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                     "values": sorted({*SYSTEM_NAMESPACES, *excluded})}]},
                # CREATE too: a namespace made in advance with a run's labels (its uid included) would be a
                # squatter the operator could take for the run's own.
                "resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["namespaces"],
                                   "operations": ["CREATE", "UPDATE", "DELETE"], "scope": "Cluster"}],
            },
            "matchConditions": [not_operator(usernames, exempt_groups)],
            "validations": [_check(
                "false", "a run namespace is managed by Stockade only: its labels select the fence; change or "
                "delete its AgentRun instead", "'namespace ' + request.name")],
        },
    }


def grant_policy(usernames: Sequence[str], excluded: Sequence[str] = (),
                 exempt_groups: Sequence[str] = ()) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ValidatingAdmissionPolicy",
        "metadata": _meta("stockade-grant"),
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "namespaceSelector": run_namespaces(excluded),
                "resourceRules": _rules(GRANT_RULES, ["CREATE", "UPDATE"]),
            },
            "matchConditions": [not_operator(usernames, exempt_groups)],
            "validations": [
                _check(f"!(request.resource.resource in {cel_list(WORKLOAD_KINDS)})",
                       "a grant never names this kind: agents get compute only as their workload and up to "
                       "spec.grant.pods pods; raise spec.grant.pods on the AgentRun and create Pods instead",
                       "request.kind.kind"),
                _check("request.resource.resource != 'services' || !has(object.spec.type) || "
                       "object.spec.type == 'ClusterIP'",
                       "only ClusterIP Services are allowed in a run namespace: a grant cannot open the run to "
                       "outside traffic", "'spec.type ' + object.spec.type"),
                _check("request.resource.resource != 'services' || !has(object.spec.externalIPs) || "
                       "size(object.spec.externalIPs) == 0",
                       "Services with external IPs are never allowed in a run namespace", "'spec.externalIPs'"),
            ],
        },
    }


def operator_confinement_policy(usernames: Sequence[str]) -> dict[str, Any]:
    """The operator's identities may write the kinds it manages only in run namespaces."""
    return {
        "apiVersion": API_VERSION,
        "kind": "ValidatingAdmissionPolicy",
        "metadata": _meta("stockade-operator-confinement"),
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "namespaceSelector": {"matchExpressions": [{"key": labels.AGENTRUN, "operator": "DoesNotExist"}]},
                "resourceRules": _rules(CONFINED_RULES, ["CREATE", "UPDATE", "DELETE"]),
            },
            "matchConditions": [{"name": "the-stockade-operator",
                                 "expression": f"request.userInfo.username in {cel_list(sorted(set(usernames)))}"}],
            "validations": [_check(
                "false", "the Stockade operator acts on pods, Jobs and fences only in run namespaces (labelled "
                f"{labels.AGENTRUN}); this namespace is not one",
                "request.kind.kind + ' ' + request.namespace + '/' + request.name")],
        },
    }


def binding(name: str, policy: str, actions: list[str], selector: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"policyName": policy, "validationActions": actions}
    if selector is not None:
        spec["matchResources"] = {"namespaceSelector": selector}
    return {"apiVersion": API_VERSION, "kind": "ValidatingAdmissionPolicyBinding", "metadata": _meta(name),
            "spec": spec}


def manifests(usernames: Sequence[str], excluded: Sequence[str] = (),
              exempt_groups: Sequence[str] = (), confined: Sequence[str] | None = None,
              prefix: str = "stockade") -> list[dict[str, Any]]:
    """Every policy and binding, policies first (a binding to a missing policy does nothing).

    ``confined``: the identities held to run namespaces; by default the operator's ServiceAccounts
    (a person running the operator with their own credentials, as `make run` does, is not confined).
    ``prefix`` starts every name (``<prefix>-baseline``, ...): the chart's release full name, or the
    local operator's own, so that two installations never share (and never delete) each other's policies."""
    if not usernames:
        raise ValueError("the operator's username is needed, or the policies would refuse the operator itself")
    if confined is None:
        confined = [u for u in usernames if u.startswith(SERVICE_ACCOUNT_PREFIX)]
    confinement = [operator_confinement_policy(confined),
                   binding("stockade-operator-confinement", "stockade-operator-confinement", ["Deny"])] \
        if confined else []
    run = run_namespaces(excluded)
    enforced = {"matchExpressions": [*run["matchExpressions"],
                                     {"key": ENFORCEMENT, "operator": "NotIn", "values": ["audit"]}]}
    audited = {"matchExpressions": [*run["matchExpressions"],
                                    {"key": ENFORCEMENT, "operator": "In", "values": ["audit"]}]}
    objects = [
        baseline_policy(usernames, excluded, exempt_groups),
        run_namespace_policy(usernames, excluded, exempt_groups),
        grant_policy(usernames, excluded, exempt_groups),
        *confinement[:1],
        binding("stockade-baseline", "stockade-baseline", ["Deny"]),
        binding("stockade-run-namespace", "stockade-run-namespace", ["Deny"]),
        binding("stockade-grant", "stockade-grant", ["Deny"], enforced),
        binding("stockade-grant-audit", "stockade-grant", ["Warn", "Audit"], audited),
        *confinement[1:],
    ]
    for obj in objects:
        obj["metadata"]["name"] = obj["metadata"]["name"].replace("stockade-", f"{prefix}-", 1)
        if obj["kind"] == "ValidatingAdmissionPolicyBinding":
            obj["spec"]["policyName"] = obj["spec"]["policyName"].replace("stockade-", f"{prefix}-", 1)
    return objects


# The names of manifests() after the prefix: what the operator's RBAC names (operator/stockade/rbac.py).
POLICY_SUFFIXES = ("baseline", "run-namespace", "grant", "operator-confinement")
BINDING_SUFFIXES = (*POLICY_SUFFIXES, "grant-audit")


class _NoAliases(yaml.SafeDumper):
    # Shared lists (the operations of several rules) would otherwise come out as &id001 anchors.
    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(usernames: Sequence[str], excluded: Sequence[str] = (), exempt_groups: Sequence[str] = ()) -> str:
    return yaml.dump_all(manifests(usernames, excluded, exempt_groups), Dumper=_NoAliases, sort_keys=False,
                         width=1000)
