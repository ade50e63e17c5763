"""What a security team reads in the operator's log: one line for every violation, every rung of the
quarantine ladder, every release, every guardrail restored and every fence completed, each with the same
structured fields (standard ``logging`` ``extra=``; the JSON log writes them as keys). Pure: no kopf, no
API client.

Fields (README "Logs and Events" lists which lines carry which):

* ``agentrun_namespace``, ``agentrun_name``: the AgentRun; ``run_namespace``: its run namespace;
* ``pod``, ``kind``, ``source``, ``violation_severity``: the violation (``severity`` is the line's own
  level; ``kind`` is a restored guardrail's kind on ``restore`` lines);
* ``action``: ``violation``, ``isolate``, ``freeze``, ``evict``, ``release``, ``restore``, ``fence-complete``;
* ``incident_id``: one signal, from the violation line to the rungs it started; ``quarantine_id``: one
  quarantine, from its first rung to its release (derived from the AgentRun's uid and
  ``status.quarantine.since``, so every replica and every restart names it alike);
  ``reconcile_id``: one reconcile pass.

A reconcile pass and a responder batch put the AgentRun (and the pass's id) in a context that every line
logged inside them carries (:class:`ContextFields`, a filter on the log handler).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import logging
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, Protocol, TypeVar

from stockade.api.reasons import FENCE_COMPLETE
from stockade.kubeapi import EmitEvent
from stockade.store import RunKey, Store, uid_of

FIELDS = ("agentrun_namespace", "agentrun_name", "run_namespace", "pod", "kind", "source", "violation_severity",
          "action", "incident_id", "quarantine_id", "reconcile_id")

# Immutable (a tuple of pairs): a context is replaced, never changed in place.
_CONTEXT: contextvars.ContextVar[tuple[tuple[str, Any], ...]] = contextvars.ContextVar("stockade_log_fields",
                                                                                       default=())
log = logging.getLogger("stockade.reconcile")



def new_id() -> str:
    return uuid.uuid4().hex[:12]


def quarantine_id(uid: str, since: str | None) -> str | None:
    """The same quarantine has the same id wherever it is named: its run's uid and its start."""
    if not since:
        return None
    return hashlib.sha256(f"{uid}/{since}".encode()).hexdigest()[:12]


def fields(key: RunKey | None = None, **values: Any) -> dict[str, Any]:
    """``extra=`` for a log call: the AgentRun's namespace and name, then the given fields (None left out)."""
    found: dict[str, Any] = {"agentrun_namespace": key[0], "agentrun_name": key[1]} if key else {}
    found.update((name, value) for name, value in values.items() if value is not None)
    return found


@contextlib.contextmanager
def context(*, fresh: bool = False, **values: Any) -> Iterator[None]:
    """Every line logged inside (in this task, and tasks it starts) carries these fields; ``fresh``: only
    these (a reconcile pass triggered from a responder's task is not that response)."""
    base = {} if fresh else dict(_CONTEXT.get())
    token = _CONTEXT.set(tuple({**base, **{k: v for k, v in values.items() if v is not None}}.items()))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


class ContextFields(logging.Filter):
    """On the log handler: adds the context's fields to each record (a field given in ``extra=`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _CONTEXT.get():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


# The reconcile pass ---------------------------------------------------------------------------------
class _Reconciling(Protocol):
    store: Store
    emit: EmitEvent


R = TypeVar("R", bound=_Reconciling)
Pass = Callable[[R, RunKey], Awaitable[None]]
# Per reconciler: the (uid, generation) whose fence completion was already announced, per run.
_ANNOUNCED: weakref.WeakKeyDictionary[Any, dict[RunKey, tuple[str, int]]] = weakref.WeakKeyDictionary()


def reconcile_pass(method: Pass[R]) -> Pass[R]:
    """Around one reconcile pass: its id and AgentRun in the log context, then FenceComplete if the
    status it left says the fence is complete for a generation for the first time."""

    @functools.wraps(method)
    async def traced(self: R, key: RunKey) -> None:
        body = self.store.agentruns.get(key)
        before = fence_generation(body)
        run_ns = ((body or {}).get("status") or {}).get("runNamespace")
        with context(fresh=True, agentrun_namespace=key[0], agentrun_name=key[1], run_namespace=run_ns,
                     reconcile_id=new_id()):
            await method(self, key)
            announce_fence(self, key, before)

    return traced


def fence_generation(body: Mapping[str, Any] | None) -> int | None:
    """The generation the status says the fence is complete for (GuardrailsReady=True), if any."""
    for cond in ((body or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "GuardrailsReady" and cond.get("status") == "True":
            return int(cond.get("observedGeneration") or 0) or None
    return None


def announce_fence(reconciler: _Reconciling, key: RunKey, before: int | None) -> None:
    """A Normal Event and a log line the first time a generation's fence is complete: not again after a
    guardrail was restored, nor after a restart (the status already said so before the pass)."""
    announced = _ANNOUNCED.setdefault(reconciler, {})
    body = reconciler.store.agentruns.get(key)
    if body is None:
        announced.pop(key, None)
        return
    generation = fence_generation(body)
    if generation is None or generation == before or announced.get(key) == (uid_of(body), generation):
        return
    announced[key] = (uid_of(body), generation)
    run_ns = (body.get("status") or {}).get("runNamespace")
    message = f"every guardrail of generation {generation} is in place in run namespace {run_ns}"
    log.info("fence of %s/%s complete: %s", key[0], key[1], message,
             extra=fields(key, run_namespace=run_ns, action="fence-complete", generation=generation))
    reconciler.emit(body, "Normal", FENCE_COMPLETE, message)


def restoring(kind: str, meta: Mapping[str, Any], what: str) -> None:
    """The log line for a guardrail someone changed or removed, restored from the grant."""
    log.warning("restoring %s %s %s/%s", what, kind, meta.get("namespace", ""), meta["name"],
                extra=fields(kind=kind, guardrail=meta["name"], drift=what, action="restore",
                             run_namespace=meta.get("namespace") or (meta["name"] if kind == "Namespace" else None)))
