"""Every Kubernetes kind Stockade reads, writes, watches or judges, once: where it lives and what it is here.

Pure data. The tables that used to list kinds each in their own words are derived from ``KINDS``: the REST
paths (``stockade.kube``), the watch layer's streams (``stockade.watch``), the webhook's rules and decisions
(``stockade.admission.webhook``, ``.policy``), the ValidatingAdmissionPolicies (``stockade.admission.vap``),
detection's watches and rules (``stockade.detect``), the fence report, pruning, the RBAC the fence needs
(``stockade.rbac``) and the admission objects the guard watches. Adding a guarded kind is one line here: see
"Adding a guarded kind" in README.md.

Order matters only for what is rendered (the chart's admission policies and ClusterRole keep their order):
rules are grouped by API group in the order the groups first appear below, kinds within a group in the order
they are given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

Watch = Literal["labelled", "every"]


@dataclass(frozen=True)
class Kind:
    group: str  # "" for the core API
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    # Part of the fence: the value of stockade.io/component on the operator's objects of this kind. Only the
    # operator writes them in a run namespace (the webhook and the baseline policy refuse anyone else's
    # create, update or delete); the reconciler restores them and prunes what is no longer granted;
    # detection flags an edit; the fence report lists them. Made with fence() below.
    guardrail: str | None = None
    # The watch layer keeps it in the store: "labelled" lists what carries stockade.io/agentrun, "every"
    # lists all of it (pods an agent makes need not carry the label; kept only inside run namespaces).
    watched: Watch | None = None
    detected: bool = False  # detection watches it in run namespaces (what the agent makes, or edits)
    makes_pods: bool = False  # a pod, or a kind with a pod template: the pod rules apply to it
    never_granted: bool = False  # a controller no grant names: refused in run namespaces, operator down too
    run_workload: bool = False  # what the operator runs an agent as (spec.workload)
    exposes: bool = False  # may open the run to outside traffic (Services): judged by its type, updates too
    update_subresources: tuple[str, ...] = ()  # subresources whose updates the webhook judges as well
    inert: bool = False  # data that starts nothing and opens nothing: allowed in run namespaces
    admission: bool = False  # the operator's own admission configuration: watched, restored, reported
    # Watched whole though the store keeps only the operator's own: the policy index and budgets read every
    # namespace's labels (AgentPolicy selectors) and team ResourceQuotas from the same stream.
    whole: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def ref(self) -> tuple[str, str]:
        """(apiVersion, kind), as manifests name it."""
        return self.api_version, self.kind

    @property
    def resource(self) -> tuple[str, str]:
        """(API group, plural), as RBAC and admission requests name it."""
        return self.group, self.plural

    @property
    def prefix(self) -> str:
        """The REST path of its API group and version."""
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    @property
    def collection(self) -> str:
        """The REST path of every object of the kind, cluster-wide."""
        return f"{self.prefix}/{self.plural}"

    @property
    def judged_on_update(self) -> bool:
        """The webhook judges its updates (it judges every kind's creation): a change could break the fence,
        start compute or open a way in."""
        return self.guardrail is not None or self.makes_pods or self.exposes


def fence(group: str, version: str, plural: str, kind: str, component: str) -> Kind:
    """A fence kind: watched (drift is repaired from the store) and seen by detection (edits are flagged)."""
    return Kind(group, version, plural, kind, guardrail=component, watched="labelled", detected=True)


def _controller(group: str, plural: str, kind: str, *, detected: bool = True) -> Kind:
    return Kind(group, "v1", plural, kind, detected=detected, makes_pods=True, never_granted=True)


def _inert(group: str, plural: str, kind: str) -> Kind:
    return Kind(group, "v1", plural, kind, inert=True)


def _admission(plural: str, kind: str) -> Kind:
    return Kind("admissionregistration.k8s.io", "v1", plural, kind, namespaced=False, admission=True)


KINDS: tuple[Kind, ...] = (
    # The run namespace: made, labelled and deleted by the operator; judged by a webhook of its own. First:
    # the watch layer lists it before the rest (pods are kept only inside run namespaces).
    Kind("", "v1", "namespaces", "Namespace", namespaced=False, watched="labelled", whole=True),
    # Compute and ways in.
    Kind("", "v1", "pods", "Pod", watched="every", makes_pods=True, run_workload=True,
         update_subresources=("ephemeralcontainers", "resize")),
    Kind("", "v1", "services", "Service", detected=True, exposes=True),
    _controller("apps", "deployments", "Deployment"),
    _controller("apps", "statefulsets", "StatefulSet"),
    _controller("apps", "daemonsets", "DaemonSet"),
    _controller("apps", "replicasets", "ReplicaSet"),
    # Detection does not watch it (the webhook and the policies refuse it all the same).
    _controller("", "replicationcontrollers", "ReplicationController", detected=False),
    Kind("batch", "v1", "jobs", "Job", watched="labelled", detected=True, makes_pods=True, run_workload=True),
    _controller("batch", "cronjobs", "CronJob"),
    # The fence.
    fence("", "v1", "serviceaccounts", "ServiceAccount", "identity"),
    fence("", "v1", "resourcequotas", "ResourceQuota", "quota"),
    fence("", "v1", "limitranges", "LimitRange", "limits"),
    fence("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", "network"),
    fence("rbac.authorization.k8s.io", "v1", "roles", "Role", "identity"),
    fence("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", "identity"),
    # Inert data; the control plane writes some of it in every namespace.
    _inert("", "configmaps", "ConfigMap"),
    _inert("", "secrets", "Secret"),
    _inert("", "endpoints", "Endpoints"),
    _inert("", "events", "Event"),
    _inert("events.k8s.io", "events", "Event"),
    _inert("discovery.k8s.io", "endpointslices", "EndpointSlice"),
    _inert("coordination.k8s.io", "leases", "Lease"),
    _inert("authorization.k8s.io", "localsubjectaccessreviews", "LocalSubjectAccessReview"),
    # Stockade's own.
    Kind("stockade.io", "v1alpha1", "agentruns", "AgentRun"),
    _admission("validatingwebhookconfigurations", "ValidatingWebhookConfiguration"),
    _admission("mutatingwebhookconfigurations", "MutatingWebhookConfiguration"),
    _admission("validatingadmissionpolicies", "ValidatingAdmissionPolicy"),
    _admission("validatingadmissionpolicybindings", "ValidatingAdmissionPolicyBinding"),
)


def _having(keep: Callable[[Kind], bool]) -> tuple[Kind, ...]:
    return tuple(kind for kind in KINDS if keep(kind))


GUARDRAILS = _having(lambda k: k.guardrail is not None)
WATCHED = _having(lambda k: k.watched is not None)
DETECTED = _having(lambda k: k.detected)
MAKES_PODS = _having(lambda k: k.makes_pods)
NEVER_GRANTED = _having(lambda k: k.never_granted)
RUN_WORKLOADS = _having(lambda k: k.run_workload)
EXPOSING = _having(lambda k: k.exposes)
INERT = _having(lambda k: k.inert)
ADMISSION = _having(lambda k: k.admission)
# The components of the planned fence: what pruning may delete (the quarantine policy is the responder's).
GUARDRAIL_COMPONENTS = frozenset(str(k.guardrail) for k in GUARDRAILS)

BY_REF: dict[tuple[str, str], Kind] = {kind.ref: kind for kind in KINDS}
_GROUPS = tuple(dict.fromkeys(kind.group for kind in KINDS))


def named(kind: str, api_version: str | None = None) -> Kind:
    """The kind of that name (KeyError if there is none, or more than one and no apiVersion to choose by)."""
    if api_version is not None:
        return BY_REF[(api_version, kind)]
    found = [k for k in KINDS if k.kind == kind]
    if len(found) != 1:
        raise KeyError(f"{kind}: {len(found)} kinds of that name")
    return found[0]


def _plural(kind: Kind) -> Sequence[str]:
    return (kind.plural,)


def rules(kinds: Iterable[Kind], resources: Callable[[Kind], Sequence[str]] = _plural) -> list[tuple[str, list[str]]]:
    """(API group, resources) for admission rules: one entry per group, groups in table order, the kinds of
    each group in the order given; ``resources`` says what of each kind to name (its plural by default)."""
    by_group: dict[str, list[str]] = {}
    for kind in kinds:
        by_group.setdefault(kind.group, []).extend(resources(kind))
    return [(group, by_group[group]) for group in _GROUPS if group in by_group]
