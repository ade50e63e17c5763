"""A fresh LIST replaces what the store holds of a kind: what the list lacks is gone (the watch missed it)."""

from __future__ import annotations

from typing import Any

from stockade.store import Store


def policy(name: str, rv: str, namespace: str = "run-ns") -> dict[str, Any]:
    return {"kind": "NetworkPolicy", "apiVersion": "networking.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": rv}}


def test_relist_drops_what_the_list_lacks_and_takes_what_it_has():
    store = Store()
    store.put(policy("stockade-egress", "10"))
    store.put(policy("stockade-deny-all", "11"))
    store.put({"kind": "ResourceQuota", "metadata": {"name": "q", "namespace": "run-ns", "resourceVersion": "3"}})
    changed = store.replace_kind("NetworkPolicy", [policy("stockade-deny-all", "11"), policy("stockade-dns", "12")])
    assert changed == {("NetworkPolicy", "run-ns", "stockade-egress"), ("NetworkPolicy", "run-ns", "stockade-dns")}
    assert store.get("NetworkPolicy", "run-ns", "stockade-egress") is None
    assert store.get("NetworkPolicy", "run-ns", "stockade-dns") is not None
    assert store.get("ResourceQuota", "run-ns", "q") is not None, "other kinds are untouched"


def test_relist_trusts_the_list_even_when_versions_go_backwards():
    # etcd restored or restarted: resourceVersions may be lower than what the store saw.
    store = Store()
    store.put(policy("stockade-egress", "900"))
    changed = store.replace_kind("NetworkPolicy", [policy("stockade-egress", "40")])
    assert changed and store.get("NetworkPolicy", "run-ns", "stockade-egress")["metadata"]["resourceVersion"] == "40"
