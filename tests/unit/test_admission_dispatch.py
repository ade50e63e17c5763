"""stockade.admission.dispatch answers exactly as kopf's own admission engine would, for the same handlers and
requests (kopf's serve_admission_request is the reference, run in-process), and declines what it cannot."""

from __future__ import annotations

import asyncio
import copy
import functools
from typing import Any

import kopf
import pytest
from kopf._cogs.structs import references
from kopf._core.engines import admission
from kopf._core.reactor import inventory

from stockade.admission.dispatch import Dispatcher

PODS = references.Resource(group="", version="v1", plural="pods", kind="Pod", namespaced=True,
                           verbs=["create", "list", "watch"], subresources=["status", "ephemeralcontainers"])
SEEN: list[dict[str, Any]] = []


def _registry() -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.validate(lambda _resource: True, id="everything", registry=registry, subresource="*")
    async def everything(**kwargs: Any) -> None:
        SEEN.append({k: kwargs[k] for k in ("operation", "subresource", "dryrun", "userinfo")}
                    | {"kind": kwargs["resource"].kind, "name": (kwargs["new"] or kwargs["old"])["metadata"]["name"]})
        kwargs["warnings"].append("careful")
        labels = ((kwargs["new"] or {}).get("metadata") or {}).get("labels") or {}
        if labels.get("refuse"):
            raise kopf.AdmissionError("refused: " + labels["refuse"], code=403)
        if labels.get("crash"):
            raise RuntimeError("a bug")
        kwargs["patch"].as_json_patch = lambda *_a, **_k: []

    @kopf.on.mutate("", "v1", "pods", id="pods-only", registry=registry, operations=["CREATE"])
    async def pods_only(**kwargs: Any) -> None:
        ops = [{"op": "add", "path": "/metadata/labels/seen", "value": "yes"}]
        kwargs["patch"].as_json_patch = lambda *_a, **_k: ops

    @kopf.on.validate("", "v1", "pods", id="status-only", registry=registry, subresource="status")
    async def status_only(**_: Any) -> None:
        raise kopf.AdmissionError("status refused")

    @kopf.on.validate("", "v1", "pods", id="memo", registry=registry)
    async def memo(memo: kopf.Memo, **_: Any) -> None:  # as stockade.handlers reaches the composition root
        raise kopf.AdmissionError(f"refused by {memo['app']}")

    @kopf.on.validate("", "v1", "pods", id="labelled", registry=registry, labels={"x": "y"})
    async def labelled(**_: Any) -> None:
        raise kopf.AdmissionError("labelled refused")

    return registry


def _fn() -> Any:
    insights = references.Insights()
    insights.webhook_resources.add(PODS)
    return functools.partial(admission.serve_admission_request, settings=kopf.OperatorSettings(),
                             registry=_registry(), insights=insights, memories=inventory.ResourceMemories(),
                             memobase=kopf.Memo(app="the app"), indices={})


def review(operation: str = "CREATE", *, labels: dict[str, str] | None = None, subresource: str | None = None,
           resource: str = "pods") -> dict[str, Any]:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns", "labels": labels or {}},
           "spec": {"containers": [{"name": "c", "image": "i"}]}}
    request: dict[str, Any] = {
        "uid": "u-7", "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": resource}, "operation": operation,
        "userInfo": {"username": "alice", "groups": ["g"]}, "dryRun": False, "namespace": "ns", "name": "p",
        "object": None if operation == "DELETE" else pod, "oldObject": pod if operation != "CREATE" else None}
    if subresource:
        request["subResource"] = subresource
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


CASES = [
    ("everything", review()),
    ("everything", review(labels={"refuse": "no"})),
    ("everything", review(labels={"crash": "1"})),
    ("everything", review("UPDATE", subresource="status")),
    ("everything", review("DELETE")),
    ("pods-only", review()),
    ("pods-only", review("DELETE")),  # kopf calls no mutating handler on DELETE
    ("status-only", review("UPDATE")),  # another subresource: no handler, allowed
    ("status-only", review("UPDATE", subresource="status")),
    ("memo", review()),  # the handler gets the operator's memo, as from kopf
]


@pytest.mark.parametrize(("webhook", "request_"), CASES)
def test_the_answer_is_kopfs(webhook: str, request_: dict[str, Any]) -> None:
    fn = _fn()

    async def both() -> tuple[Any, Any, list[Any], list[Any]]:
        SEEN.clear()
        theirs = await fn(copy.deepcopy(request_), webhook=webhook, sslpeer={}, headers={})
        seen_by_kopf = list(SEEN)
        SEEN.clear()
        ours = await Dispatcher(fn).answer(webhook, copy.deepcopy(request_))
        return theirs, ours, seen_by_kopf, list(SEEN)

    theirs, ours, seen_by_kopf, seen_direct = asyncio.run(both())
    assert ours == theirs
    assert seen_direct == seen_by_kopf


@pytest.mark.parametrize(("webhook", "request_"), [
    ("labelled", review(labels={"x": "y"})),  # a filter kopf evaluates
    ("nobody", review()),  # no such handler
    ("everything", review(resource="secrets")),  # a resource kopf does not know: kopf's 404
    ("everything", {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),  # no request
])
def test_what_kopf_must_answer_is_declined(webhook: str, request_: dict[str, Any]) -> None:
    assert asyncio.run(Dispatcher(_fn()).answer(webhook, request_)) is None


def test_without_kopfs_registry_nothing_is_dispatched() -> None:
    async def fn(*_: Any, **__: Any) -> None:
        raise AssertionError("not called")

    assert asyncio.run(Dispatcher(fn).answer("everything", review())) is None
