"""Choosing and recognising a run namespace from the store: never adopt one someone else holds."""

from __future__ import annotations

from typing import Any

from stockade import labels, run_namespaces
from stockade.naming import run_namespace_candidates
from stockade.store import Store

KEY = ("team", "agent")


def agentrun(uid: str = "uid-1", run_namespace: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": "AgentRun", "metadata": {"namespace": "team", "name": "agent", "uid": uid,
                                                             "resourceVersion": "5"}}
    if run_namespace:
        body["status"] = {"runNamespace": run_namespace}
    return body


def namespace(name: str, *, uid: str | None = None, owner: tuple[str, str] | None = KEY,
              rv: str = "7") -> dict[str, Any]:
    found: dict[str, str] = {}
    if owner:
        found = {labels.AGENTRUN: owner[1], labels.AGENTRUN_NAMESPACE: owner[0]}
    if uid:
        found[labels.AGENTRUN_UID] = uid
    return {"kind": "Namespace", "metadata": {"name": name, "labels": found, "resourceVersion": rv}}


def test_a_fresh_run_gets_the_readable_name():
    store = Store()
    store.put_agentrun(agentrun())
    assert run_namespaces.choose(store, KEY, agentrun()) == "team-agent"
    assert run_namespaces.owned(store, KEY, agentrun()) is None


def test_a_squatter_with_the_readable_name_is_skipped_not_adopted():
    store = Store()
    body = agentrun()
    store.put_agentrun(body)
    store.put(namespace("team-agent", owner=None))  # made by someone else, no labels at all
    chosen = run_namespaces.choose(store, KEY, body)
    assert chosen == run_namespace_candidates("team", "agent", "uid-1")[1]
    assert run_namespaces.owned(store, KEY, body) is None


def test_a_squatter_forging_the_name_labels_is_not_adopted():
    store = Store()
    body = agentrun()
    store.put_agentrun(body)
    store.put(namespace("team-agent"))  # the victim's name labels, but not its uid
    assert run_namespaces.owned(store, KEY, body) is None
    assert run_namespaces.choose(store, KEY, body) != "team-agent"
    assert store.run_of_namespace("team-agent") == KEY  # labels only: treated as a namespace made before uids


def test_the_namespace_labelled_with_the_uid_is_the_runs_whatever_its_name():
    store = Store()
    body = agentrun()
    store.put_agentrun(body)
    hashed = run_namespace_candidates("team", "agent", "uid-1")[2]
    store.put(namespace(hashed, uid="uid-1"))
    assert run_namespaces.owned(store, KEY, body) == hashed
    assert run_namespaces.choose(store, KEY, body) == hashed
    assert store.run_of_namespace(hashed) == KEY
    assert store.run_namespace_of(KEY) == hashed


def test_a_recorded_name_is_kept_and_recreated_while_free():
    store = Store()
    body = agentrun(run_namespace="team-agent-0123456789")
    store.put_agentrun(body)
    assert run_namespaces.choose(store, KEY, body) == "team-agent-0123456789"


def test_a_recorded_name_someone_else_took_is_given_up():
    store = Store()
    body = agentrun(run_namespace="team-agent")
    store.put_agentrun(body)
    store.put(namespace("team-agent", uid="someone-elses-uid"))
    chosen = run_namespaces.choose(store, KEY, body)
    assert chosen not in (None, "team-agent")


def test_a_recorded_namespace_from_before_uids_is_adopted_only_when_its_labels_agree():
    store = Store()
    body = agentrun(run_namespace="team-agent")
    store.put_agentrun(body)
    store.put(namespace("team-agent"))
    assert run_namespaces.owned(store, KEY, body) == "team-agent"
    other = Store()
    other.put_agentrun(body)
    other.put(namespace("team-agent", owner=("team", "other")))
    assert run_namespaces.owned(other, KEY, body) is None


def test_a_recorded_name_that_is_no_namespace_name_is_ignored():
    store = Store()
    body = agentrun(run_namespace="../kube-system")
    store.put_agentrun(body)
    assert run_namespaces.choose(store, KEY, body) == "team-agent"


def test_every_candidate_taken_is_a_conflict():
    store = Store()
    body = agentrun()
    store.put_agentrun(body)
    for name in run_namespace_candidates("team", "agent", "uid-1"):
        store.put(namespace(name, owner=None))
    assert run_namespaces.choose(store, KEY, body) is None


def test_an_orphan_maps_to_no_run_once_its_agentrun_is_forgotten():
    store = Store()
    store.put_agentrun(agentrun())
    store.put(namespace("team-agent", uid="uid-1"))
    store.forget_agentrun(KEY)
    assert store.run_of_namespace("team-agent") is None
    assert store.namespace_of_uid("uid-1") == "team-agent"  # still there for the orphan removal


def test_a_new_agentrun_with_the_same_name_does_not_inherit_the_old_namespace():
    store = Store()
    store.put_agentrun(agentrun(uid="old"))
    store.put(namespace("team-agent", uid="old"))
    store.forget_agentrun(KEY)
    body = agentrun(uid="new")
    store.put_agentrun(body)
    assert store.run_of_namespace("team-agent") is None
    assert run_namespaces.choose(store, KEY, body) == run_namespace_candidates("team", "agent", "new")[1]
