"""Events on an AgentRun: the one poster every part of the operator posts with (the reconciler, its budget
gate and lifecycle, admission's guard and recorder, the responder).

Fire and forget: an Event never delays a reconcile or a response. Events of one AgentRun are posted in the
order they were emitted, one at a time; those of different runs side by side. A post the API server could
not take (no connection, 5xx, throttled) is tried again after a backoff, as kopf posted its Events; one it
refused, or one whose namespace is going, is dropped. :meth:`EventPoster.flush` (the app's stop) waits for
what is still queued, so the Events of the last moments are not lost at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from stockade.clock import stamp, utcnow
from stockade.kube import KubeError
from stockade.kubeapi import EmitEvent, KubeAPI

log = logging.getLogger("stockade.events")

__all__ = ["BACKOFFS", "COMPONENT", "EmitEvent", "EventPoster", "reporting_instance"]

# Every Event the operator posts (and kopf's own, which stockade.handlers names the same) names this
# component: `kubectl describe`'s "From" (core/v1 source.component) and events.k8s.io/v1's reportingController.
COMPONENT = "stockade"
INSTANCE_MAX = 128  # the API server's limit on reportingInstance
MESSAGE_MAX = 1000
# Seconds between tries of a post the API server could not take (kopf's default for its Events).
BACKOFFS = (1.0, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0)
FLUSH_SECONDS = 10.0  # the most the app's stop waits for queued Events

Queued = tuple[Mapping[str, Any], str, str, str, str]  # (body, type, reason, message, when emitted)


def reporting_instance() -> str:
    """Which replica posted: its peering identity (the pod's name in a pod), else the host's name."""
    return (os.environ.get("STOCKADE_PEERING_IDENTITY") or socket.gethostname())[:INSTANCE_MAX]


def event_body(body: Mapping[str, Any], kind: str, reason: str, message: str, at: str) -> dict[str, Any]:
    """The core/v1 Event on the AgentRun ``body`` (pure)."""
    meta = body["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": "stockade.io/v1alpha1", "kind": "AgentRun", "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta.get("uid")},
        "type": kind,
        "reason": reason,
        "message": message[:MESSAGE_MAX],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": reporting_instance(),
        "firstTimestamp": at,
        "lastTimestamp": at,
        "count": 1,
    }


class EventPoster:
    """``poster(body, type, reason, message)``: queue an Event on the AgentRun ``body`` and return at once."""

    def __init__(self, kube: KubeAPI, now: Callable[[], str] | None = None, *, backoffs: Iterable[float] = BACKOFFS,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.kube = kube
        self.now = now or (lambda: stamp(utcnow()))
        self.backoffs = tuple(backoffs)
        self.sleep = sleep
        self._queues: dict[tuple[str, str], deque[Queued]] = {}  # per AgentRun, in the order emitted
        self._workers: dict[tuple[str, str], asyncio.Task[None]] = {}

    def __call__(self, body: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        meta = body["metadata"]
        key = (str(meta["namespace"]), str(meta["name"]))
        self._queues.setdefault(key, deque()).append((body, kind, reason, message, self.now()))
        if key not in self._workers:
            task = asyncio.get_running_loop().create_task(self._drain(key), name=f"events of {key[0]}/{key[1]}")
            self._workers[key] = task

    async def _drain(self, key: tuple[str, str]) -> None:
        queue = self._queues[key]
        try:
            while queue:
                body, kind, reason, message, at = queue[0]
                try:
                    await self.post(body, kind, reason, message, at=at)
                except Exception:  # never lose the queue to one bad Event
                    log.exception("could not post event %s on %s/%s", reason, key[0], key[1])
                queue.popleft()
        finally:
            self._workers.pop(key, None)
            if not queue:
                self._queues.pop(key, None)

    async def post(self, body: Mapping[str, Any], kind: str, reason: str, message: str, *,
                   at: str | None = None) -> None:
        """Post one Event now, trying again while the API server cannot take it (``backoffs``)."""
        meta = body["metadata"]
        event = event_body(body, kind, reason, message, at or self.now())
        for attempt, delay in enumerate((*self.backoffs, None)):
            try:
                await self.kube.create(event)
                return
            except KubeError as err:
                if err.terminating_namespace is not None or (err.not_found and 'namespaces "' in err.message):
                    # The AgentRun goes with its namespace: expected.
                    log.debug("no event %s on %s/%s: its namespace is being deleted or gone", reason,
                              meta["namespace"], meta["name"])
                    return
                if delay is None or not err.transient:  # a refusal (4xx) or the last try
                    log.warning("could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], err)
                    return
                wait = max(delay, err.retry_after or 0.0)
                log.info("event %s on %s/%s not posted yet (%s); trying again in %.0fs (%d)", reason,
                         meta["namespace"], meta["name"], err, wait, attempt + 1)
                await self.sleep(wait)

    def pending(self) -> int:
        """Events queued and not posted yet."""
        return sum(len(queue) for queue in self._queues.values())

    async def flush(self, seconds: float | None = None) -> bool:
        """Wait until every queued Event is posted (or given up on); False if ``seconds`` passed first (what was
        left is logged and cancelled)."""
        loop = asyncio.get_running_loop()
        deadline = None if seconds is None else loop.time() + seconds
        while self._workers:  # Events emitted meanwhile are waited for too
            left = None if deadline is None else max(deadline - loop.time(), 0.0)
            _, waiting = await asyncio.wait(list(self._workers.values()), timeout=left)
            if waiting:
                log.warning("%d event(s) not posted before shutdown", self.pending())
                for task in waiting:
                    task.cancel()
                await asyncio.gather(*waiting, return_exceptions=True)
                return False
        return True
