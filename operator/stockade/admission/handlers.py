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

import stockade.admission.grant_policy  # noqa: F401  (registers the AgentRun policy webhook and its watches)
from stockade.admission import agentrun_mutate, certs, guard, health, podidentity, policy, vap, webhook
from stockade.admission.config import AdmissionSettings
from stockade.admission.metrics import REQUESTS, SECONDS
from stockade.admission.pending import Pending
from stockade.admission.record import Recorder
from stockade.admission.server import ThreadedWebhookServer
from stockade.api.models import AgentRunSpec
from stockade.grantcheck import Usage
from stockade.grantpolicy import admit
from stockade.kube import KubeError
from stockade.runtime import RUNTIME

log = logging.getLogger("stockade.admission")


class _State:
    usernames: frozenset[str] = frozenset()
    exempt_groups: frozenset[str] = frozenset()
    cert_dir: tempfile.TemporaryDirectory[str] | None = None
    recorder: Recorder | None = None
    guard: guard.AdmissionGuard | None = None
    pending = Pending()
    # Read and written on the webhook's thread only.
    specs: dict[tuple[str, str], tuple[Any, AgentRunSpec]] = {}  # (ns, name) -> (generation, parsed spec)
    usage: dict[str, policy.UsageTracker] = {}  # run namespace -> its pods' running totals


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
    STATE.exempt_groups = frozenset(config.admission_exempt_groups)
    excluded = [RUNTIME.settings.namespace]
    if config.webhook_cert_dir:
        directory = Path(config.webhook_cert_dir)
    else:  # a fresh CA for each start, its key removed when the process exits
        STATE.cert_dir = tempfile.TemporaryDirectory(prefix="stockade-webhook-")
        directory = Path(STATE.cert_dir.name)
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
               for hid in (webhook.VALIDATE_ID, webhook.MUTATE_ID, webhook.AGENTRUN_MUTATE_ID, webhook.POLICY_ID,
                           webhook.POLICY_DEFAULTS_ID)}
    users = sorted(STATE.usernames)
    groups = sorted(STATE.exempt_groups)
    name = config.webhook_configuration
    # Policies and bindings named after the configurations (<name>-baseline, ...): the chart's full name, or
    # the local operator's own, so that neither's uninstall removes the other's.
    policies = vap.manifests(users, excluded, groups, prefix=name)
    webhooks = [webhook.validating(clients, users, excluded, timeout=config.webhook_timeout_seconds, name=name,
                                   exempt_groups=groups),
                webhook.mutating(clients, users, excluded, timeout=config.webhook_timeout_seconds, name=name,
                                 exempt_groups=groups)] if config.admission_manage_webhooks else []
    watched = [*(policies if config.admission_manage_policy or config.admission_watch_policy else []), *webhooks]
    owners = {health.key_of(obj): health.OPERATOR if config.admission_manage_policy else health.SHIPPED
              for obj in policies}
    owners |= {health.key_of(obj): health.OPERATOR if config.admission_recreate_webhooks else health.FILLED
               for obj in webhooks}

    async def own_admission(active: bool) -> None:
        """The active replica owns the configurations: it writes them when it starts or takes over, so a
        standby never points them at itself and a dead leader's URL is replaced by the survivor's."""
        if not active:
            return
        if config.admission_manage_policy:
            await webhook.apply(kube, policies)
        if webhooks:
            await webhook.apply(kube, webhooks)
        if STATE.guard is not None:
            STATE.guard.wake()

    await own_admission(RUNTIME.leadership.active)
    RUNTIME.leadership.on_change(own_admission)
    # Watched from now on: what goes missing or changes is restored (what the operator may) and reported.
    reconciler = RUNTIME.reconciler

    def trigger_runs() -> None:
        for key in list(RUNTIME.store.agentruns):
            reconciler.trigger_soon(key)

    STATE.guard = guard.AdmissionGuard(kube, RUNTIME.store, lambda *args: reconciler.emit(*args),  # noqa: PLW0108 (replaced later)
                                       trigger_runs,
                                       lambda: RUNTIME.leadership.active)
    STATE.guard.want(watched, owners)
    reconciler.admission_state = STATE.guard.condition
    await STATE.guard.start()
    # The webhook's thread waits for the interpreter lock while the main loop handles watch
    # events; a shorter switch interval (default 5 ms) bounds each of those waits.
    sys.setswitchinterval(config.admission_switch_interval_seconds)
    STATE.recorder = Recorder(kube, RUNTIME.store, config.admission_violations_kept)
    log.info("admission webhook on %s:%s for %s; operator identity %s; break-glass groups %s", host, port,
             f"service {service[0]}/{service[1]}" if service else url, ", ".join(users), ", ".join(groups) or "none")


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


