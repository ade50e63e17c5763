"""The store keeps child objects packed (compressed JSON): what it gives back is detached and slimmed."""

from __future__ import annotations

from typing import Any

from stockade.store import Store


def _config_map(version: str, value: str = "ü") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "namespace": "n", "resourceVersion": version, "managedFields": [{"x": 1}],
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "keep": "1"}},
            "data": {"k": value}}


def test_managed_fields_and_last_applied_are_dropped_from_the_store_not_from_the_caller() -> None:
    store, obj = Store(), _config_map("5")
    store.put(obj)
    got = store.get("ConfigMap", "n", "a")
    assert got is not None
    assert "managedFields" not in got["metadata"]
    assert got["metadata"]["annotations"] == {"keep": "1"}
    assert got["data"] == {"k": "ü"}
    assert obj["metadata"]["managedFields"] == [{"x": 1}]
    assert "kubectl.kubernetes.io/last-applied-configuration" in obj["metadata"]["annotations"]


def test_each_read_is_a_detached_copy() -> None:
    store = Store()
    store.put(_config_map("5"))
    got = store.get("ConfigMap", "n", "a")
    assert got is not None
    got["data"]["k"] = "changed"
    assert [o["data"]["k"] for o in store.in_namespace("n")] == ["ü"]


def test_an_older_version_does_not_replace_a_newer_one() -> None:
    store = Store()
    store.put(_config_map("5"))
    store.put(_config_map("4", "old"))
    assert (store.get("ConfigMap", "n", "a") or {})["metadata"]["resourceVersion"] == "5"
    assert store.has_seen(_config_map("5")) and not store.has_seen(_config_map("4"))
    store.put(_config_map("6", "new"))
    assert (store.get("ConfigMap", "n", "a") or {})["data"] == {"k": "new"}
