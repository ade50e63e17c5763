"""Which replica acts: kopf peering decides, and this module lets the rest of the operator know.

kopf pauses a replica's handlers while a live peer with a higher priority exists, but it tells no
one else: the signal endpoint, the webhook configurations and the readiness probe would go on as if
the replica led. ``Leadership`` reads the same ClusterKopfPeering kopf writes and applies kopf's own
rule (``kopf._core.engines.peering.process_peering_event``): active while no other live peer has a
priority at or above ours. A standby replica is not ready (the Services send it nothing), answers a
signal that reaches it anyway with 503 and Retry-After, and writes no webhook configuration; the one
that becomes active writes them again (its URL and the shared CA), so a dead leader leaves nothing
pointing at itself for longer than the peering lifetime.

Priorities: a newer replica has a higher one (its start time in milliseconds), so a rolling update
hands over to the new pod at once and the old one pauses before it goes.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from stockade.kube import Kube, KubeError

log = logging.getLogger("stockade.leadership")

POLL_SECONDS = 1.0


def start_priority() -> int:
    """Newer replicas win: milliseconds since the epoch at start."""
    return time.time_ns() // 1_000_000


def _parse(stamp: str) -> datetime.datetime | None:
    try:
        parsed = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def is_active(peers: Mapping[str, Any], identity: str, priority: int, now: datetime.datetime) -> bool:
    """kopf's rule, from the peering object's status: no other live peer at or above our priority."""
    for other in live_peers(peers, now):
        if other == identity:
            continue
        try:
            theirs = int(peers[other].get("priority") or 0)
        except (TypeError, ValueError):
            continue
        if theirs >= priority:
            return False
    return True


def live_peers(peers: Mapping[str, Any], now: datetime.datetime) -> dict[str, float]:
    """The peers of one peering object's status still within their lifetime: identity -> seconds since seen."""
    found: dict[str, float] = {}
    for identity, info in peers.items():
        if not isinstance(info, Mapping):
            continue
        seen = _parse(str(info.get("lastseen") or ""))
        try:
            lifetime = int(info.get("lifetime") or 0)
        except (TypeError, ValueError):
            continue
        if seen is not None and seen + datetime.timedelta(seconds=lifetime) > now:
            found[identity] = max(0.0, (now - seen).total_seconds())
    return found


class Leadership:
    """``active`` for everyone to read; callbacks run on each change (both directions)."""

    def __init__(self, kube: Kube | None, peering: str | None, identity: str, priority: int) -> None:
        self.kube = kube
        self.peering = peering
        self.identity = identity
        self.priority = priority
        # Standalone (no peering): the only replica, always active.
        self.active = peering is None
        self._on_change: list[Callable[[bool], Awaitable[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self._unreadable = False

    def on_change(self, callback: Callable[[bool], Awaitable[None]]) -> None:
        """Called on every change from now on (read ``active`` for the state now)."""
        self._on_change.append(callback)

    async def start(self) -> None:
        if self.peering is None:
            return
        await self._poll_once()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="stockade-leadership")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                await self._poll_once()
            except Exception:
                log.exception("checking the peering failed; keeping the last answer (%s)",
                              "active" if self.active else "standby")

    async def _poll_once(self) -> None:
        assert self.kube is not None and self.peering is not None
        try:
            body = await self.kube.call("GET", f"/apis/kopf.dev/v1/clusterkopfpeerings/{self.peering}")
        except KubeError as err:
            if not self._unreadable:  # once per outage, not every second of it
                log.warning("could not read the peering %s: %s; keeping the last answer (%s)", self.peering,
                            err.reason, "active" if self.active else "standby")
            self._unreadable = True
            return
        self._unreadable = False
        now = datetime.datetime.now(datetime.UTC)
        await self._set(is_active(body.get("status") or {}, self.identity, self.priority, now))

    async def _set(self, active: bool) -> None:
        first = self._task is None
        if active == self.active and not first:
            return
        self.active = active
        log.info("this replica is %s", "active" if active else "on standby",
                 extra={"identity": self.identity, "priority": self.priority})
        for callback in self._on_change:
            try:
                await callback(active)
            except Exception:
                log.exception("a leadership callback failed")


class Readiness:
    """``GET /readyz``: 200 on the active replica once started, 503 on a standby (the chart's readiness
    probe, so that the webhook and signal Services send requests to the active replica only)."""

    def __init__(self, leadership: Leadership, host: str, port: int) -> None:
        self.leadership = leadership
        self.host = host
        self.port = port
        self._runner: Any = None

    async def start(self) -> None:
        from aiohttp import web

        async def readyz(_: web.Request) -> web.Response:
            if self.leadership.active:
                return web.json_response({"ready": True, "role": "active"})
            return web.json_response({"ready": False, "role": "standby"}, status=503)

        app = web.Application()
        app.router.add_get("/readyz", readyz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.host, self.port).start()
        except OSError as err:
            await self._runner.cleanup()
            raise RuntimeError(f"the readiness endpoint cannot listen on {self.host}:{self.port} ({err}); "
                               "set STOCKADE_READY_PORT to a free port, or 0 to turn it off") from err

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def peering_identity() -> str:
    """kopf's own choice (POD_ID in a pod, else user@host/start/random), made once so that kopf and
    ``Leadership`` agree on which peer is us."""
    from kopf._core.engines.peering import detect_own_id

    return str(detect_own_id(manual=False))