def _run(req: policy.Request, *, usage: bool = True) -> policy.Run | None:
    namespace = req.name if req.target == policy.NAMESPACE else req.namespace
    store = RUNTIME.store
    key = store.run_of_namespace(namespace)
    body = store.agentruns.get(key) if key else None
    # The run namespace the reconciler chose (a hashed one for names such as a.b), not the default name.
    if key is None or body is None or store.run_namespace_of(key) != namespace:
        STATE.usage.pop(namespace, None)  # a run namespace that is gone
        return None
    spec = _spec(key, body)
    if spec is None:
        return None
    live = store.get("Namespace", "", namespace) or {}
    taken = Usage()
    if usage and req.target == policy.POD:
        pods = list(store.in_namespace(namespace, "Pod"))
        tracker = STATE.usage.setdefault(namespace, policy.UsageTracker())
        taken = tracker.usage(pods, exclude=req.name if req.operation != "CREATE" else "")
        seen = {p["metadata"]["name"] for p in pods}
        taken = policy.add_usage(taken, STATE.pending.unseen(namespace, seen, time.monotonic(), exclude=req.name))
        if spec.grant.delegation:  # what the run's child runs were carved is not the run's to use
            taken = policy.add_usage(taken, admit.child_claims(store, namespace))
    return policy.Run(namespace=key[0], name=key[1], spec=spec, status=body.get("status") or {}, usage=taken,
                      namespace_terminating=bool((live.get("metadata") or {}).get("deletionTimestamp")))


def _exempt(req: policy.Request) -> bool:
    """The operator, or break-glass (the webhook configurations do not even send these)."""
    return req.username in STATE.usernames or not STATE.exempt_groups.isdisjoint(req.groups)


def _no_patch(*_args: Any, **_kwargs: Any) -> list[dict[str, Any]]:
    return []


@kopf.on.validate(lambda _resource: True, id=webhook.VALIDATE_ID, subresource="*")
async def allowlist(**kwargs: Any) -> None:
    """Every creation, and the updates and deletions that matter, in a run namespace."""
    started = time.perf_counter()
    dryrun = bool(kwargs.get("dryrun"))
    req = _request(kwargs)
    run = _run(req)
    decision = policy.decide(req, run, is_operator=_exempt(req))
    if decision.action != "none" and run is not None and not dryrun and STATE.recorder is not None:
        STATE.recorder.record((run.namespace, run.name), req, decision)
    elif run is None and not decision.allowed and not dryrun:  # no AgentRun to record it on: the log only
        # Kubernetes' own controllers (a new namespace's default ServiceAccount, its kube-root-ca.crt) retry: DEBUG.
        level = logging.DEBUG if req.username.startswith("system:serviceaccount:kube-system:") else logging.INFO
        log.log(level, "refused %s %s in %s by %s: no AgentRun known for the namespace", req.operation, req.what,
                req.namespace, req.username, extra={"run_namespace": req.namespace or None, "kind": decision.kind,
                                                    "source": "admission", "action": decision.action,
                                                    "user": req.username})
    kwargs["warnings"].extend(decision.warnings)
    # kopf deep-copies the whole object to diff it even when nothing was patched; nothing is.
    kwargs["patch"].as_json_patch = _no_patch
    outcome = decision.action if decision.action != "none" else "allowed"
    REQUESTS.labels(webhook=webhook.VALIDATE_ID, decision=outcome).inc()
    SECONDS.labels(webhook=webhook.VALIDATE_ID).observe(time.perf_counter() - started)
    if not decision.allowed:
        raise kopf.AdmissionError(decision.message, code=403)
    if req.target == policy.POD and req.operation == "CREATE" and not dryrun and req.obj is not None:
        STATE.pending.add(req.namespace, req.name, req.obj, time.monotonic())


