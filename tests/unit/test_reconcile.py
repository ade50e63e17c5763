"""Reconciler passes against the in-memory API server (tests/unit/fakes.py), table-driven in the style of
agent-sandbox's TestReconcile: each case gives the AgentRun, what the API server holds (and so the watches
show), how many passes came before and what changed since, and the errors the API server answers with; and
then what the pass under test must do: every write, in order, the status it leaves, the Events it posts.

A pass is what a trigger runs (``Reconciler.trigger``: ``reconcile`` and, on an error, its handling).
"""

from __future__ import annotations

import asyncio
import copy
import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from stockade import clock, labels, reconcile
from stockade.grantpolicy.index import PolicyIndex
from stockade.kube import KubeError, object_path
from stockade.plan import PlanSettings
from stockade.reconcile import Reconciler
from stockade.store import Store

from .fakes import Events, FakeKube, FakeResolver, invalid, merge
from .fixtures import GPU_RUN

KEY = ("team", "rome")
RUN_NS = "team-rome"
AR_API = "stockade.io/v1alpha1"
AR_PATH = object_path(AR_API, "AgentRun", *KEY)
ADDRESSES = {"api.example.com": ["203.0.113.10"]}
# A policy that bounds nothing this run asks for: admission is not what these cases are about.
CONFIGMAPS = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]
POLICY = {"metadata": {"name": "open", "resourceVersion": "1"},
          "spec": {"namespaceSelector": {"matchLabels": {"team": "research"}},
                   "egress": {"cidrs": ["10.0.0.0/8"], "hosts": ["*"], "dns": True}, "kubernetesAPI": CONFIGMAPS}}
FENCE = [("APPLY", "serviceaccounts/agent"), ("APPLY", "resourcequotas/stockade-grant"),
         ("APPLY", "limitranges/stockade-limits"), ("APPLY", "networkpolicies/stockade-deny-all"),
         ("APPLY", "networkpolicies/stockade-egress"), ("APPLY", "networkpolicies/stockade-dns")]


def agentrun(*, finalizer: bool = True, **spec_changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(GPU_RUN)
    for key, value in spec_changes.items():
        if key.startswith("grant_"):
            spec["grant"][key.removeprefix("grant_")] = value
        else:
            spec[key] = value
    meta: dict[str, Any] = {"name": "rome", "namespace": "team", "uid": "uid-rome", "generation": 1}
    if finalizer:
        meta["finalizers"] = [labels.FINALIZER]
    return {"apiVersion": AR_API, "kind": "AgentRun", "metadata": meta, "spec": spec}


class World:
    """The API server, what the watches show (the store), and the reconciler between them."""

    def __init__(self, run: dict[str, Any], live: tuple[dict[str, Any], ...]) -> None:
        self.kube = FakeKube()
        self.store = Store()
        self.events = Events()
        self.index = PolicyIndex()
        self.index.put_namespace({"metadata": {"name": "team", "labels": {"team": "research"}}})
        self.index.put_policy(POLICY)
        self.store.put_agentrun(self.kube.seed(run))
        for obj in live:
            self.store.put(self.kube.seed(obj))
        self.restart()

    def restart(self) -> None:
        """A fresh operator process: nothing remembered but what the API server holds."""
        self.reconciler = Reconciler(self.kube, self.store, PlanSettings(), FakeResolver(ADDRESSES), self.events)
        self.reconciler.budget.index = self.index

    def run(self) -> dict[str, Any]:
        found = self.kube.live(AR_API, "AgentRun", *KEY)
        assert found is not None
        return found

    # Someone else's changes, as the API server makes them and the watches then show them -------------
    def update_run(self, patch: dict[str, Any]) -> None:
        self.store.put_agentrun(self.kube.put(AR_PATH, merge(self.kube.objects[AR_PATH], patch)))

    def change(self, api_version: str, kind: str, name: str, patch: dict[str, Any]) -> None:
        path = object_path(api_version, kind, RUN_NS, name)
        self.store.put(self.kube.put(path, merge(self.kube.objects[path], patch)))

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = RUN_NS) -> None:
        gone = self.kube.objects.pop(object_path(api_version, kind, namespace, name))
        self.store.remove(gone)


