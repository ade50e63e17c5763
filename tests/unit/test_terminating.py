"""A namespace being deleted refuses every new object (the API server's NamespaceLifecycle admission):
expected while an AgentRun or its namespace is deleted, so a quiet condition, never an error."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

import pytest

from stockade import logconfig, metrics
from stockade.conditions import Observed
from stockade.detect.rungs import RungsMixin
from stockade.inputcheck import terminating_namespace
from stockade.kube import KubeError, _kube_error
from stockade.reconcile_failures import FailureHandling
from stockade.refusals import Refusals
from stockade.store import RunKey, Store

from .test_audit_logs import json_log  # noqa: F401  (a fixture)

# The API server's answer, as kube-apiserver 1.37 sends it for a create in a namespace being deleted.
TERMINATING = json.dumps({
    "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
    "message": 'networkpolicies.networking.k8s.io "stockade-deny-all" is forbidden: unable to create new '
               "content in namespace team-rome because it is being terminated",
    "details": {"name": "stockade-deny-all", "group": "networking.k8s.io", "kind": "networkpolicies",
                "causes": [{"reason": "NamespaceTerminating", "message": "namespace team-rome is being terminated",
                            "field": "metadata.namespace"}]},
}).encode()
KEY = ("team", "rome")


def test_the_api_servers_answer_names_the_namespace_being_deleted() -> None:
    err = _kube_error(403, "Forbidden", TERMINATING)
    assert err.causes == ("NamespaceTerminating",)
    assert err.terminating_namespace == "team-rome"


@pytest.mark.parametrize(("status", "message", "causes", "expected"), [
    (403, "x is forbidden: unable to create new content in namespace ns-1 because it is being terminated", (), "ns-1"),
    (409, "unable to create new content in namespace ns-2 because it is being terminated", (), "ns-2"),
    (403, "forbidden", ("NamespaceTerminating",), ""),  # named by its cause only
    (403, 'User "x" cannot create resource "roles" in namespace "ns"', (), None),  # RBAC: a real error
    (403, 'admission webhook "v.stockade.io" denied the request: no', (), None),
    (500, "unable to create new content in namespace ns because it is being terminated", (), None),
    (409, "object is being deleted: namespaces \"ns\" already exists", (), None),
])
def test_only_a_namespace_being_deleted_is_that(status: int, message: str, causes: tuple[str, ...],
                                                expected: str | None) -> None:
    assert terminating_namespace(status, message, causes) == expected
    assert KubeError(status, "Forbidden", message, causes).terminating_namespace == expected


class Failures(FailureHandling):
    def __init__(self) -> None:
        self.store = Store()
        self._refusals = Refusals()
        self._terminating: dict[RunKey, str] = {}
        self.timers: list[float | None] = []
        self.warned: list[str] = []
        self.statuses: list[Observed] = []

    def _arm_timer(self, key: RunKey, delay: float | None) -> None:
        self.timers.append(delay)

    def _warn_once(self, key: RunKey, body: Mapping[str, Any], reason: str, message: str) -> bool:
        self.warned.append(reason)
        return True

    async def _write_status(self, key: RunKey, body: Mapping[str, Any], observed: Observed,
                            extra: Mapping[str, Any] | None = None) -> None:
        self.statuses.append(observed)


def errors_counted() -> float:
    return sum(sample.value for family in metrics.RECONCILE_ERRORS.collect() for sample in family.samples
               if sample.name.endswith("_total"))


def test_a_reconcile_refused_by_a_namespace_being_deleted_waits_quietly(json_log: Any) -> None:  # noqa: F811
    failures = Failures()
    before = errors_counted()
    err = _kube_error(403, "Forbidden", TERMINATING)
    for _ in range(3):
        asyncio.run(failures._on_failure(KEY, err))
    lines = [line for line in json_log() if line["logger"] == "stockade.reconcile"]
    assert [line["severity"] for line in lines] == ["info"], "said once, at INFO; then DEBUG (not logged)"
    assert lines[0]["run_namespace"] == "team-rome" and "being deleted" in lines[0]["message"]
    assert errors_counted() == before, "not a reconcile error"
    assert failures.timers == [5.0, 5.0, 5.0] and not failures.warned and not failures.statuses
    failures._succeeded(KEY)
    asyncio.run(failures._on_failure(KEY, err))
    assert [line["severity"] for line in json_log()] == ["info"], "a new wait after a success is said again"


def test_any_other_failure_is_still_a_warning_and_counted(json_log: Any) -> None:  # noqa: F811
    failures = Failures()
    before = errors_counted()
    asyncio.run(failures._on_failure(KEY, KubeError(500, "InternalError", "etcd is sad")))
    [line] = json_log()
    assert line["severity"] == "warn" and "retrying" in line["message"]
    assert errors_counted() == before + 1


def test_a_rung_in_a_namespace_being_deleted_is_skipped_not_failed(json_log: Any) -> None:  # noqa: F811
    tries: list[int] = []

    async def apply() -> None:
        tries.append(1)
        raise _kube_error(403, "Forbidden", TERMINATING)

    assert asyncio.run(RungsMixin._step("isolate", apply)) is False
    assert tries == [1], "no retries: the namespace will not take new objects again"
    [line] = json_log()
    assert line["severity"] == "info" and line["outcome"] == "skipped"


def test_kopfs_expected_lines_are_not_warnings_or_errors(json_log: Any) -> None:  # noqa: F811
    posting = logging.getLogger("kopf._core.engines.posting")
    posting.warning("Failed to post an event. Ignoring and continuing. Code: 403. Message: events is forbidden: "
                    "unable to create new content in namespace team because it is being terminated.")
    posting.warning("Failed to post an event. Ignoring and continuing. Code: 404. Message: namespaces \"team\" not "
                    "found. Details: {'name': 'team', 'kind': 'namespaces'}")
    posting.warning("Failed to post an event. Ignoring and continuing. Code: 500. Message: etcd is sad.")
    objects = logging.getLogger("kopf.objects")
    objects.error("Webhook 'allowlist' failed permanently: Stockade refused CREATE of Pod p in run namespace ns")
    objects.error("Handler 'agentrun_event' failed with an exception. Will retry.")
    assert [line["message"] for line in json_log()] == [
        "Failed to post an event. Ignoring and continuing. Code: 500. Message: etcd is sad.",
        "Handler 'agentrun_event' failed with an exception. Will retry."], "a refusal is not an error; a bug is"
    logconfig.configure(json_logs=True, verbose=False)  # configured twice: still one filter
    assert sum(isinstance(f, logconfig.Demote) for f in posting.filters) == 2