@kopf.on.mutate("", "v1", "pods", id=webhook.MUTATE_ID, operations=["CREATE"])
async def gpu_visibility(**kwargs: Any) -> None:
    """Hide GPUs from every container without a GPU request (images may default to all of them), and give
    a pod that names no ServiceAccount the agent's (stockade.admission.podidentity)."""
    started = time.perf_counter()
    req = _request(kwargs)
    run = _run(req, usage=False)
    ops = policy.gpu_patch(req.obj or {}, run.spec.grant if run is not None else None)
    if run is not None:  # no run: the validating webhook refuses the pod (UnknownRun)
        ops += podidentity.identity_patch(req.obj or {}, run.spec.grant)
    if ops and not _exempt(req):
        # kopf would build the patch by deep-copying and diffing the whole pod (most of a request's
        # time); the operations are known exactly, so they are the answer.
        kwargs["patch"].as_json_patch = lambda *_args, **_kw: ops
    REQUESTS.labels(webhook=webhook.MUTATE_ID, decision="allowed").inc()
    SECONDS.labels(webhook=webhook.MUTATE_ID).observe(time.perf_counter() - started)


@kopf.on.mutate("stockade.io", "v1alpha1", "agentruns", id=webhook.AGENTRUN_MUTATE_ID, operations=["CREATE", "UPDATE"])
async def agentrun_defaults(**kwargs: Any) -> None:
    """The finalizer from the first moment, and a release only by those granted it (recorded as who)."""
    started = time.perf_counter()
    req = _request(kwargs)
    userinfo = kwargs.get("userinfo") or {}
    may_release: bool | None = None
    if agentrun_mutate.release_requested(req.obj, req.old) is not None:
        may_release = await _may_release(req, str(userinfo.get("uid") or ""), userinfo.get("extra"))
    result = agentrun_mutate.mutate(req.operation, req.obj, req.old, username=req.username, may_release=may_release)
    REQUESTS.labels(webhook=webhook.AGENTRUN_MUTATE_ID,
                    decision="refused" if result.refusal else "allowed").inc()
    SECONDS.labels(webhook=webhook.AGENTRUN_MUTATE_ID).observe(time.perf_counter() - started)
    if result.refusal:
        log.warning("release refused", extra={"agentrun": f"{req.namespace}/{req.name}", "user": req.username})
        raise kopf.AdmissionError(result.refusal, code=403)
    ops = result.ops
    kwargs["patch"].as_json_patch = lambda *_args, **_kw: ops


async def _may_release(req: policy.Request, uid: str, extra: Any) -> bool:
    review = agentrun_mutate.release_review(req.username, req.groups, uid=uid,
                                            extra=extra if isinstance(extra, Mapping) else None,
                                            namespace=req.namespace, name=req.name)
    try:
        answer = await RUNTIME.kube.call("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review)
    except KubeError as err:  # fail closed: no answer, no release
        log.warning("could not check whether %s may release %s/%s: %s", req.username, req.namespace, req.name, err)
        return False
    return bool((answer.get("status") or {}).get("allowed"))


@kopf.on.cleanup()
async def admission_cleanup(**_: Any) -> None:
    if STATE.guard is not None:
        await STATE.guard.stop()
