"""Events on an AgentRun from outside kopf's per-object handlers: one poster for the responder, the
admission recorder and the reconciler's fallback."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

from stockade.clock import stamp, utcnow
from stockade.kube import KubeError
from stockade.kubeapi import EmitEvent, KubeAPI

log = logging.getLogger("stockade.events")

__all__ = ["COMPONENT", "EmitEvent", "EventPoster", "FallbackEmit", "reporting_instance"]

# Every Event the operator posts, kopf's included (stockade.handlers sets kopf's posting settings), names
# this component: `kubectl describe`'s "From" (core/v1 source.component) and events.k8s.io/v1's
# reportingController.
COMPONENT = "stockade"
INSTANCE_MAX = 128  # the API server's limit on reportingInstance


def reporting_instance() -> str:
    """Which replica posted: its peering identity (the pod's name in a pod), else the host's name."""
    return (os.environ.get("STOCKADE_PEERING_IDENTITY") or socket.gethostname())[:INSTANCE_MAX]


class EventPoster:
    """Events on the AgentRun, posted directly: kopf.event works only inside kopf's per-object handler
    tasks, and the responder runs in its own. Fire and forget: an Event never delays a response."""

    def __init__(self, kube: KubeAPI, now: Callable[[], str] | None = None) -> None:
        self.kube = kube
        self.now = now or (lambda: stamp(utcnow()))
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, body: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        task = asyncio.get_running_loop().create_task(self.post(body, kind, reason, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def post(self, body: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        meta = body["metadata"]
        at = self.now()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": "stockade.io/v1alpha1", "kind": "AgentRun", "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta.get("uid")},
            "type": kind,
            "reason": reason,
            "message": message[:1000],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": reporting_instance(),
            "firstTimestamp": at,
            "lastTimestamp": at,
            "count": 1,
        }
        try:
            await self.kube.create(event)
        except KubeError as err:
            if err.terminating_namespace is not None or (err.not_found and 'namespaces "' in err.message):
                # The AgentRun goes with its namespace: expected.
                log.debug("no event %s on %s/%s: its namespace is being deleted or gone", reason, meta["namespace"],
                          meta["name"])
                return
            log.warning("could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], err)

    async def flush(self) -> None:
        await asyncio.gather(*list(self._tasks), return_exceptions=True)


class FallbackEmit:
    """The reconciler's emit (kopf.event) raises LookupError outside kopf's per-object handler tasks,
    and reconciles the responder triggers run in its own tasks: post those Events directly instead."""

    def __init__(self, primary: EmitEvent, fallback: EmitEvent) -> None:
        self.primary = primary
        self.fallback = fallback

    def __call__(self, body: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        try:
            self.primary(body, kind, reason, message)
        except LookupError:
            self.fallback(body, kind, reason, message)
