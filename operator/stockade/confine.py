"""Confinement: what a violation of a run may act on. Pure: the store's view in, a yes or no out.

Every action (a label, the quarantine policy, an eviction, a frozen RoleBinding) stays inside the run
namespace of the AgentRun the violation was matched to, and only touches a pod that namespace holds.
The signal endpoint asks the same before it hands a signal on; the API server enforces it once more
(the ValidatingAdmissionPolicy stockade-operator-confinement, admission/vap.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stockade import k8snames, labels
from stockade.naming import run_namespace_name
from stockade.store import RunKey, Store, run_of


# Confinement: every action stays inside the run namespace of the run the violation belongs to.
def run_namespace(store: Store, key: RunKey, status: Mapping[str, Any]) -> str | None:
    """The run's namespace as its status records it, only when that namespace's own labels (which only
    the operator may set) name this run; None: nothing may be acted on."""
    recorded = status.get("runNamespace") or run_namespace_name(*key)
    if not k8snames.is_label(recorded) or store.run_of_namespace(recorded) != key:
        return None
    return str(recorded)


def confined_pod(store: Store, key: RunKey, run_ns: str, name: str,
                 found: Mapping[str, Any] | None = None) -> Mapping[str, Any] | None:
    """The pod named, when it is one of this run's: in its run namespace as the store (or the signal
    endpoint's own read) shows it, and not labelled as another run's. A pod the agent made itself need
    not carry the run's labels (it cannot be trusted to set them), but it cannot leave the namespace,
    and the namespace is what confines."""
    if not k8snames.is_subdomain(name):
        return None
    pod = store.get("Pod", run_ns, name) or found
    meta = (pod or {}).get("metadata") or {}
    if pod is None or meta.get("namespace") != run_ns or meta.get("name") != name:
        return None
    marked = (meta.get("labels") or {}).keys() & {labels.AGENTRUN, labels.AGENTRUN_NAMESPACE}
    if marked and run_of(pod) != key:
        return None  # labelled as another run's pod (or half-labelled): never this run's to act on
    return pod
