"""Every Kubernetes permission the operator's code uses, and nothing more: the single source of its RBAC.

``python -m stockade.rbac`` prints the chart's rules (``make manifests`` writes them to
``charts/stockade/templates/_rbac.tpl``). ``tests/unit/test_rbac.py`` renders the chart and fails on any
rule that is not here or any entry here that the chart lacks, and checks that each entry's call sites
exist. When code starts a new API call, add its permission here with the call site; when the call goes,
remove it.

Notes on the verbs:
* Server-side apply is a PATCH, but when it creates the object the API server also checks ``create``
  (seen in e2e/test_helm.py: "cannot create resource namespaces"): an applied kind needs both.
* The operator writes a Role holding what an AgentRun grants (``spec.grant.kubernetesAPI``), which it
  cannot hold itself: ``escalate`` on that Role and ``bind`` on it for the RoleBinding. Both checks carry
  the Role's name, so they are limited to it (``labels.ROLE``).
* The webhook configurations exist before the operator starts (the chart makes them empty), so applying
  them is a PATCH on a known name. The chart ships the ValidatingAdmissionPolicies itself and tells the
  operator not to (STOCKADE_ADMISSION_MANAGE_POLICY=false): it only watches them (stockade.admission.guard).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from stockade import kinds, labels

# Stands for the Helm release's full name (the ClusterKopfPeering object is named after it).
RELEASE = "{release}"


@dataclass(frozen=True)
class Permission:
    group: str
    resource: str
    verbs: tuple[str, ...]
    sites: tuple[str, ...]  # "module:qualname" of the code that makes the call
    names: tuple[str, ...] = ()  # resourceNames; RELEASE is replaced by the release's full name
    feature: str | None = None  # the chart value (under .Values) that turns the permission on


# One stream per kind (stockade.watch), for the store and for detection; detection's replay lists again.
WATCH_CHILD = ("stockade.watch:KindWatch.run", "stockade.watch:WatchLayer.prime", "stockade.watch:WatchLayer.replay")
WATCH_DETECT = WATCH_CHILD


def _child(group: str, resource: str, applied_by: tuple[str, ...] = (), deleted_by: tuple[str, ...] = (),
           watched_by: tuple[str, ...] = ()) -> tuple[Permission, ...]:
    """A guardrail kind: watched (drift comes back, detection sees changes), applied and pruned."""
    return (
        Permission(group, resource, ("list", "watch"), (*WATCH_CHILD, *watched_by)),
        Permission(group, resource, ("create", "patch"), ("stockade.reconcile:Reconciler._apply", *applied_by)),
        Permission(group, resource, ("delete",), ("stockade.reconcile:Reconciler._prune", *deleted_by)),
    )


# Who else watches, applies or deletes a fence kind (the reconciler applies, prunes and watches them all).
_FENCE_SITES: dict[str, dict[str, tuple[str, ...]]] = {
    # Team namespaces' own ResourceQuotas count against their runs (budgets): watched and listed at start.
    "ResourceQuota": {"watched_by": ("stockade.budget_watch:BudgetWatch.start",)},
    # The quarantine NetworkPolicy.
    "NetworkPolicy": {"applied_by": ("stockade.detect.rungs:RungsMixin._apply_policy",),
                      "deleted_by": ("stockade.detect.release:ReleaseMixin._release",)},
    # Freezing deletes the agent's RoleBinding.
    "RoleBinding": {"deleted_by": ("stockade.detect.rungs:RungsMixin._act",)},
}


PERMISSIONS: tuple[Permission, ...] = (
    # The AgentRun: watched by kopf and listed at startup; finalizer added and removed by JSON patch.
    Permission("stockade.io", "agentruns", ("list", "watch"),
               ("stockade.handlers:agentrun_event", "stockade.app:App._start_store",
                "stockade.handlers:release_requested", "stockade.lifecycle:RunLifecycle.sweep")),
    # Re-read after a conflicting status write (write_status, for the responder, a release and admission).
    Permission("stockade.io", "agentruns", ("get",),
               ("stockade.kube:write_status", "stockade.detect.respond:Responder._record",
                "stockade.detect.release:ReleaseMixin.release", "stockade.admission.record:Recorder._write")),
    # Finalizer (JSON patch); the release annotation is removed once handled.
    Permission("stockade.io", "agentruns", ("patch",),
               ("stockade.lifecycle:RunLifecycle.add_finalizer", "stockade.lifecycle:RunLifecycle.finalize",
                "stockade.detect.release:ReleaseMixin._release")),
    Permission("stockade.io", "agentruns/status", ("patch",),
               ("stockade.kube:write_status", "stockade.reconcile:Reconciler._write_status",
                "stockade.detect.respond:Responder._record", "stockade.detect.release:ReleaseMixin.release",
                "stockade.admission.record:Recorder._write")),
    # The run namespace: applied like a guardrail, deleted when the AgentRun goes.
    Permission("", "namespaces", ("list", "watch"), ("stockade.watch:KindWatch.run", "stockade.watch:WatchLayer.prime",
                                                    "stockade.lifecycle:RunLifecycle.sweep",
                                                    "stockade.watch:WatchLayer.prime",
                                                    "stockade.admission.grant_policy:GrantPolicy.prime_index")),
    # A team namespace created a moment ago, before its watch event: its labels say which policies bound it.
    Permission("", "namespaces", ("get",), ("stockade.admission.grant_policy:GrantPolicy._ensure_namespace",
                                         # and a run namespace someone else made first: whose is it?
                                         "stockade.lifecycle:RunLifecycle.create_namespace")),
    # AgentPolicies bound every grant: watched into the policy index (and listed once at start).
    Permission("stockade.io", "agentpolicies", ("list", "watch"),
               ("stockade.handlers:agentpolicy_indexed",
                "stockade.admission.grant_policy:GrantPolicy.prime_index", "stockade.handlers:policy_event")),
    # The operator writes each AgentPolicy's status: use of its budgets.
    Permission("stockade.io", "agentpolicies/status", ("patch",),
               ("stockade.kube:write_status", "stockade.policy_status:PolicyStatusWriter._write")),
    Permission("", "namespaces", ("create", "patch"), ("stockade.reconcile:Reconciler._apply",
                                                    "stockade.lifecycle:RunLifecycle.create_namespace")),
    # Deleted when the AgentRun goes, and when it is found gone (orphans: see stockade.lifecycle).
    Permission("", "namespaces", ("delete",), ("stockade.lifecycle:RunLifecycle.finalize",
                                               "stockade.lifecycle:RunLifecycle.create_namespace",
                                               "stockade.lifecycle:RunLifecycle.remove_orphan",
                                               "stockade.lifecycle:RunLifecycle.sweep")),
    # Guardrails: every fence kind of stockade.kinds, with the call sites beyond the reconciler's.
    *(perm for kind in kinds.GUARDRAILS for perm in _child(kind.group, kind.plural, **_FENCE_SITES.get(kind.kind, {}))),
    Permission("rbac.authorization.k8s.io", "roles", ("escalate", "bind"), ("stockade.reconcile:Reconciler._apply",),
               names=(labels.ROLE,)),
    # The agent's workload: created once, deleted when the run expires or a violation evicts it; a
    # quarantined pod is labelled, a Job suspended so it does not replace an evicted pod.
    Permission("", "pods", ("list", "watch"), ("stockade.watch:KindWatch.run", "stockade.watch:WatchLayer.prime")),
    Permission("", "pods", ("get",), ("stockade.detect.server:SignalServer._owner",)),
    Permission("", "pods", ("create",), ("stockade.workload:ensure_workload",)),
    Permission("", "pods", ("patch",),
               ("stockade.detect.rungs:RungsMixin._label", "stockade.detect.release:ReleaseMixin._unlabel")),
    Permission("", "pods", ("delete",),
               ("stockade.workload:stop_workload", "stockade.detect.rungs:RungsMixin._evict")),
    Permission("batch", "jobs", ("list", "watch"), WATCH_CHILD),
    Permission("batch", "jobs", ("create",), ("stockade.workload:ensure_workload",)),
    Permission("batch", "jobs", ("patch",), ("stockade.detect.rungs:RungsMixin._suspend",)),
    Permission("batch", "jobs", ("delete",), ("stockade.workload:stop_workload",)),
    # Other kinds detection watches in run namespaces (what the agent makes, if its grant lets it).
    *(Permission(kind.group, kind.plural, ("list", "watch"), WATCH_DETECT)
      for kind in kinds.DETECTED if kind.watched is None),
    # Events on the AgentRun (the operator's one poster, and kopf its own); a pod's events become evidence.
    Permission("", "events", ("create",),
               ("stockade.events:EventPoster.post", "kopf._cogs.clients.events:post_event")),
    Permission("", "events", ("list",), ("stockade.detect.respond:Responder._pod_events",)),
    # Admission kept whole: the webhook configurations and admission policies are watched (by name, from a
    # cluster-wide watch: RBAC cannot select a list by name), so one deleted or changed is reported on every
    # AgentRun; the operator restores the configurations (patch, below) and never re-creates one the chart
    # made: no create, so a fail-closed webhook cannot outlive `helm uninstall`.
    *(Permission("admissionregistration.k8s.io", resource, ("list", "watch"),
                 ("stockade.watch:KindWatch.run", "stockade.admission.guard:AdmissionGuard.start"))
      for resource in ("validatingwebhookconfigurations", "mutatingwebhookconfigurations",
                       "validatingadmissionpolicies", "validatingadmissionpolicybindings")),
    # Admission: the operator fills in the webhook configurations the chart made empty.
    Permission("admissionregistration.k8s.io", "validatingwebhookconfigurations", ("patch",),
               ("stockade.admission.webhook:apply",), names=(RELEASE,), feature="webhook.enabled"),
    Permission("admissionregistration.k8s.io", "mutatingwebhookconfigurations", ("patch",),
               ("stockade.admission.webhook:apply",), names=(RELEASE,), feature="webhook.enabled"),
    # Admission asks the API server whether the requesting user may do what they ask for (release).
    Permission("authorization.k8s.io", "subjectaccessreviews", ("create",),
               ("stockade.admission.reviews:Reviews._may_release",
                # and whether they hold every API permission their AgentRun grants
                "stockade.admission.grant_policy:GrantPolicy._held")),
    # kopf itself: it watches CRDs to learn which resources exist.
    Permission("apiextensions.k8s.io", "customresourcedefinitions", ("list", "watch"),
               ("kopf._core.reactor.observation:resource_observer",)),
    # kopf peering (two replicas, rollouts): watch every peering, write keep-alives into ours only.
    Permission("kopf.dev", "clusterkopfpeerings", ("list", "watch"),
               ("kopf._core.engines.peering:process_peering_event", "stockade.cli_run:other_operator"),
               feature="peering.enabled"),
    # Which replica leads (the signal endpoint, readiness and the webhook configurations follow it).
    Permission("kopf.dev", "clusterkopfpeerings", ("get",), ("stockade.leadership:Leadership._poll_once",),
               names=(RELEASE,), feature="peering.enabled"),
    Permission("kopf.dev", "clusterkopfpeerings", ("patch",),
               ("kopf._core.engines.peering:touch", "kopf._core.engines.peering:clean"),
               names=(RELEASE,), feature="peering.enabled"),
)


def expand(permissions: tuple[Permission, ...], release: str, features: set[str]) -> set[tuple[str, str, str, str]]:
    """(group, resource, verb, name or "") for each permission that applies: what tests compare."""
    out: set[tuple[str, str, str, str]] = set()
    for perm in permissions:
        if perm.feature is not None and perm.feature not in features:
            continue
        names = [release if n == RELEASE else n for n in perm.names] or [""]
        out |= {(perm.group, perm.resource, verb, name) for verb in perm.verbs for name in names}
    return out


def _flow(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def helm_rules() -> str:
    """The ClusterRole rules as a Helm named template (``stockade.rules``)."""
    lines = [
        "{{/* Generated from operator/stockade/rbac.py by `make manifests`. Do not edit by hand. */}}",
        '{{- define "stockade.rules" -}}',
    ]
    for perm in PERMISSIONS:
        if perm.feature:
            lines.append(f"{{{{- if .Values.{perm.feature} }}}}")
        lines.append(f"# {', '.join(perm.sites)}")
        lines.append(f'- apiGroups: ["{perm.group}"]')
        lines.append(f'  resources: ["{perm.resource}"]')
        lines.append(f"  verbs: {_flow(perm.verbs)}")
        if perm.names:
            rendered = ['{{ include "stockade.fullname" . }}' if n == RELEASE else n for n in perm.names]
            lines.append(f"  resourceNames: {_flow(tuple(rendered))}")
        if perm.feature:
            lines.append("{{- end }}")
    lines.append("{{- end }}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(helm_rules())
