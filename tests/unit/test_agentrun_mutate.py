"""The mutating AgentRun webhook's decisions: the finalizer on creation, release only with the verb."""

from __future__ import annotations

from typing import Any

import jsonpatch
import pytest

from stockade import labels
from stockade.admission import agentrun_mutate as m


def run(annotations: dict[str, str] | None = None, finalizers: list[str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "rome-42", "namespace": "ml-research"}
    if annotations is not None:
        meta["annotations"] = annotations
    if finalizers is not None:
        meta["finalizers"] = finalizers
    return {"apiVersion": "stockade.io/v1alpha1", "kind": "AgentRun", "metadata": meta, "spec": {}}


def patched(obj: dict[str, Any], result: m.Mutation) -> dict[str, Any]:
    out: dict[str, Any] = jsonpatch.apply_patch(obj, result.ops)
    return out


def test_create_adds_the_finalizer_once_and_keeps_others() -> None:
    fresh = patched(run(), m.mutate("CREATE", run(), None, username="alice", may_release=None))
    assert fresh["metadata"]["finalizers"] == [labels.FINALIZER]
    other = run(finalizers=["example.com/keep"])
    kept = patched(other, m.mutate("CREATE", other, None, username="alice", may_release=None))
    assert kept["metadata"]["finalizers"] == ["example.com/keep", labels.FINALIZER]
    already = run(finalizers=[labels.FINALIZER])
    assert m.mutate("CREATE", already, None, username="alice", may_release=None).ops == []


def test_an_update_without_a_release_change_is_untouched() -> None:
    same = run({labels.RELEASE_ANNOTATION: "bob"})
    assert m.release_requested(same, same) is None
    assert m.mutate("UPDATE", same, same, username="eve", may_release=False) == m.Mutation([])


@pytest.mark.parametrize("old", [run(), run({labels.RELEASE_ANNOTATION: "bob"}), run({"other": "x"})])
def test_a_release_without_the_verb_is_refused(old: dict[str, Any]) -> None:
    new = run({**((old["metadata"].get("annotations")) or {}), labels.RELEASE_ANNOTATION: "security-team"})
    assert m.release_requested(new, old) == "security-team"
    result = m.mutate("UPDATE", new, old, username="team-dev", may_release=False)
    assert result.ops == [] and result.refusal is not None
    assert "'release'" in result.refusal and "team-dev" in result.refusal and m.RELEASER_ROLE in result.refusal


@pytest.mark.parametrize("annotations", [None, {}, {"keep": "me"}])
def test_a_release_records_the_authenticated_user_not_the_written_name(annotations: dict[str, str] | None) -> None:
    old = run(annotations)
    new = run({**(annotations or {}), labels.RELEASE_ANNOTATION: "security-team"})
    result = m.mutate("UPDATE", new, old, username="alice@example.com", may_release=True)
    assert result.refusal is None
    out = patched(new, result)
    assert out["metadata"]["annotations"][labels.RELEASE_ANNOTATION] == "alice@example.com"
    assert {k: v for k, v in out["metadata"]["annotations"].items() if k != labels.RELEASE_ANNOTATION} == \
        (annotations or {})


def test_a_release_on_create_needs_the_verb_too() -> None:
    new = run({labels.RELEASE_ANNOTATION: "x"})
    assert m.mutate("CREATE", new, None, username="eve", may_release=False).refusal is not None


def test_the_review_asks_for_the_release_verb_on_that_run() -> None:
    review = m.release_review("alice", ("team-a", "system:authenticated"), uid="u-1",
                              extra={"scopes": ["a"], "single": "b"}, namespace="ml", name="rome-42")
    assert review["spec"]["resourceAttributes"] == {"group": "stockade.io", "resource": "agentruns",
                                                    "verb": "release", "namespace": "ml", "name": "rome-42"}
    assert review["spec"]["groups"] == ["team-a", "system:authenticated"] and review["spec"]["uid"] == "u-1"
    assert review["spec"]["extra"] == {"scopes": ["a"], "single": ["b"]}
