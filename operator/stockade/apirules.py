"""API rules no grant may name: one table, read by the CRD's CEL, the reconciler and the webhook.

``grant.kubernetesAPI`` becomes a Role in the run namespace. Some rules in a Role are a way out of
the fence, whatever the grant meant, as host access is for a pod:

* ``pods/binding`` places a pod on a node of the agent's choosing, around the scheduler and node
  selection; ``serviceaccounts/token`` mints tokens for any ServiceAccount of the namespace.
* ``escalate``, ``bind`` and ``impersonate`` lift RBAC's own escalation checks or act as someone else.
* wildcards grant what nobody wrote down, including resources that do not exist yet.
* cluster-scoped resources do nothing in a Role, except ``namespaces``, where a Role in the run
  namespace does apply to the run namespace itself (its labels hold the PodSecurity level).
* subresources: only ``pods/log`` (reading logs) is grantable. The others act around the fence:
  ``exec``, ``attach``, ``portforward`` and ``proxy`` tunnel through the API server into a pod, past
  every NetworkPolicy (the quarantine's isolation included); ``ephemeralcontainers`` runs unchecked
  containers in a running pod; ``eviction`` is a deletion the webhook never sees (``delete`` on pods is
  grantable and says so); ``*/status`` writes let the agent rewrite what the operator and the quota
  read (a quota's ``status.used`` is what admission charges against).
* writes to the fence (ServiceAccounts, quotas, limits, NetworkPolicies, Roles, RoleBindings): only the
  operator changes them; RBAC writes would also let the agent re-grant itself what the table refuses.

Reading Secrets stays grantable: the run namespace holds no ServiceAccount token Secret (the control
plane no longer makes them and the webhook refuses them), so its Secrets are the agent's own data.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from stockade import kinds

CORE = ""
RBAC = "rbac.authorization.k8s.io"
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")
RULE_FIELDS = ("apiGroups", "resources", "verbs", "resourceNames")
# Cluster-scoped kinds of Kubernetes itself, by group (a custom resource's scope is not known here, and a
# Role grants a cluster-scoped one nothing anyway).
CLUSTER_GROUPS = (CORE, RBAC, "storage.k8s.io", "apiextensions.k8s.io", "admissionregistration.k8s.io",
                  "certificates.k8s.io", "scheduling.k8s.io", "node.k8s.io", "apiregistration.k8s.io",
                  "flowcontrol.apiserver.k8s.io", "networking.k8s.io", "resource.k8s.io", "authentication.k8s.io",
                  "authorization.k8s.io")
CLUSTER_RESOURCES = (
    "nodes", "persistentvolumes", "componentstatuses", "clusterroles", "clusterrolebindings", "storageclasses",
    "csidrivers", "csinodes", "volumeattachments", "volumeattributesclasses", "customresourcedefinitions",
    "mutatingwebhookconfigurations", "validatingwebhookconfigurations", "validatingadmissionpolicies",
    "validatingadmissionpolicybindings", "mutatingadmissionpolicies", "mutatingadmissionpolicybindings",
    "certificatesigningrequests", "clustertrustbundles", "priorityclasses", "runtimeclasses", "apiservices",
    "flowschemas", "prioritylevelconfigurations", "ingressclasses", "ipaddresses", "servicecidrs", "deviceclasses",
    "resourceslices", "tokenreviews", "subjectaccessreviews", "selfsubjectaccessreviews", "selfsubjectrulesreviews",
    "selfsubjectreviews",
)
# The only subresources a grant may name.
SUBRESOURCES_ALLOWED = ("pods/log",)


@dataclass(frozen=True)
class Never:
    """A rule is refused when it names one of ``resources`` (in one of ``groups``) together with one of
    ``verbs``; ``None`` stands for any value of that field."""

    what: str
    why: str
    groups: tuple[str, ...] | None = None
    resources: tuple[str, ...] | None = None
    verbs: tuple[str, ...] | None = None

    @property
    def field(self) -> str:
        return "verbs" if self.resources is None else "resources"


NEVER: tuple[Never, ...] = (
    Never("pods/binding", "it binds a pod to a node, around the scheduler and node selection",
          (CORE,), ("pods/binding", "bindings")),
    Never("serviceaccounts/token", "it mints API tokens for any ServiceAccount of the run namespace",
          (CORE,), ("serviceaccounts/token",)),
    Never("the verbs escalate, bind and impersonate", "they lift RBAC's escalation checks or act as someone else",
          verbs=("escalate", "bind", "impersonate")),
    Never("pods/exec, pods/attach, pods/portforward and proxy subresources",
          "they tunnel through the API server into pods, past every NetworkPolicy and the quarantine",
          (CORE,), ("pods/exec", "pods/attach", "pods/portforward", "pods/proxy", "services/proxy")),
    Never("pods/ephemeralcontainers", "it runs unchecked containers inside a running pod",
          (CORE,), ("pods/ephemeralcontainers",)),
    Never("namespaces", "a Role in the run namespace applies to the run namespace itself, whose labels are "
          "its PodSecurity fence", (CORE,), ("namespaces", "namespaces/status", "namespaces/finalize")),
    Never("cluster-scoped resources", "a Role cannot grant them, and none belongs to one run",
          CLUSTER_GROUPS, CLUSTER_RESOURCES),
    Never("writes to the fence (ServiceAccounts, quotas, limits, NetworkPolicies, Roles, RoleBindings)",
          "only the Stockade operator changes the fence", tuple(dict.fromkeys(k.group for k in kinds.GUARDRAILS)),
          tuple(k.plural for k in kinds.GUARDRAILS), WRITE_VERBS),
)


def _names(rule: Mapping[str, Any], key: str) -> list[str]:
    value = rule.get(key)
    return [str(item) for item in value] if isinstance(value, list) else []


def _hits(rule: Mapping[str, Any], entry: Never) -> bool:
    for key, wanted in (("apiGroups", entry.groups), ("resources", entry.resources), ("verbs", entry.verbs)):
        if wanted is not None and not set(_names(rule, key)) & set(wanted):
            return False
    return True


def never_grantable(rule: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, message) for every way this RBAC rule is never grantable; empty: grantable."""
    out: list[tuple[str, str]] = []
    for key in RULE_FIELDS:
        if any("*" in name for name in _names(rule, key)):
            out.append((key, f"wildcards ('*') in {key} are never grantable: name each one"))
    for entry in NEVER:
        if _hits(rule, entry):
            out.append((entry.field, f"never grantable: {entry.what} ({entry.why})"))
    odd = sorted(r for r in _names(rule, "resources") if "/" in r and "*" not in r
                 and r not in SUBRESOURCES_ALLOWED and not any(_hits({**rule, "resources": [r]}, e) for e in NEVER))
    if odd:
        out.append(("resources", f"subresource {', '.join(odd)} is never grantable: only "
                    f"{', '.join(SUBRESOURCES_ALLOWED)} is"))
    if rule.get("nonResourceURLs"):
        out.append(("nonResourceURLs", "non-resource URLs are never grantable: a Role cannot grant them"))
    return out


