"""kopf wiring for detection: start the signal endpoint and the Prometheus poller, watch run namespaces.

Imported by ``stockade.handlers`` after its own handlers, so this startup handler runs after the one
that builds RUNTIME. Handlers here only feed the detector and the responder; the rules decide.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from stockade import kinds, labels
from stockade.api.models import GROUP, PLURAL, VERSION
from stockade.detect.config import DetectSettings
from stockade.detect.prom import Poller
from stockade.detect.server import SignalServer
from stockade.detect.watch import ApiDetector
from stockade.reconcile import stamp, utcnow
from stockade.respond import EventPoster, FallbackEmit, Responder
from stockade.runtime import RUNTIME

log = logging.getLogger("stockade.detect")

# Objects in a run namespace that the grant does not cover (or guardrails someone edited).
WATCHED: list[tuple[str, str, str, str]] = [  # (api group, version, plural, kind)
    (kind.group, kind.version, kind.plural, kind.kind) for kind in kinds.DETECTED]


@dataclass
class Detection:
    settings: DetectSettings
    responder: Responder
    detector: ApiDetector
    server: SignalServer | None = None
    poller: Poller | None = None


STATE: dict[str, Detection] = {}


def _now() -> str:
    return stamp(utcnow())


def current() -> Detection | None:
    return STATE.get("detection")


@kopf.on.startup()
async def start_detection(**_: Any) -> None:
    if not hasattr(RUNTIME, "reconciler"):
        raise kopf.TemporaryError("the operator's runtime is not built yet", delay=1)
    if current() is not None:
        return
    settings = DetectSettings()
    poster = EventPoster(RUNTIME.kube, _now)
    # The responder triggers reconciles from its own tasks, where kopf.event cannot post.
    RUNTIME.reconciler.emit = FallbackEmit(RUNTIME.reconciler.emit, poster)
    responder = Responder(RUNTIME.kube, RUNTIME.store, poster, settings=settings,
                          trigger=RUNTIME.reconciler.trigger_soon, now=_now)
    detector = ApiDetector(RUNTIME.store, responder, _now)
    RUNTIME.reconciler.extensions.append(detector.on_reconcile)
    detection = Detection(settings, responder, detector)
    server = SignalServer(settings, RUNTIME.store, RUNTIME.kube, responder, spec_of=detector.spec, now=_now)
    leadership = RUNTIME.leadership
    server.standby = lambda: not leadership.active
    why_not = server.enabled()
    if why_not is None:
        try:
            await server.start()
            detection.server = server
        except OSError as err:
            log.error("the signal endpoint could not start on %s:%s: %s", settings.signal_host, settings.signal_port,
                      err)
    else:
        log.warning("signal endpoint off: %s", why_not)
    if settings.prometheus_url:
        detection.poller = Poller(settings, RUNTIME.store, responder, detector.spec, _now)
        detection.poller.standby = server.standby
        detection.poller.start()
    STATE["detection"] = detection


@kopf.on.cleanup()
async def stop_detection(**_: Any) -> None:
    detection = STATE.pop("detection", None)
    if detection is None:
        return
    if detection.server is not None:
        await detection.server.stop()
    if detection.poller is not None:
        await detection.poller.stop()


def _in_run_namespace(namespace: str | None, **_: Any) -> bool:
    return bool(namespace) and hasattr(RUNTIME, "store") and RUNTIME.store.is_run_namespace(namespace or "")


def _register(group: str, version: str, plural: str, kind: str) -> None:
    api_version = f"{group}/{version}" if group else version

    async def detect_event(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
        detection = current()
        if detection is None:
            return
        obj = dict(body)
        obj.setdefault("kind", kind)
        obj.setdefault("apiVersion", api_version)
        detection.detector.on_object(obj, event.get("type"))

    kopf.on.event(group, version, plural, id=f"detect_{plural}", when=_in_run_namespace)(detect_event)


for _group, _version, _plural, _kind in WATCHED:
    _register(_group, _version, _plural, _kind)


@kopf.on.event(GROUP, VERSION, PLURAL, annotations={labels.RELEASE_ANNOTATION: kopf.PRESENT})
async def release_requested(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
    """``stockade release`` (or anyone) set the release annotation: lift the quarantine, once."""
    detection = current()
    if detection is None or event.get("type") == "DELETED":
        return
    key = RUNTIME.store.put_agentrun(body)
    stored = RUNTIME.store.agentruns.get(key) or {}
    by = ((stored.get("metadata") or {}).get("annotations") or {}).get(labels.RELEASE_ANNOTATION)
    if by is None:
        return  # already handled: the stored object is newer and has no annotation
    detection.responder.release_soon(key, str(by)[:253] or "unknown")
