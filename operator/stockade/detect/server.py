"""The signal endpoint: Falco events (Falcosidekick's webhook output) and the generic schema.

    POST /falco          one Falco event, as Falcosidekick's webhook output posts it
    POST /signal         one generic signal (schema: GET /signal/schema, stockade.detect.schema)
    GET  /signal/schema  the generic signal's JSON Schema
    GET  /healthz        liveness (no authentication)

Served over HTTPS (STOCKADE_SIGNAL_TLS=false for plain HTTP, an explicit opt-out). Callers
authenticate with ``Authorization: Bearer <STOCKADE_SIGNAL_TOKEN>`` (Falcosidekick:
``webhook.customHeaders: "Authorization:Bearer <token>"``) or, when STOCKADE_SIGNAL_CLIENT_CA is set,
with a client certificate signed by that CA.

A signal must name, by valid names, a pod of some AgentRun's run namespace; anything else is refused
(4xx) and nothing is done. Bodies are bounded before they are parsed (size, then nesting depth on the
raw bytes), and so is the number of requests handled at once (429 beyond it). A violation is answered
202 only once the responder has recorded it in the AgentRun's status, so an answered signal survives
an operator crash and a sender's retries cover everything else (503 with Retry-After when the write
failed or took too long; 429 when the run's queue is full). Identical signals in a storm share one
status write.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import ssl
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from stockade import confine, k8snames, metrics
from stockade.admission import certs
from stockade.api.models import AgentRunSpec, Violation
from stockade.detect import evidence, falco, peers, respond, rules
from stockade.detect.config import DetectSettings
from stockade.detect.respond import Incident, Responder
from stockade.detect.schema import JSONTooDeep, Signal, json_schema, loads_bounded
from stockade.kube import KubeError
from stockade.kubeapi import KubeAPI
from stockade.store import RunKey, Store

log = logging.getLogger("stockade.signals")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SOURCES = {"/falco": "runtime", "/signal": "signal"}


@dataclass(frozen=True)
class _Judged:
    """A signal judged against its run: what waits for the status write (the body is gone by then)."""

    key: RunKey
    violation: Violation | None
    signal: Any  # the bounded copy kept as evidence
    received: float
    pod: Mapping[str, Any]


def _json(status: int, **body: Any) -> web.Response:
    return web.json_response(body, status=status)


pod_ips = peers.addresses


class SignalServer:
    def __init__(self, settings: DetectSettings, store: Store, kube: KubeAPI, responder: Responder, *,
                 now: Callable[[], str]) -> None:
        self.settings = settings
        self.store = store
        self.kube = kube
        self.responder = responder
        self.now = now
        self.token = settings.token()
        self._runner: web.AppRunner | None = None
        self._cert_dir: tempfile.TemporaryDirectory[str] | None = None
        self._reading_bytes = 0
        self._waiting: Counter[RunKey] = Counter()
        self.port: int | None = None
        self.ca_file: Path | None = None  # the CA callers trust, where the operator generated its own
        # True while another replica leads (kopf peering): this one's store is not kept current, so it
        # judges nothing and asks the sender to retry (Falcosidekick does; the Service routes to the leader).
        self.standby: Callable[[], bool] = lambda: False

    # Serving ----------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.signal_max_body_bytes, middlewares=[self._auth])
        app.router.add_post("/falco", self.falco)
        app.router.add_post("/signal", self.signal)
        app.router.add_get("/signal/schema", self.schema)
        app.router.add_get("/healthz", self.healthz)
        return app

    def tls_files(self) -> tuple[Path, Path] | None:
        """The serving certificate and key (None: plain HTTP). Given files win; then a mounted
        directory's tls.crt/tls.key; else a self-signed CA and certificate are made, as for the webhook."""
        s = self.settings
        if not s.signal_tls:
            return None
        if s.signal_tls_cert and s.signal_tls_key:
            return s.signal_tls_cert, s.signal_tls_key
        if s.signal_cert_dir is not None:
            found = certs.paths(s.signal_cert_dir)
            if found.cert.exists() and found.key.exists():
                return found.cert, found.key  # the chart's, cert-manager's or the user's: used as it is
            directory = s.signal_cert_dir
        else:
            self._cert_dir = self._cert_dir or tempfile.TemporaryDirectory(prefix="stockade-signal-")
            directory = Path(self._cert_dir.name)
        made = certs.ensure(directory, list(s.signal_cert_names), self._cert_ips())
        self.ca_file = made.ca
        return made.cert, made.key

    def _cert_ips(self) -> list[str]:
        try:
            address = ipaddress.ip_address(self.settings.signal_host)
        except ValueError:
            return []
        return [] if address.is_unspecified else [str(address)]

    def ssl_context(self) -> ssl.SSLContext | None:
        files = self.tls_files()
        if files is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(*files)
        if self.settings.signal_client_ca:
            context.load_verify_locations(cafile=str(self.settings.signal_client_ca))
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def enabled(self) -> str | None:
        """None when the endpoint can start; otherwise why not."""
        if not self.settings.signal_port:
            return "STOCKADE_SIGNAL_PORT is 0"
        if self.settings.signal_client_ca and not self.settings.signal_tls:
            return "STOCKADE_SIGNAL_CLIENT_CA needs TLS, but STOCKADE_SIGNAL_TLS is false"
        if self.token is None and not self.settings.signal_client_ca:
            return "no STOCKADE_SIGNAL_TOKEN and no client CA: callers could not be authenticated"
        return None

    async def start(self) -> None:
        context = self.ssl_context()
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.signal_host, self.settings.signal_port,
                           ssl_context=context, backlog=1024)
        await site.start()
        self.port = self.settings.signal_port
        if context is None:
            log.warning("signal endpoint on %s:%s in plain HTTP (STOCKADE_SIGNAL_TLS=false): bearer tokens and "
                        "signals travel unencrypted", self.settings.signal_host, self.port)
        else:
            log.info("signal endpoint on https://%s:%s%s", self.settings.signal_host, self.port,
                     f" (self-signed; callers trust {self.ca_file})" if self.ca_file else "")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._cert_dir is not None:
            self._cert_dir.cleanup()
            self._cert_dir = None

    # Authentication ----------------------------------------------------------------------------------
    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/healthz" or self._authenticated(request):
            if request.method == "POST" and self.standby():
                metrics.SIGNALS.labels(source=SOURCES.get(request.path, "other"), outcome="standby").inc()
                return web.json_response({"error": "this replica is on standby; another one leads: retry"},
                                         status=503, headers={"Retry-After": "2"})
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
        return await self._bounded("runtime", request, self._falco)

    async def signal(self, request: web.Request) -> web.Response:
        return await self._bounded("signal", request, self._signal)

    async def _bounded(self, source: str, request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.Response | _Judged]]) -> web.Response:
        """Two bounds, so that a storm costs bounded memory and one noisy run cannot starve the others:
        the bodies being read and judged at once add up to at most signal_max_reading_bytes (by their
        Content-Length; a body without one counts as the largest allowed; beyond: 429 before it is
        read), then at most signal_max_waiting_per_run requests per run (and signal_max_waiting in
        all) wait for their status write, each holding only a bounded copy of its signal."""
        length = request.content_length
        cost = min(length, self.settings.signal_max_body_bytes) if length is not None else \
            self.settings.signal_max_body_bytes
        if self._reading_bytes + cost > self.settings.signal_max_reading_bytes:
            return self._retry(source, 429, "busy", "too many signals at once; try again")
        self._reading_bytes += cost
        try:
            judged = await handler(request)
        finally:
            self._reading_bytes -= cost
        if isinstance(judged, web.Response):
            return judged
        return await self._queue(source, judged)

    async def _falco(self, request: web.Request) -> web.Response | _Judged:
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
                                    dns_addresses=self.settings.cluster_dns_addresses, peers=self._peers(spec, pod))
        return _Judged(key, found, evidence.kept_signal(payload), received, pod)

    async def _signal(self, request: web.Request) -> web.Response | _Judged:
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
        key, body, spec, pod = owner
        status = body.get("status") or {}
        found = rules.judge_signal(signal, spec.grant, status.get("resolvedEgress") or {}, self.now(),
                                   dns_addresses=self.settings.cluster_dns_addresses, peers=self._peers(spec, pod))
        return _Judged(key, found, evidence.kept_signal(payload), received, pod)

    # Helpers ------------------------------------------------------------------------------------------
    def _peers(self, spec: AgentRunSpec, pod: Mapping[str, Any]) -> frozenset[str]:
        namespace = str((pod.get("metadata") or {}).get("namespace") or "")
        if not spec.grant.podToPod or not namespace:
            return frozenset()
        return peers.peer_addresses(spec.grant, pod, self.store.in_namespace(namespace, "Pod"))

    async def _body(self, request: web.Request) -> Any:
        """The JSON body, bounded before it is parsed: its size (client_max_size) and its nesting."""
        source = SOURCES.get(request.path, "other")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(source, 413, "too-large",
                                f"the body is larger than {self.settings.signal_max_body_bytes} bytes")
        try:
            return loads_bounded(raw, self.settings.signal_max_depth)
        except JSONTooDeep as err:
            return self._refuse(source, 400, "invalid", f"the body is {err}")
        except ValueError:
            return self._refuse(source, 400, "invalid", "the body is not JSON")

    def _refuse(self, source: str, status: int, outcome: str, message: str) -> web.Response:
        metrics.SIGNALS.labels(source=source, outcome=outcome).inc()
        return _json(status, error=message)

    def _retry(self, source: str, status: int, outcome: str, message: str) -> web.Response:
        metrics.SIGNALS.labels(source=source, outcome=outcome).inc()
        return web.json_response({"error": message}, status=status,
                                 headers={"Retry-After": str(self.settings.signal_retry_after_seconds)})

    async def _owner(self, namespace: str, pod: str, source: str = "runtime"
                     ) -> tuple[RunKey, Mapping[str, Any], AgentRunSpec, Mapping[str, Any]] | web.Response:
        """The AgentRun that owns the pod: its run namespace's (as the namespace's labels and the run's
        status both say), and the pod must exist there. Names were validated by the parsers already;
        they are checked once more here, since they go into an API path."""
        if not (k8snames.is_label(namespace) and k8snames.is_subdomain(pod)):
            return self._refuse(source, 400, "invalid", "namespace and pod must be valid Kubernetes names")
        key = self.store.run_of_namespace(namespace)
        body = self.store.agentruns.get(key) if key else None
        if key is None or body is None or confine.run_namespace(self.store, key, body.get("status") or {}) != namespace:
            return self._refuse(source, 404, "unknown-pod", f"no AgentRun owns namespace {namespace}; nothing done")
        found = self.store.get("Pod", namespace, pod)
        if found is None:
            try:  # the watch may not have shown a brand-new pod yet
                found = await self.kube.get("v1", "Pod", namespace, pod)
            except KubeError as err:
                log.warning("could not look up pod %s/%s: %s", namespace, pod, err)
        if found is None or confine.confined_pod(self.store, key, namespace, pod, found) is None:
            return self._refuse(source, 404, "unknown-pod", f"pod {namespace}/{pod} does not exist; nothing done")
        spec = self.store.valid_spec(key)
        if spec is None:
            return self._refuse(source, 409, "invalid-run", f"AgentRun {key[0]}/{key[1]} has an invalid spec")
        return key, body, spec, found

    async def _queue(self, source: str, judged: _Judged) -> web.Response:
        """Hand the violation to the responder and answer once it is recorded in the AgentRun's status."""
        key, found = judged.key, judged.violation
        run = f"{key[0]}/{key[1]}"
        if found is None:
            metrics.SIGNALS.labels(source=source, outcome="within-grant").inc()
            return _json(200, agentRun=run, violation=None, result="within the grant: nothing to do")
        if self._waiting[key] >= self.settings.signal_max_waiting_per_run or \
                sum(self._waiting.values()) >= self.settings.signal_max_waiting:
            return self._retry(source, 429, "busy", f"too many signals wait for AgentRun {run}; try again")
        incident = Incident(found, signal=judged.signal, received=judged.received, pod=judged.pod)
        self._waiting[key] += 1
        try:
            return await self._answer(source, run, found, self.responder.submit(key, [incident]))
        finally:
            self._waiting[key] -= 1
            if not self._waiting[key]:
                del self._waiting[key]

    async def _answer(self, source: str, run: str, found: Violation, ack: asyncio.Future[str]) -> web.Response:
        try:
            outcome = await asyncio.wait_for(asyncio.shield(ack), self.settings.signal_ack_timeout_seconds)
        except TimeoutError:
            return self._retry(source, 503, "unrecorded", "the violation is not recorded yet; send it again")
        if outcome == respond.DROPPED:
            return self._retry(source, 429, "dropped", f"too many violations wait for AgentRun {run}; try again")
        if outcome == respond.GONE:
            return self._refuse(source, 404, "unknown-pod", f"AgentRun {run} is gone; nothing done")
        if outcome != respond.RECORDED:
            return self._retry(source, 503, "unrecorded", "the violation could not be recorded; send it again")
        metrics.SIGNALS.labels(source=source, outcome="accepted").inc()
        return _json(202, agentRun=run, result="recorded",
                     violation={"kind": found.kind, "severity": found.severity, "pod": found.pod,
                                "detail": found.detail})