def short(path: str) -> str:
    """``plural/name`` (``.../status`` kept) as kubectl names an object."""
    parts = path.split("/")
    return "/".join(parts[-3:] if parts[-1] == "status" else parts[-2:])


@dataclass(frozen=True)
class Case:
    name: str
    run: dict[str, Any]  # the AgentRun as the API server holds it (and the store shows it)
    live: tuple[dict[str, Any], ...] = ()  # other objects the API server holds and the watches have shown
    fail: tuple[tuple[str, str, KubeError], ...] = ()  # (verb, plural/name, error) the API server answers with
    before: int = 0  # passes before the one under test (as agent-sandbox's reconcileCount)
    meanwhile: Callable[[World], None] | None = None  # what changed after them, before the pass under test
    restart: bool = False  # the pass under test is the first of a new operator process
    hours_later: float = 0.0  # the pass under test runs this much later than the ones before
    settled: bool = True  # False: every pass runs within the settle time of a workload just made
    want_writes: tuple[tuple[str, str], ...] = ()  # every call that asks for a change, in order
    want_phase: str | None = None  # status.phase the API server holds afterwards
    want_conditions: dict[str, tuple[str, str]] = field(default_factory=dict)  # type: (status, reason)
    want_events: tuple[tuple[str, str], ...] = ()  # (type, reason) of every Event the pass posts
    want_gone: tuple[tuple[str, str, str | None, str], ...] = ()  # (apiVersion, kind, namespace, name)
    want_finalizers: tuple[str, ...] | None = None
    want_reads: bool = True  # False: the pass makes no request at all, not even a read


def quarantine(world: World) -> None:
    """The responder's work on a violation: status first, then the freeze (RoleBinding) and the eviction."""
    world.update_run({"status": {"quarantine": {"active": True, "reason": "SSHConnection",
                                                "message": "ssh to 198.51.100.7:22", "since": "2025-06-01T12:00:00Z",
                                                "pods": ["rome"], "steps": ["isolate", "freeze", "evict"]}}})
    world.delete("rbac.authorization.k8s.io/v1", "RoleBinding", labels.ROLE_BINDING)
    world.delete("v1", "Pod", "rome")


def delete_run(world: World) -> None:
    """kubectl delete: the finalizer keeps the AgentRun, with a deletionTimestamp, until it comes off."""
    world.update_run({"metadata": {"deletionTimestamp": "2025-06-01T13:00:00Z"}})


def delete_run_whose_namespace_is_gone(world: World) -> None:
    delete_run(world)
    world.delete("v1", "Namespace", RUN_NS, namespace=None)  # its DELETED event came


def label_run_unseen(world: World) -> None:
    """kubectl label, just now: the API server holds a newer AgentRun than the watch has shown."""
    live = world.kube.objects[AR_PATH]
    world.kube.put(AR_PATH, merge(live, {"metadata": {"labels": {"owner": "alice"}}}))


