"""The signal endpoint: Falco events (Falcosidekick's webhook output) and the generic schema.

    POST /falco          one Falco event, as Falcosidekick's webhook output posts it
    POST /signal         one generic signal (schema: GET /signal/schema, stockade.detect.schema)
    GET  /signal/schema  the generic signal's JSON Schema
    GET  /healthz        liveness (no authentication)

Callers authenticate with ``Authorization: Bearer <STOCKADE_SIGNAL_TOKEN>`` (Falcosidekick:
``webhook.customHeaders: "Authorization:Bearer <token>"``) or, when STOCKADE_SIGNAL_CLIENT_CA is set,
with a client certificate signed by that CA. A signal must name a pod of some AgentRun's run
namespace; anything else is refused (404) and nothing is done. An accepted violation is queued for
the responder and answered at once (202), so a storm of signals costs the sender nothing and the
operator a queue entry each.
"""

from __future__ import annotations

import hmac
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from stockade import metrics
from stockade.api.models import AgentRunSpec, Violation
from stockade.detect import falco, rules
from stockade.detect.config import DetectSettings
from stockade.detect.schema import Signal, json_schema
from stockade.kube import Kube, KubeError
from stockade.respond import Incident, Responder
from stockade.store import RunKey, Store

log = logging.getLogger("stockade.signals")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SpecOf = Callable[[RunKey, Mapping[str, Any]], AgentRunSpec | None]
SOURCES = {"/falco": "runtime", "/signal": "signal"}


def _json(status: int, **body: Any) -> web.Response:
    return web.json_response(body, status=status)


def pod_ips(pod: Mapping[str, Any]) -> list[str]:
    status = pod.get("status") or {}
    found = [str(ip.get("ip")) for ip in status.get("podIPs") or [] if ip.get("ip")]
    return found or ([str(status["podIP"])] if status.get("podIP") else [])


