"""The admission webhooks' answers: each AdmissionReview turned into a ``policy.Request``, the run found in
the store, ``policy.decide`` asked, the answer given and refusals handed to the recorder.

Registered with kopf by :mod:`stockade.handlers`; built and wired by :mod:`stockade.app`. These run on the
webhook's own thread (:mod:`stockade.admission.server`): they only read the store and hand writes back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf

from stockade.admission import agentrun_mutate, podidentity, policy, webhook
from stockade.admission.metrics import REQUESTS, SECONDS
from stockade.admission.pending import Pending
from stockade.admission.record import Recorder
from stockade.grantcheck import Usage
from stockade.grantpolicy import admit
from stockade.kube import Kube, KubeError
from stockade.store import Store

log = logging.getLogger("stockade.admission")


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


def _no_patch(*_args: Any, **_kwargs: Any) -> list[dict[str, Any]]:
    return []


class Reviews:
    def __init__(self, kube: Kube, store: Store, recorder: Recorder) -> None:
        self.kube = kube
        self.store = store
        self.recorder = recorder
        # Who the webhooks let through unjudged: the operator and break-glass groups (set at start-up).
        self.usernames: frozenset[str] = frozenset()
        self.exempt_groups: frozenset[str] = frozenset()
        # Read and written on the webhook's thread only.
        self.pending = Pending()
        self.usage: dict[str, policy.UsageTracker] = {}  # run namespace -> its pods' running totals

    def _run(self, req: policy.Request, *, usage: bool = True) -> policy.Run | None:
        namespace = req.name if req.target == policy.NAMESPACE else req.namespace
        store = self.store
        key = store.run_of_namespace(namespace)
        body = store.agentruns.get(key) if key else None
        # The run namespace the reconciler chose (a hashed one for names such as a.b), not the default name.
        if key is None or body is None or store.run_namespace_of(key) != namespace:
            self.usage.pop(namespace, None)  # a run namespace that is gone
            return None
        spec = store.valid_spec(key)  # an invalid AgentRun grants nothing
        if spec is None:
            return None
        live = store.get("Namespace", "", namespace) or {}
        taken = Usage()
        if usage and req.target == policy.POD:
            pods = list(store.refs_in_namespace(namespace, "Pod"))  # decoded only where changed
            tracker = self.usage.setdefault(namespace, policy.UsageTracker())
            taken = tracker.usage_of_refs(pods, exclude=req.name if req.operation != "CREATE" else "")
            seen = {name for name, _, _ in pods}
            taken = policy.add_usage(taken, self.pending.unseen(namespace, seen, time.monotonic(), exclude=req.name))
            if spec.grant.delegation:  # what the run's child runs were carved is not the run's to use
                taken = policy.add_usage(taken, admit.child_claims(store, namespace))
        return policy.Run(namespace=key[0], name=key[1], spec=spec, status=body.get("status") or {}, usage=taken,
                          namespace_terminating=bool((live.get("metadata") or {}).get("deletionTimestamp")))

    def _exempt(self, req: policy.Request) -> bool:
        """The operator, or break-glass (the webhook configurations do not even send these)."""
        return req.username in self.usernames or not self.exempt_groups.isdisjoint(req.groups)

    async def allowlist(self, kwargs: Mapping[str, Any]) -> None:
        """Every creation, and the updates and deletions that matter, in a run namespace."""
        started = time.perf_counter()
        dryrun = bool(kwargs.get("dryrun"))
        req = _request(kwargs)
        run = self._run(req)
        decision = policy.decide(req, run, is_operator=self._exempt(req))
        if decision.action != "none" and run is not None and not dryrun:
            self.recorder.record((run.namespace, run.name), req, decision)
        elif run is None and not decision.allowed and not dryrun:  # no AgentRun to record it on: the log only
            # Kubernetes' own controllers (a new namespace's default ServiceAccount, its kube-root-ca.crt) retry.
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
            self.pending.add(req.namespace, req.name, req.obj, time.monotonic())

    async def gpu_visibility(self, kwargs: Mapping[str, Any]) -> None:
        """Hide GPUs from every container without a GPU request (images may default to all of them), and give
        a pod that names no ServiceAccount the agent's (stockade.admission.podidentity)."""
        started = time.perf_counter()
        req = _request(kwargs)
        run = self._run(req, usage=False)
        ops = policy.gpu_patch(req.obj or {}, run.spec.grant if run is not None else None)
        if run is not None:  # no run: the validating webhook refuses the pod (UnknownRun)
            ops += podidentity.identity_patch(req.obj or {}, run.spec.grant)
        if ops and not self._exempt(req):
            # kopf would build the patch by deep-copying and diffing the whole pod (most of a request's
            # time); the operations are known exactly, so they are the answer.
            kwargs["patch"].as_json_patch = lambda *_args, **_kw: ops
        REQUESTS.labels(webhook=webhook.MUTATE_ID, decision="allowed").inc()
        SECONDS.labels(webhook=webhook.MUTATE_ID).observe(time.perf_counter() - started)

    async def agentrun_defaults(self, kwargs: Mapping[str, Any]) -> None:
        """The finalizer from the first moment, and a release only by those granted it (recorded as who)."""
        started = time.perf_counter()
        req = _request(kwargs)
        userinfo = kwargs.get("userinfo") or {}
        may_release: bool | None = None
        if agentrun_mutate.release_requested(req.obj, req.old) is not None:
            may_release = await self._may_release(req, str(userinfo.get("uid") or ""), userinfo.get("extra"))
        result = agentrun_mutate.mutate(req.operation, req.obj, req.old, username=req.username,
                                        may_release=may_release)
        REQUESTS.labels(webhook=webhook.AGENTRUN_MUTATE_ID,
                        decision="refused" if result.refusal else "allowed").inc()
        SECONDS.labels(webhook=webhook.AGENTRUN_MUTATE_ID).observe(time.perf_counter() - started)
        if result.refusal:
            log.warning("release refused", extra={"agentrun": f"{req.namespace}/{req.name}", "user": req.username})
            raise kopf.AdmissionError(result.refusal, code=403)
        ops = result.ops
        kwargs["patch"].as_json_patch = lambda *_args, **_kw: ops

    async def _may_release(self, req: policy.Request, uid: str, extra: Any) -> bool:
        review = agentrun_mutate.release_review(req.username, req.groups, uid=uid,
                                                extra=extra if isinstance(extra, Mapping) else None,
                                                namespace=req.namespace, name=req.name)
        try:
            answer = await self.kube.call("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review)
        except KubeError as err:  # fail closed: no answer, no release
            log.warning("could not check whether %s may release %s/%s: %s", req.username, req.namespace, req.name,
                        err)
            return False
        return bool((answer.get("status") or {}).get("allowed"))
