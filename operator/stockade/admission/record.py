"""Every refusal (and audit-mode warning) on the record: the AgentRun's status, a Warning Event, a metric.

The webhook answers first and records afterwards, so recording never adds to admission latency.
Violations for the same run are batched into one status write, made with the resourceVersion
as a precondition so that a concurrent writer (the reconciler, detection) is never overwritten
(``stockade.kube.write_status``); repeats fold into a count, and the newest ``keep`` entries are kept
(older ones live on in Events and metrics: ``stockade.violations``).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Mapping
from typing import Any

from stockade import audit, metrics, violations
from stockade.admission.policy import Decision, Request, is_absolute
from stockade.api.reasons import ADMISSION_AUDIT, ADMISSION_REFUSED
from stockade.kube import StatusConflict, object_path, write_status
from stockade.kubeapi import EmitEvent, KubeAPI
from stockade.store import RunKey, Store

log = logging.getLogger("stockade.admission")

BATCH_SECONDS = 0.2
EVENT_DEDUP_SECONDS = 30.0


def violation(req: Request, decision: Decision, now: datetime.datetime) -> dict[str, Any]:
    absolute = any(is_absolute(f) for f in decision.findings)
    entry: dict[str, Any] = {
        "time": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "kind": decision.kind,
        "severity": "critical" if absolute else "high",
        "detail": (decision.message or "; ".join(decision.warnings))[:2000],
        "source": "admission",
        "action": decision.action,
        "evidence": {
            "operation": req.operation,
            "resource": f"{req.resource}/{req.subresource}" if req.subresource else req.resource,
            "group": req.group,
            "name": req.name,
            "user": req.username,
            "groups": list(req.groups),
            "findings": [{"kind": f.kind, "field": f.field} for f in decision.findings],
        },
    }
    if req.target == ("", "pods") and req.name:
        entry["pod"] = req.name
    return entry


class Recorder:
    def __init__(self, kube: KubeAPI, store: Store, keep: int, post: EmitEvent) -> None:
        # Made on the operator's main loop, where the store lives; the webhook's thread hands over.
        self.loop = asyncio.get_running_loop()
        self.kube = kube
        self.store = store
        self.keep = keep
        self.post = post  # the operator's one EventPoster (fire and forget)
        self._queued: dict[RunKey, list[dict[str, Any]]] = {}
        self._events: dict[tuple[RunKey, str], float] = {}

    def record(self, key: RunKey, req: Request, decision: Decision) -> None:
        """Queue the record and return at once (from any thread): it is written after the answer."""
        self.loop.call_soon_threadsafe(self._record_safely, key, req, decision)

    def _record_safely(self, key: RunKey, req: Request, decision: Decision) -> None:
        try:
            self._record(key, req, decision)
        except Exception:
            log.exception("could not record an admission %s on AgentRun %s/%s", decision.action, *key)

    def _record(self, key: RunKey, req: Request, decision: Decision) -> None:
        metrics.VIOLATIONS.labels(namespace=key[0], kind=decision.kind, source="admission",
                                  action=decision.action).inc()
        body = self.store.agentruns.get(key)
        if body is not None:
            self._event(key, body, req, decision)
        first = key not in self._queued
        self._queued.setdefault(key, []).append(violation(req, decision, datetime.datetime.now(datetime.UTC)))
        if first:
            asyncio.get_running_loop().create_task(self._flush_later(key))

    def _event(self, key: RunKey, body: Mapping[str, Any], req: Request, decision: Decision) -> None:
        # The same refusal repeated in a loop (a controller retrying) becomes one Event per window.
        token = (key, f"{decision.action}:{req.operation}:{req.target}:{req.name}:{decision.kind}")
        now = time.monotonic()
        if now - self._events.get(token, -EVENT_DEDUP_SECONDS) < EVENT_DEDUP_SECONDS:
            return
        self._events[token] = now
        if len(self._events) > 4096:
            self._events = {k: v for k, v in self._events.items() if now - v < EVENT_DEDUP_SECONDS}
        reason = ADMISSION_REFUSED if decision.action == "denied" else ADMISSION_AUDIT
        detail = decision.message or "would be refused: " + "; ".join(f.text() for f in decision.findings)
        log.warning("violation %s of %s/%s: %s %s in %s by %s %s", decision.kind, key[0], key[1], req.operation,
                    req.what, req.namespace, req.username, decision.action, extra=audit.fields(
                        key, run_namespace=req.namespace or None, pod=req.name if req.target == ("", "pods") else None,
                        kind=decision.kind, source="admission", action=decision.action, user=req.username,
                        incident_id=audit.new_id()))
        self.post(body, "Warning", reason, detail)

    async def _flush_later(self, key: RunKey) -> None:
        await asyncio.sleep(BATCH_SECONDS)
        entries = self._queued.pop(key, [])
        try:
            await self._write(key, entries)
        except Exception:
            log.exception("could not record %d admission violation(s) on AgentRun %s/%s", len(entries), *key)

    async def _write(self, key: RunKey, entries: list[dict[str, Any]]) -> None:
        path = object_path("stockade.io/v1alpha1", "AgentRun", key[0], key[1])

        def append(current: dict[str, Any]) -> Mapping[str, Any]:
            return {"violations": violations.merge((current.get("status") or {}).get("violations") or [], entries,
                                                   self.keep)}

        try:  # a run that is gone records nothing
            await write_status(self.kube, path, append, current=self.store.agentruns.get(key),
                               remember=self.store.put_agentrun)
        except StatusConflict:
            log.warning("gave up recording admission violations on AgentRun %s/%s after repeated conflicts", *key)
