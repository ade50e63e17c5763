"""kopf's HTTPS webhook server on a thread and event loop of its own.

The operator's main loop also handles every watch event: a burst of pod creations brings
hundreds of them, and a webhook request queued behind them waits for all. On its own loop a
request waits at most for the interpreter to switch threads. kopf still provides TLS from the same
settings and the handler registry; Stockade's handlers are called directly (stockade.admission.dispatch,
a tenth of kopf's per-request cost) and kopf serves whatever that declines (``kopf.WebhookServer._serve``).
Handlers that run here only read the operator's state and hand any writes back to the main loop.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import ssl
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp.web
import kopf

from stockade.admission.config import AdmissionSettings
from stockade.admission.dispatch import Dispatcher
from stockade.admission.metrics import SERVED

log = logging.getLogger("stockade.admission")


# A trivial webhook beside the real ones (STOCKADE_ADMISSION_FLOOR_ENDPOINT; bench/admission_latency.py): under
# /stockade-floor/<id> it allows every request, on the same thread, loop, TLS and certificate, so a benchmark that
# points each webhook at its own such path (one client and connection pool per URL in the API server, as for the
# real ones) measures what serving any webhook costs here, and the ratio isolates ours.
FLOOR_PATH = "stockade-floor"


async def _allow(request: aiohttp.web.Request) -> aiohttp.web.Response:
    review = json.loads(await request.read())
    return aiohttp.web.json_response({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                                      "response": {"uid": review["request"]["uid"], "allowed": True}})


class _ServerThread(threading.Thread):
    def __init__(self, fn: Any, addr: str | None, port: int, context: ssl.SSLContext | None, *,
                 floor: bool = False) -> None:
        super().__init__(name="stockade-webhook", daemon=True)
        self.fn = fn
        self.floor = floor
        self.addr = addr
        self.port = port
        self.context = context
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def run(self) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        runner: aiohttp.web.AppRunner | None = None
        try:
            dispatcher = Dispatcher(self.fn)

            async def serve(request: aiohttp.web.Request) -> aiohttp.web.Response:
                started = time.perf_counter()
                try:
                    try:
                        review = json.loads(await request.read())
                    except ValueError:
                        review = None
                    if isinstance(review, dict):
                        answer = await dispatcher.answer(request.match_info.get("id", ""), review)
                        if answer is not None:
                            return aiohttp.web.json_response(answer)
                    return await kopf.WebhookServer._serve(self.fn, request)  # the body read is cached
                finally:
                    SERVED.labels(webhook=request.match_info.get("id", "")).observe(time.perf_counter() - started)

            app = aiohttp.web.Application()
            if self.floor:
                app.add_routes([aiohttp.web.post(f"/{FLOOR_PATH}/{{id:.*}}", _allow)])
            app.add_routes([aiohttp.web.post("/{id:.*}", serve)])
            runner = aiohttp.web.AppRunner(app, handle_signals=False, access_log=None)
            loop.run_until_complete(runner.setup())
            # No reuse_port (kopf's default): a second operator on the same port must fail, not
            # silently share the port and answer for the wrong cluster.
            site = aiohttp.web.TCPSite(runner, self.addr, self.port, ssl_context=self.context)
            loop.run_until_complete(site.start())
        except BaseException as err:
            self.error = err
            self.ready.set()
            loop.close()
            return
        self.ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    def stop(self) -> None:
        if self.loop is not None and self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.join(timeout=10)


class ThreadedWebhookServer(kopf.WebhookServer):
    """A ``kopf.WebhookServer`` whose endpoint runs on its own thread; restarts when the certificate files change."""

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        port = self.port or self._allocate_free_port()
        while True:
            cadata, context = self._build_ssl()
            thread = _ServerThread(fn, self.addr, port, context, floor=AdmissionSettings().admission_floor_endpoint)
            thread.start()
            await asyncio.get_running_loop().run_in_executor(None, thread.ready.wait)
            if thread.error is not None:
                raise thread.error
            log.info("admission webhook listening on %s:%s", self.addr or "*", port)
            try:
                config: dict[str, Any] = {"url": f"https://{self.host or self.addr}:{port}"}
                if cadata is not None:
                    config["caBundle"] = base64.b64encode(cadata).decode()
                yield config
                await self._until_files_change()
                log.info("admission webhook restarting with renewed certificates")
            finally:
                await asyncio.get_running_loop().run_in_executor(None, thread.stop)

    async def _until_files_change(self) -> None:
        paths = [Path(str(p)) for p in (self.certfile, self.pkeyfile, self.cafile) if p is not None]

        def digest() -> str:
            hasher = hashlib.sha256()
            for path in paths:
                hasher.update(path.read_bytes())
            return hasher.hexdigest()

        initial = digest()
        while True:
            await asyncio.sleep(self.file_check_interval)
            try:
                if digest() != initial:
                    return
            except OSError:
                continue  # a Secret being re-mounted: look again later
