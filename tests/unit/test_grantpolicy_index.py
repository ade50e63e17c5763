"""The policy index: which policies bound a namespace, kept current as policies and labels change."""

from __future__ import annotations

from stockade.grantpolicy.index import PolicyIndex


def _policy(name: str, version: str, team: str, cpu: str = "4") -> dict:
    return {"metadata": {"name": name, "resourceVersion": version},
            "spec": {"namespaceSelector": {"matchLabels": {"team": team}}, "ceilings": {"cpu": cpu}}}


def test_lookups_follow_policy_and_label_changes():
    index = PolicyIndex()
    index.put_namespace({"metadata": {"name": "ml", "labels": {"team": "ml"}}})
    assert index.bounding("ml") == [] and index.bounding("unseen") is None
    index.put_policy(_policy("a", "1", "ml"))
    index.put_policy(_policy("b", "1", "web"))
    assert [b.name for b in index.bounding("ml") or []] == ["a"]
    index.put_policy(_policy("a", "2", "ml", cpu="2"))  # narrowed: the new version is what bounds
    (bound,) = index.bounding("ml") or []
    assert bound.spec is not None and bound.spec.ceilings.cpu == "2"
    index.put_namespace({"metadata": {"name": "ml", "labels": {"team": "web"}}})  # relabelled
    assert [b.name for b in index.bounding("ml") or []] == ["b"]
    index.forget_policy("b")
    assert index.bounding("ml") == []


def test_a_policy_is_parsed_once_per_version_and_a_broken_one_bounds_what_it_selects():
    index = PolicyIndex()
    first = index.put_policy(_policy("a", "7", "ml"))
    assert index.put_policy(_policy("a", "7", "ml")) is first
    broken = index.put_policy({"metadata": {"name": "x", "resourceVersion": "1"}, "spec": {
        "namespaceSelector": {"matchLabels": {"team": "ml"}}, "ceilings": {"cpu": "?"}}})
    assert broken.spec is None and broken.error
    index.put_namespace({"metadata": {"name": "ml", "labels": {"team": "ml"}}})
    index.put_namespace({"metadata": {"name": "web", "labels": {"team": "web"}}})
    assert [b.name for b in index.bounding("ml") or []] == ["a", "x"]
    assert index.bounding("web") == []


def test_an_answer_computed_before_a_change_is_not_kept():
    index = PolicyIndex()
    index.put_namespace({"metadata": {"name": "ml", "labels": {"team": "ml"}}})
    index.put_policy(_policy("a", "1", "ml"))
    stale = index.bounding("ml")
    generation = index._generation
    index.put_policy(_policy("b", "1", "ml"))
    index._cache["ml"] = (generation, stale or [])  # as if a racing lookup stored it after the change
    assert [b.name for b in index.bounding("ml") or []] == ["a", "b"]
