"""kopf registration for admission: the webhook server, its configuration, and two thin handlers.

Every decision is ``policy.decide``; this module only turns an AdmissionReview into a
``policy.Request``, finds the run in the store, answers, and hands refusals to the recorder.
"""

from __future__ import annotations

import logging
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kopf

from stockade.admission import certs, policy, vap, webhook
from stockade.admission.config import AdmissionSettings
from stockade.admission.metrics import REQUESTS, SECONDS
from stockade.admission.pending import Pending
from stockade.admission.record import Recorder
from stockade.admission.server import ThreadedWebhookServer
from stockade.api.models import AgentRunSpec
from stockade.grantcheck import Usage
from stockade.plan import RunRef
from stockade.runtime import RUNTIME

log = logging.getLogger("stockade.admission")


class _State:
    usernames: frozenset[str] = frozenset()
    recorder: Recorder | None = None
    pending = Pending()
    # Read and written on the webhook's thread only.
    specs: dict[tuple[str, str], tuple[Any, AgentRunSpec]] = {}  # (ns, name) -> (generation, parsed spec)
    amounts: dict[str, tuple[Any, policy.Amounts]] = {}  # pod uid -> (resourceVersion, its amounts)


STATE = _State()


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@kopf.on.startup()
async def admission_startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    config = AdmissionSettings()
    kube = RUNTIME.kube  # made by stockade.handlers.startup, which kopf runs first
    STATE.usernames = frozenset(config.operator_usernames or [await webhook.whoami(kube)])
    excluded = [RUNTIME.settings.namespace]
    directory = Path(config.webhook_cert_dir or tempfile.mkdtemp(prefix="stockade-webhook-"))
    service = config.service_ref()
    if service is not None:
        host = config.webhook_host or "0.0.0.0"  # every interface: the Service sends requests here
        port = config.webhook_port or 9443
        paths = certs.ensure(directory, certs.service_names(*service), [])
        url = None
    else:
        host = config.webhook_host or "127.0.0.1"
        port = config.webhook_port or _free_port(host)
        paths = certs.ensure(directory, ["localhost"], [host])
        url = f"https://{'[' + host + ']' if ':' in host else host}:{port}"
    settings.admission.server = ThreadedWebhookServer(
        addr=host, port=port, certfile=str(paths.cert), pkeyfile=str(paths.key), cafile=str(paths.ca))
    settings.admission.managed = None  # the configurations below are ours, not kopf's
    clients = {hid: webhook.client_config(paths.ca_bundle(), hid, url=url, service=service,
                                          service_port=config.webhook_service_port)
               for hid in (webhook.VALIDATE_ID, webhook.MUTATE_ID)}
    users = sorted(STATE.usernames)
    if config.admission_manage_policy:
        await webhook.apply(kube, vap.manifests(users, excluded))
    if config.admission_manage_webhooks:
        timeout = config.webhook_timeout_seconds
        await webhook.apply(kube, [webhook.validating(clients, users, excluded, timeout),
                                   webhook.mutating(clients, users, excluded, timeout)])
    # The webhook's thread waits for the interpreter lock while the main loop handles watch
    # events; a shorter switch interval (default 5 ms) bounds each of those waits.
    sys.setswitchinterval(config.admission_switch_interval_seconds)
    STATE.recorder = Recorder(kube, RUNTIME.store, config.admission_violations_kept)
    log.info("admission webhook on %s:%s for %s; operator identity %s", host, port,
             f"service {service[0]}/{service[1]}" if service else url, ", ".join(users))


# Handlers -----------------------------------------------------------------------------------------------
def _request(kwargs: Mapping[str, Any]) -> policy.Request:
    """kopf's handler arguments as a policy request (``new`` is None on DELETE, ``old`` on CREATE)."""
    resource = kwargs["resource"]
    new, old = kwargs.get("new"), kwargs.get("old")
    body = new if new is not None else old or {}
    meta = body.get("metadata") or {}
    userinfo = kwargs.get("userinfo") or {}
    return policy.Request(
        operation=str(kwargs.get("operation") or ""), group=resource.group, resource=resource.plural,
        kind=resource.kind, namespace=meta.get("namespace") or "", name=meta.get("name") or "", obj=new, old=old,
        username=str(userinfo.get("username") or ""), groups=tuple(userinfo.get("groups") or ()),
        subresource=kwargs.get("subresource") or "",
    )