def rules_findings(rules: Iterable[Mapping[str, Any]], path: str) -> list[tuple[str, str]]:
    """(field path, message) over a list of rules, such as a grant's kubernetesAPI or a Role's rules."""
    return [(f"{path}[{index}].{key}", message)
            for index, rule in enumerate(rules) for key, message in never_grantable(rule)]


# CEL for the CRD ------------------------------------------------------------------------------------
def _cel_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def _cel_any(key: str, values: tuple[str, ...]) -> str:
    return f"self.{key}.exists(x, x in {_cel_list(values)})"


def cel_rules() -> list[Any]:
    """x-kubernetes-validations for one PolicyRule, generated from the table above."""
    out = []
    for key in RULE_FIELDS:
        guard = f"!has(self.{key}) || " if key in ("apiGroups", "resourceNames") else ""
        out.append({"rule": f"{guard}!self.{key}.exists(x, x.contains('*'))",
                    "message": f"wildcards ('*') in {key} are never grantable: name each one",
                    "fieldPath": f".{key}"})
    for entry in NEVER:
        parts = [_cel_any(key, wanted) for key, wanted in
                 (("apiGroups", entry.groups), ("resources", entry.resources), ("verbs", entry.verbs))
                 if wanted is not None]
        out.append({"rule": "!(" + " && ".join(parts) + ")", "message": f"never grantable: {entry.what} ({entry.why})",
                    "fieldPath": f".{entry.field}"})
    out.append({"rule": f"self.resources.all(x, !x.contains('/') || x in {_cel_list(SUBRESOURCES_ALLOWED)})",
                "message": f"subresources are never grantable, except {', '.join(SUBRESOURCES_ALLOWED)}: they act "
                           "on pods and tokens around the fence",
                "fieldPath": ".resources"})
    return out
