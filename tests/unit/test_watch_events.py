"""The watch layer's handling of events (no API server needed: the stream itself is e2e-tested)."""

from __future__ import annotations

from typing import Any

import pytest

from stockade import labels
from stockade.store import Store
from stockade.watch import KINDS, Broken, Gone, KindWatch

KEY = ("team", "agent")
POLICY = next(k for k in KINDS if k.kind == "NetworkPolicy")
POD = next(k for k in KINDS if k.kind == "Pod")


def store_with_run() -> Store:
    store = Store()
    store.put_agentrun({"kind": "AgentRun", "metadata": {"namespace": "team", "name": "agent", "uid": "u1",
                                                         "resourceVersion": "1"}})
    store.put({"kind": "Namespace", "metadata": {"name": "team-agent", "resourceVersion": "2", "labels": {
        labels.AGENTRUN: "agent", labels.AGENTRUN_NAMESPACE: "team", labels.AGENTRUN_UID: "u1"}}})
    return store


def policy(rv: str, namespace: str = "team-agent", name: str = "stockade-egress", mine: bool = True) -> dict[str, Any]:
    """A NetworkPolicy: the operator's own carries its label (the store keeps only those)."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "resourceVersion": rv}
    if mine:
        meta["labels"] = {labels.AGENTRUN: "agent", labels.AGENTRUN_NAMESPACE: "team"}
    return {"metadata": meta}


def watcher(store: Store, kind: Any = POLICY, detect: Any = None) -> tuple[KindWatch, list[tuple[str, str]]]:
    triggered: list[tuple[str, str]] = []
    return KindWatch(None, store, kind, triggered.append, detect=detect), triggered  # type: ignore[arg-type]


def test_one_stream_feeds_the_store_and_detection():
    """A guardrail kind's stream: the store keeps the operator's own, detection sees every object in a run
    namespace (what someone else made too, and the operator's own echoes); outside run namespaces, nothing."""
    store = store_with_run()
    seen: list[tuple[str, str | None]] = []
    watch, triggered = watcher(store, detect=lambda obj, event: seen.append((obj["metadata"]["name"], event)))
    watch._on_event({"type": "ADDED", "object": policy("5")})
    watch._on_event({"type": "ADDED", "object": policy("6", name="made-by-someone", mine=False)})
    watch._on_event({"type": "ADDED", "object": policy("7", namespace="kube-system", name="elsewhere", mine=False)})
    assert seen == [("stockade-egress", "ADDED"), ("made-by-someone", "ADDED")]
    assert store.get("NetworkPolicy", "team-agent", "stockade-egress") is not None
    assert store.get("NetworkPolicy", "team-agent", "made-by-someone") is None
    assert store.get("NetworkPolicy", "kube-system", "elsewhere") is None
    assert triggered == [KEY]
    watch._on_event({"type": "MODIFIED", "object": policy("5")})  # the echo: the store has it, detection sees it
    assert seen[-1] == ("stockade-egress", "MODIFIED") and triggered == [KEY]


def test_a_kind_only_detection_judges_is_not_stored():
    service = next(k for k in KINDS if k.kind == "Service")
    assert (service.selector, service.stored, service.detected) == (None, None, True)
    store = store_with_run()
    seen: list[str] = []
    watch, triggered = watcher(store, service, detect=lambda obj, event: seen.append(obj["kind"]))
    watch._on_event({"type": "ADDED", "object": {"metadata": {"name": "web", "namespace": "team-agent",
                                                             "resourceVersion": "3"}}})
    assert seen == ["Service"] and store.get("Service", "team-agent", "web") is None and triggered == []


def test_a_deletion_reaches_the_store_and_triggers_its_run():
    store = store_with_run()
    watch, triggered = watcher(store)
    watch._on_event({"type": "ADDED", "object": policy("5")})
    assert store.get("NetworkPolicy", "team-agent", "stockade-egress") is not None
    watch._on_event({"type": "DELETED", "object": policy("6")})
    assert store.get("NetworkPolicy", "team-agent", "stockade-egress") is None
    assert triggered == [KEY, KEY]
    assert watch.resource_version == "6"


def test_the_echo_of_the_operators_own_write_triggers_nothing():
    store = store_with_run()
    store.put({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", **policy("7")})
    watch, triggered = watcher(store)
    watch._on_event({"type": "MODIFIED", "object": policy("7")})
    assert triggered == []


def test_bookmarks_move_the_resource_version_only():
    watch, triggered = watcher(store_with_run())
    watch._on_event({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "99"}}})
    assert watch.resource_version == "99" and triggered == []


def test_410_asks_for_a_relist_and_other_errors_break_the_stream():
    watch, _ = watcher(store_with_run())
    with pytest.raises(Gone):
        watch._on_event({"type": "ERROR", "object": {"code": 410, "message": "too old resource version"}})
    with pytest.raises(Broken):
        watch._on_event({"type": "ERROR", "object": {"code": 500, "message": "etcd gone"}})


def test_pods_outside_run_namespaces_are_not_kept():
    store = store_with_run()
    watch, triggered = watcher(store, POD)
    watch._on_event({"type": "ADDED", "object": {"metadata": {"name": "x", "namespace": "elsewhere",
                                                              "resourceVersion": "3"}}})
    assert store.get("Pod", "elsewhere", "x") is None and triggered == []
    watch._on_event({"type": "ADDED", "object": {"metadata": {"name": "agent", "namespace": "team-agent",
                                                              "resourceVersion": "4"}}})
    assert store.get("Pod", "team-agent", "agent") is not None and triggered == [KEY]


def test_every_kind_names_its_rbac_resource():
    assert POLICY.resource == ("networking.k8s.io", "networkpolicies")
    assert POD.resource == ("", "pods")


def test_namespaces_are_one_stream_for_the_store_and_the_policy_index():
    """Team namespaces' labels (AgentPolicy selectors, budgets) come from the Namespace stream, which is watched
    whole; the store keeps the run namespaces only."""
    namespace = next(k for k in KINDS if k.kind == "Namespace")
    assert namespace is KINDS[0] and namespace.selector is None and namespace.stored == "labelled"
    store = store_with_run()
    heard: list[tuple[str, str | None]] = []
    watch = KindWatch(None, store, namespace, lambda key: None,  # type: ignore[arg-type]
                      listeners=[lambda obj, event: heard.append((obj["metadata"]["name"], event))])
    watch._on_event({"type": "ADDED", "object": {"metadata": {"name": "team", "resourceVersion": "3",
                                                             "labels": {"tier": "gpu"}}}})
    watch._on_event({"type": "MODIFIED", "object": {"metadata": {"name": "team-agent", "resourceVersion": "4",
                                                                "labels": {labels.AGENTRUN: "agent"}}}})
    assert heard == [("team", "ADDED"), ("team-agent", "MODIFIED")]
    assert store.get("Namespace", "", "team") is None and store.get("Namespace", "", "team-agent") is not None


def test_a_failing_listener_does_not_break_the_stream():
    store = store_with_run()

    def broken(obj: Any, event: Any) -> None:
        raise RuntimeError("a bug")

    watch = KindWatch(None, store, POLICY, lambda key: None, listeners=[broken])  # type: ignore[arg-type]
    watch._on_event({"type": "ADDED", "object": policy("5")})
    assert store.get("NetworkPolicy", "team-agent", "stockade-egress") is not None