def _spec(key: tuple[str, str], body: Mapping[str, Any]) -> AgentRunSpec | None:
    generation = body["metadata"].get("generation")
    cached = STATE.specs.get(key)
    if cached is not None and cached[0] == generation:
        return cached[1]
    try:
        spec = AgentRunSpec.model_validate(body.get("spec") or {})
    except ValueError:
        return None  # an invalid AgentRun grants nothing
    STATE.specs[key] = (generation, spec)
    return spec


def _amounts(pod: Mapping[str, Any]) -> policy.Amounts:
    meta = pod.get("metadata") or {}
    uid, version = meta.get("uid"), meta.get("resourceVersion")
    cached = STATE.amounts.get(uid) if uid else None
    if cached is not None and cached[0] == version:
        return cached[1]
    found = policy.amounts_of(pod)
    if uid:
        if len(STATE.amounts) > 20000:
            STATE.amounts.clear()  # pods come and go; an occasional rebuild is cheaper than tracking
        STATE.amounts[uid] = (version, found)
    return found


def _run(req: policy.Request) -> policy.Run | None:
    namespace = req.name if req.target == policy.NAMESPACE else req.namespace
    store = RUNTIME.store
    key = store.run_of_namespace(namespace)
    body = store.agentruns.get(key) if key else None
    if key is None or body is None or RunRef(*key).run_namespace != namespace:
        return None
    spec = _spec(key, body)
    if spec is None:
        return None
    live = store.get("Namespace", "", namespace) or {}
    usage = Usage()
    if req.target == policy.POD:
        pods = list(store.in_namespace(namespace, "Pod"))
        usage = policy.usage_of(pods, exclude=req.name if req.operation != "CREATE" else "", amounts=_amounts)
        seen = {p["metadata"]["name"] for p in pods}
        usage = policy.add_usage(usage, STATE.pending.unseen(namespace, seen, time.monotonic(), exclude=req.name))
    return policy.Run(namespace=key[0], name=key[1], spec=spec, status=body.get("status") or {}, usage=usage,
                      namespace_terminating=bool((live.get("metadata") or {}).get("deletionTimestamp")))


@kopf.on.validate(lambda _resource: True, id=webhook.VALIDATE_ID, subresource="*")
async def allowlist(**kwargs: Any) -> None:
    """Every creation, and the updates and deletions that matter, in a run namespace."""
    started = time.perf_counter()
    dryrun = bool(kwargs.get("dryrun"))
    req = _request(kwargs)
    run = _run(req)
    decision = policy.decide(req, run, is_operator=req.username in STATE.usernames)
    if decision.action != "none" and run is not None and not dryrun and STATE.recorder is not None:
        STATE.recorder.record((run.namespace, run.name), req, decision)
    kwargs["warnings"].extend(decision.warnings)
    outcome = decision.action if decision.action != "none" else "allowed"
    REQUESTS.labels(webhook=webhook.VALIDATE_ID, decision=outcome).inc()
    SECONDS.labels(webhook=webhook.VALIDATE_ID).observe(time.perf_counter() - started)
    if not decision.allowed:
        raise kopf.AdmissionError(decision.message, code=403)
    if req.target == policy.POD and req.operation == "CREATE" and not dryrun and req.obj is not None:
        STATE.pending.add(req.namespace, req.name, req.obj, time.monotonic())


@kopf.on.mutate("", "v1", "pods", id=webhook.MUTATE_ID, operations=["CREATE"])
async def gpu_visibility(**kwargs: Any) -> None:
    """Hide GPUs from every container without a GPU request (images may default to all of them)."""
    started = time.perf_counter()
    req = _request(kwargs)
    run = _run(req)
    grant = run.spec.grant if run is not None else None

    def hide(raw: Any) -> None:
        policy.mutate_pod(raw, grant)

    if req.username not in STATE.usernames:
        kwargs["patch"].fns.append(hide)
    REQUESTS.labels(webhook=webhook.MUTATE_ID, decision="allowed").inc()
    SECONDS.labels(webhook=webhook.MUTATE_ID).observe(time.perf_counter() - started)
