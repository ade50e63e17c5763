"""Detection's parts, started by the composition root (:mod:`stockade.app`): the signal endpoint and the
Prometheus poller. The objects it judges in run namespaces come from the watch layer (:mod:`stockade.watch`,
the kinds marked ``detected`` in :mod:`stockade.kinds`). Everything here only feeds the detector and the
responder; the rules decide.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from stockade import labels
from stockade.detect.config import DetectSettings
from stockade.detect.prom import Poller
from stockade.detect.respond import Responder
from stockade.detect.server import SignalServer
from stockade.detect.watch import ApiDetector
from stockade.kube import Kube
from stockade.store import Store

log = logging.getLogger("stockade.detect")


class Detection:
    def __init__(self, settings: DetectSettings, kube: Kube, store: Store, responder: Responder, *,
                 detector: ApiDetector, now: Callable[[], str], standby: Callable[[], bool]) -> None:
        self.settings = settings
        self.store = store
        self.responder = responder
        self.detector = detector
        self.server = SignalServer(settings, store, kube, responder, now=now)
        self.server.standby = standby  # another replica leads: this one judges nothing
        self.poller = Poller(settings, store, responder, now) if settings.prometheus_url else None
        if self.poller is not None:
            self.poller.standby = standby
        self._serving = False

    async def start(self) -> None:
        why_not = self.server.enabled()
        if why_not is None:
            try:
                await self.server.start()
                self._serving = True
            except OSError as err:
                log.error("the signal endpoint could not start on %s:%s: %s", self.settings.signal_host,
                          self.settings.signal_port, err)
        else:
            log.warning("signal endpoint off: %s", why_not)
        if self.poller is not None:
            self.poller.start()

    async def stop(self) -> None:
        if self._serving:
            await self.server.stop()
        if self.poller is not None:
            await self.poller.stop()

    def release_requested(self, event: Mapping[str, Any], body: Mapping[str, Any]) -> None:
        """``stockade release`` (or anyone) set the release annotation: lift the quarantine, once."""
        if event.get("type") == "DELETED":
            return
        key = self.store.put_agentrun(body)
        stored = self.store.agentruns.get(key) or {}
        by = ((stored.get("metadata") or {}).get("annotations") or {}).get(labels.RELEASE_ANNOTATION)
        if by is None:
            return  # already handled: the stored object is newer and has no annotation
        self.responder.release_soon(key, str(by)[:253] or "unknown")