class SignalServer:
    def __init__(self, settings: DetectSettings, store: Store, kube: Kube, responder: Responder, *, spec_of: SpecOf,
                 now: Callable[[], str]) -> None:
        self.settings = settings
        self.store = store
        self.kube = kube
        self.responder = responder
        self.spec_of = spec_of
        self.now = now
        self.token = settings.token()
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # Serving ----------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.signal_max_body_bytes, middlewares=[self._auth])
        app.router.add_post("/falco", self.falco)
        app.router.add_post("/signal", self.signal)
        app.router.add_get("/signal/schema", self.schema)
        app.router.add_get("/healthz", self.healthz)
        return app

    def ssl_context(self) -> ssl.SSLContext | None:
        if not (self.settings.signal_tls_cert and self.settings.signal_tls_key):
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.settings.signal_tls_cert, self.settings.signal_tls_key)
        if self.settings.signal_client_ca:
            context.load_verify_locations(cafile=str(self.settings.signal_client_ca))
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def enabled(self) -> str | None:
        """None when the endpoint can start; otherwise why not."""
        if not self.settings.signal_port:
            return "STOCKADE_SIGNAL_PORT is 0"
        if self.token is None and not (self.settings.signal_client_ca and self.settings.signal_tls_cert):
            return "no STOCKADE_SIGNAL_TOKEN and no client CA: callers could not be authenticated"
        return None

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.signal_host, self.settings.signal_port,
                           ssl_context=self.ssl_context(), backlog=1024)
        await site.start()
        self.port = self.settings.signal_port
        log.info("signal endpoint on %s:%s (%s)", self.settings.signal_host, self.port,
                 "TLS" if self.ssl_context() else "plain HTTP")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # Authentication ----------------------------------------------------------------------------------
    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/healthz" or self._authenticated(request):
            return await handler(request)
        metrics.SIGNALS.labels(source=SOURCES.get(request.path, "other"), outcome="unauthenticated").inc()
        return web.json_response({"error": "authentication required: a bearer token or a client certificate"},
                                 status=401, headers={"WWW-Authenticate": 'Bearer realm="stockade"'})

    def _authenticated(self, request: web.Request) -> bool:
        if self.settings.signal_client_ca and request.transport is not None and \
                request.transport.get_extra_info("peercert"):
            return True  # the TLS handshake verified the client against the CA
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        return bool(self.token) and scheme.lower() == "bearer" and \
            hmac.compare_digest(value.strip().encode(), (self.token or "").encode())

    # Endpoints ----------------------------------------------------------------------------------------
    async def healthz(self, _: web.Request) -> web.Response:
        return _json(200, ok=True)

    async def schema(self, _: web.Request) -> web.Response:
        return web.json_response(json_schema())

    async def falco(self, request: web.Request) -> web.Response:
        received = time.perf_counter()
        payload = await self._body(request)
        if isinstance(payload, web.Response):
            return payload
        try:
            event = falco.parse(payload)
        except falco.FalcoPayloadError as err:
            return self._refuse("runtime", 400, "invalid", f"not a Falco event: {err}")
        if not event.namespace or not event.pod:
            return self._refuse("runtime", 422, "no-pod", "the event names no pod (k8s.ns.name, k8s.pod.name)")
        owner = await self._owner(event.namespace, event.pod)
        if isinstance(owner, web.Response):
            return owner
        key, body, spec, pod = owner
        status = body.get("status") or {}
        found = rules.judge_runtime(event, spec.grant, status.get("resolvedEgress") or {}, pod_ips(pod), self.now(),
                                    dns_addresses=self.settings.cluster_dns_addresses)
        return self._queue("runtime", key, found, payload, received)

    async def signal(self, request: web.Request) -> web.Response:
        received = time.perf_counter()
        payload = await self._body(request)
        if isinstance(payload, web.Response):
            return payload
        try:
            signal = Signal.model_validate(payload)
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in err.errors())
            return self._refuse("signal", 400, "invalid", f"not a signal ({problems}); see GET /signal/schema")
        owner = await self._owner(signal.namespace, signal.pod, source="signal")
        if isinstance(owner, web.Response):
            return owner
        key, body, spec, _ = owner
        status = body.get("status") or {}
        found = rules.judge_signal(signal, spec.grant, status.get("resolvedEgress") or {}, self.now(),
                                   dns_addresses=self.settings.cluster_dns_addresses)
        return self._queue("signal", key, found, payload, received)

    # Helpers ------------------------------------------------------------------------------------------
    async def _body(self, request: web.Request) -> Any:
        source = SOURCES.get(request.path, "other")
        try:
            return await request.json()
        except ValueError:
            return self._refuse(source, 400, "invalid", "the body is not JSON")

    def _refuse(self, source: str, status: int, outcome: str, message: str) -> web.Response:
        metrics.SIGNALS.labels(source=source, outcome=outcome).inc()
        return _json(status, error=message)

    async def _owner(self, namespace: str, pod: str, source: str = "runtime"
                     ) -> tuple[RunKey, Mapping[str, Any], AgentRunSpec, Mapping[str, Any]] | web.Response:
        """The AgentRun that owns the pod: its run namespace's, and the pod must exist there."""
        key = self.store.run_of_namespace(namespace)
        body = self.store.agentruns.get(key) if key else None
        if key is None or body is None:
            return self._refuse(source, 404, "unknown-pod", f"no AgentRun owns namespace {namespace}; nothing done")
        found = self.store.get("Pod", namespace, pod)
        if found is None:
            try:  # the watch may not have shown a brand-new pod yet
                found = await self.kube.get("v1", "Pod", namespace, pod)
            except KubeError as err:
                log.warning("could not look up pod %s/%s: %s", namespace, pod, err)
        if found is None:
            return self._refuse(source, 404, "unknown-pod", f"pod {namespace}/{pod} does not exist; nothing done")
        spec = self.spec_of(key, body)
        if spec is None:
            return self._refuse(source, 409, "invalid-run", f"AgentRun {key[0]}/{key[1]} has an invalid spec")
        return key, body, spec, found

    def _queue(self, source: str, key: RunKey, found: Violation | None, payload: Any, received: float) -> web.Response:
        run = f"{key[0]}/{key[1]}"
        if found is None:
            metrics.SIGNALS.labels(source=source, outcome="within-grant").inc()
            return _json(200, agentRun=run, violation=None, result="within the grant: nothing to do")
        self.responder.submit(key, [Incident(found, signal=payload, received=received)])
        metrics.SIGNALS.labels(source=source, outcome="accepted").inc()
        return _json(202, agentRun=run, result="queued",
                     violation={"kind": found.kind, "severity": found.severity, "pod": found.pod,
                                "detail": found.detail})
