"""A TCP relay on loopback between one operator and the API server, so a test can take the API server
away from that operator alone: every other client (kubectl, the controllers, other clusters on this
machine) keeps it, and the API server keeps its port.

TLS passes through untouched (the API server's certificate names 127.0.0.1, whatever the port).
``refuse()`` cuts every open connection and resets each new one at once, as a stopped API server
does (connection refused, not a hang); ``allow()`` relays again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import socket
import ssl
import struct
import threading
import time
import urllib.parse
from pathlib import Path

import aiohttp
from aiohttp import web


class ApiProxy:
    def __init__(self, upstream: str) -> None:
        parts = urllib.parse.urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 443)
        self.refusing = False
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="api-proxy", daemon=True)

    def start(self) -> ApiProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def refuse(self) -> None:
        self.refusing = True
        self._loop.call_soon_threadsafe(self._cut_all)

    def allow(self) -> None:
        self.refusing = False

    def kubeconfig(self, source: Path, target: Path) -> Path:
        """``source`` with its server replaced by this relay."""
        config = json.loads(source.read_text())
        for cluster in config["clusters"]:
            cluster["cluster"]["server"] = f"https://127.0.0.1:{self.port}"
        target.write_text(json.dumps(config))
        return target

    # The relay ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = int(server.sockets[0].getsockname()[1])
        self._ready.set()
        self._loop.run_forever()

    def _cut_all(self) -> None:
        for writer in list(self._writers):
            _reset(writer)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _reset(writer)
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._writers -= {writer, up_writer}
            for w in (writer, up_writer):
                w.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError, RuntimeError):
        writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a port nobody listens on answers."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError, RuntimeError):
        writer.transport.abort()


class ThrottlingProxy:
    """An HTTPS relay that speaks HTTP, between one operator and the API server: it can answer 429 with
    Retry-After (as an API server under priority-and-fairness load does) and add latency, and it records
    every request, so a test can see whether the operator waits as asked."""

    def __init__(self, upstream: str, upstream_ca: bytes, workdir: Path) -> None:
        from stockade.admission import certs

        self.upstream = upstream.rstrip("/")
        self.upstream_ca = upstream_ca
        self.paths = certs.ensure(workdir / "proxy-tls", ["localhost"], ["127.0.0.1"])
        self.throttle_until = 0.0
        self.retry_after = 2
        self.latency = 0.0
        # (monotonic time: when a request arrived, or when its 429 went out; method; path?query #body hash;
        # status or 0)
        self.requests: list[tuple[float, str, str, int]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="throttling-proxy", daemon=True)

    def start(self) -> ThrottlingProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the throttling proxy did not start")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def throttle(self, seconds: float) -> None:
        self.throttle_until = time.monotonic() + seconds

    def kubeconfig(self, source: Path, target: Path) -> Path:
        config = json.loads(source.read_text())
        for cluster in config["clusters"]:
            cluster["cluster"]["server"] = f"https://127.0.0.1:{self.port}"
            cluster["cluster"].pop("certificate-authority", None)
            cluster["cluster"]["certificate-authority-data"] = base64.b64encode(self.paths.ca_bundle()).decode()
        target.write_text(json.dumps(config))
        return target

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        upstream_tls = ssl.create_default_context(cadata=self.upstream_ca.decode())
        serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        serving.load_cert_chain(str(self.paths.cert), str(self.paths.key))

        async def relay(request: web.Request) -> web.StreamResponse:
            arrived = time.monotonic()
            data = await request.read()
            # The same request again: method, path and body (a new Event to the same path is not a re-send).
            path = f"{request.path_qs} #{hashlib.sha256(data).hexdigest()[:8]}" if data else request.path_qs
            watch = request.query.get("watch") in ("true", "1")
            if self.latency:
                await asyncio.sleep(self.latency)
            if not watch and arrived < self.throttle_until:
                # Recorded when the answer goes out: a request that arrives later is a re-send.
                self.requests.append((time.monotonic(), request.method, path, 429))
                body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 429,
                        "reason": "TooManyRequests", "message": "too many requests, please try again later",
                        "details": {"retryAfterSeconds": self.retry_after}}
                return web.json_response(body, status=429, headers={"Retry-After": str(self.retry_after)})
            self.requests.append((arrived, request.method, path, 0))
            headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
            async with session.request(request.method, self.upstream + request.path_qs, headers=headers,
                                       data=data or None,
                                       ssl=upstream_tls, timeout=aiohttp.ClientTimeout(total=None)) as upstream:
                out = web.StreamResponse(status=upstream.status, headers={
                    k: v for k, v in upstream.headers.items()
                    if k.lower() not in ("content-length", "transfer-encoding", "content-encoding", "connection")})
                await out.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await out.write(chunk)
                await out.write_eof()
                return out

        async def make_session() -> aiohttp.ClientSession:
            return aiohttp.ClientSession(auto_decompress=False)

        session = self._loop.run_until_complete(make_session())
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", relay)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=serving)
        self._loop.run_until_complete(site.start())
        self.port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()