CASES = [
    Case("a fresh run gets its finalizer, then its namespace, then its guardrails, then its workload",
         run=agentrun(finalizer=False),
         want_writes=(("PATCH", "agentruns/rome"), ("CREATE", "namespaces/team-rome"), *FENCE,
                      ("CREATE", "pods/rome")),
         want_events=(("Normal", "Admitted"),), want_finalizers=(labels.FINALIZER,)),
    Case("the status follows once the workload exists",
         run=agentrun(), before=1,
         want_writes=(("PATCH", "agentruns/rome/status"),),
         want_phase="Pending",
         want_conditions={"Ready": ("False", "WorkloadPending"), "GuardrailsReady": ("True", "GuardrailsApplied"),
                          "Admitted": ("True", "Admitted"), "EgressResolved": ("True", "AllHostsResolved"),
                          "Stalled": ("False", "AsExpected")},
         want_events=(("Normal", "PhasePending"), ("Normal", "FenceComplete"))),
    Case("a workload still Pending right after it was made is not reported yet",
         run=agentrun(), before=1, settled=False, want_writes=(), want_phase=None),
    Case("the agent running within the settle time: the status is written once, Running",
         run=agentrun(), before=1, settled=False,
         meanwhile=lambda w: w.change("v1", "Pod", "rome", {"status": {"phase": "Running"}}),
         want_writes=(("PATCH", "agentruns/rome/status"),), want_phase="Running",
         want_conditions={"Ready": ("True", "Running"), "GuardrailsReady": ("True", "GuardrailsApplied")},
         want_events=(("Normal", "PhaseRunning"), ("Normal", "FenceComplete"))),
    Case("nothing changed: no request at all",
         run=agentrun(), before=2, want_writes=(), want_phase="Pending", want_reads=False),
    Case("the agent running: the status says so, nothing else is written",
         run=agentrun(), before=2,
         meanwhile=lambda w: w.change("v1", "Pod", "rome", {"status": {"phase": "Running"}}),
         want_writes=(("PATCH", "agentruns/rome/status"),), want_phase="Running",
         want_conditions={"Ready": ("True", "Running"), "Reconciling": ("False", "Running")},
         want_events=(("Normal", "PhaseRunning"),)),
    Case("a guardrail deleted after the fence was up is restored, with a Warning",
         run=agentrun(), before=2,
         meanwhile=lambda w: w.delete("networking.k8s.io/v1", "NetworkPolicy", "stockade-deny-all"),
         want_writes=(("APPLY", "networkpolicies/stockade-deny-all"),), want_phase="Pending",
         want_conditions={"GuardrailsReady": ("True", "GuardrailsApplied")},
         want_events=(("Warning", "GuardrailRestored"),)),
    Case("a guardrail changed is restored from the grant, also after an operator restart",
         run=agentrun(), before=2, restart=True,
         meanwhile=lambda w: w.change("v1", "ResourceQuota", "stockade-grant", {"spec": {"hard": {"pods": "100"}}}),
         want_writes=(("APPLY", "resourcequotas/stockade-grant"),), want_phase="Pending",
         want_events=(("Warning", "GuardrailRestored"),)),
    Case("an invalid spec: a condition with its reason, and no child object",
         run=agentrun(grant_cpu="lots"),
         want_writes=(("PATCH", "agentruns/rome/status"),), want_phase="Pending",
         want_conditions={"Ready": ("False", "InvalidSpec"), "Stalled": ("True", "InvalidSpec"),
                          "GuardrailsReady": ("False", "InvalidSpec"), "Reconciling": ("False", "InvalidSpec")},
         want_events=(("Warning", "InvalidSpec"), ("Normal", "PhasePending"))),
    Case("an AgentRun changed since the watch showed it: the finalizer waits for the new version, no stall",
         run=agentrun(finalizer=False), meanwhile=label_run_unseen,
         want_writes=(("PATCH", "agentruns/rome"),), want_events=(), want_finalizers=()),
    Case("a workload the API server refuses (422) stalls the run with the API server's message",
         run=agentrun(), fail=(("CREATE", "pods/rome", invalid()),),
         want_writes=(("CREATE", "namespaces/team-rome"), *FENCE, ("CREATE", "pods/rome"),
                      ("PATCH", "agentruns/rome/status")),
         want_phase="Pending",
         want_conditions={"Ready": ("False", "RefusedByAPIServer"), "Stalled": ("True", "RefusedByAPIServer")},
         want_events=(("Normal", "Admitted"), ("Warning", "RefusedByAPIServer"), ("Normal", "PhasePending"))),
    Case("a refused generation is not asked again: no write until the spec changes",
         run=agentrun(), fail=(("CREATE", "pods/rome", invalid()),), before=1, want_writes=(),
         want_conditions={"Stalled": ("True", "RefusedByAPIServer")}),
    Case("a quarantined, frozen run: its API access stays gone and its agent is not let back in",
         run=agentrun(grant_kubernetesAPI=CONFIGMAPS), before=2, meanwhile=quarantine,
         want_writes=(("DELETE", f"roles/{labels.ROLE}"), ("PATCH", "agentruns/rome/status")),
         want_phase="Quarantined",
         want_conditions={"Ready": ("False", "SSHConnection"), "Quarantined": ("True", "SSHConnection"),
                          "GuardrailsReady": ("True", "GuardrailsApplied")},
         want_events=(("Normal", "PhaseQuarantined"),),
         want_gone=(("v1", "Pod", RUN_NS, "rome"), ("rbac.authorization.k8s.io/v1", "RoleBinding", RUN_NS,
                                                     labels.ROLE_BINDING))),
    Case("deleted: the finalizer keeps the AgentRun while its run namespace is deleted",
         run=agentrun(), before=2, meanwhile=delete_run,
         want_writes=(("DELETE", "namespaces/team-rome"),), want_events=(("Normal", "Cleanup"),),
         want_gone=(("v1", "Namespace", None, RUN_NS),), want_finalizers=(labels.FINALIZER,)),
    Case("deleted, and the run namespace is gone: the finalizer comes off",
         run=agentrun(), before=2, meanwhile=delete_run_whose_namespace_is_gone,
         want_writes=(("PATCH", "agentruns/rome"),), want_finalizers=()),
    Case("expired: the workload goes and the run says Expired",
         run=agentrun(grant_duration="4h"), before=2, hours_later=5,
         want_writes=(("DELETE", "pods/rome"), ("PATCH", "agentruns/rome/status")),
         want_phase="Expired",
         want_conditions={"Ready": ("False", "Expired"), "Reconciling": ("False", "Expired")},
         want_events=(("Normal", "PhaseExpired"),), want_gone=(("v1", "Pod", RUN_NS, "rome"),)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_reconcile(case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    if case.settled:
        monkeypatch.setattr(reconcile, "WORKLOAD_SETTLE_SECONDS", 0.0)
    world = World(case.run, case.live)
    for verb, where, err in case.fail:
        path = next((p for p in [*world.kube.objects, object_path("v1", "Pod", RUN_NS, "rome")] if short(p) == where),
                    where)
        world.kube.fail(verb, path, err)

    async def passes() -> None:
        for _ in range(case.before):
            await world.reconciler.trigger(KEY)
        if case.meanwhile is not None:
            case.meanwhile(world)
        if case.restart:
            world.restart()
        if case.hours_later:
            later = clock.utcnow() + datetime.timedelta(hours=case.hours_later)
            monkeypatch.setattr(reconcile, "utcnow", lambda: later)
        world.kube.calls.clear()
        world.kube.sent.clear()
        world.events.posted.clear()
        await world.reconciler.trigger(KEY)

    asyncio.run(passes())
    assert [(verb, short(path)) for verb, path in world.kube.verbs()] == list(case.want_writes)
    if not case.want_reads:
        assert world.kube.calls == [], "a pass with nothing to do reads nothing either"
    status = world.run().get("status") or {}
    if case.want_phase is not None:
        assert status.get("phase") == case.want_phase
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status.get("conditions") or []}
    assert {kind: conditions.get(kind) for kind in case.want_conditions} == case.want_conditions
    assert all(c["observedGeneration"] == 1 for c in status.get("conditions") or [])
    assert [(kind, reason) for kind, reason, _ in world.events.posted] == list(case.want_events)
    for api_version, kind, namespace, name in case.want_gone:
        assert world.kube.live(api_version, kind, namespace, name) is None, f"{kind} {name} is still there"
    if case.want_finalizers is not None:
        assert tuple(world.run()["metadata"].get("finalizers") or ()) == case.want_finalizers


def test_the_fresh_runs_objects_are_the_fence_the_grant_describes() -> None:
    """What the first pass applied, not only that it applied: the run namespace labelled as this run's,
    the egress policy with the resolved address, the pod under the agent's ServiceAccount."""
    world = World(agentrun(finalizer=False), ())
    asyncio.run(world.reconciler.trigger(KEY))
    namespace = world.kube.live("v1", "Namespace", None, RUN_NS)
    assert namespace is not None and namespace["metadata"]["labels"][labels.AGENTRUN_UID] == "uid-rome"
    egress = world.kube.live("networking.k8s.io/v1", "NetworkPolicy", RUN_NS, "stockade-egress")
    assert egress is not None
    peers = [peer["ipBlock"]["cidr"] for rule in egress["spec"]["egress"] for peer in rule["to"]]
    assert sorted(peers) == ["10.42.0.0/16", "203.0.113.10/32"]
    pod = world.kube.live("v1", "Pod", RUN_NS, "rome")
    assert pod is not None and pod["spec"]["serviceAccountName"] == "agent"
    [created] = [body for body in world.kube.bodies("CREATE") if body["kind"] == "Pod"]
    assert created["spec"]["activeDeadlineSeconds"] == 4 * 3600
