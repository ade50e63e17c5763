"""The AgentRun policy webhook, and what feeds its policy index (registered with kopf by
:mod:`stockade.handlers`; built by :mod:`stockade.app`).

Every decision is ``grantpolicy.admit.decide`` over the watch store; the only API calls a request
makes are SubjectAccessReviews, one per API permission the grant gives (and a namespace read the
first moment after a namespace is created, before its watch event arrives).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf

from stockade.admission import webhook
from stockade.admission.metrics import REQUESTS, SECONDS
from stockade.api.models import GROUP, VERSION
from stockade.api.policy import POLICY_PLURAL
from stockade.clock import stamp, utcnow
from stockade.detect.respond import Incident, Responder
from stockade.detect.rules import violation
from stockade.grantpolicy import admit
from stockade.grantpolicy.findings import summary
from stockade.grantpolicy.index import INDEX
from stockade.kube import Kube, KubeError
from stockade.store import Store

log = logging.getLogger("stockade.admission")
POLICIES_PATH = f"/apis/{GROUP}/{VERSION}/{POLICY_PLURAL}"
SAR_PATH = "/apis/authorization.k8s.io/v1/subjectaccessreviews"


def agentpolicy_indexed(event: Mapping[str, Any], body: Mapping[str, Any]) -> None:
    if event.get("type") == "DELETED":
        INDEX.forget_policy(body["metadata"]["name"])
    else:
        bound = INDEX.put_policy(body)
        if bound.spec is None:
            log.warning("AgentPolicy %s cannot be evaluated and admits nothing: %s", bound.name, bound.error)


def namespace_indexed(event: Mapping[str, Any], body: Mapping[str, Any]) -> None:
    if event.get("type") == "DELETED":
        INDEX.forget_namespace(body["metadata"]["name"])
    else:
        INDEX.put_namespace(body)


def _request(kwargs: Mapping[str, Any]) -> admit.AgentRunRequest:
    body = kwargs.get("new") or {}
    meta = body.get("metadata") or {}
    user = kwargs.get("userinfo") or {}
    return admit.AgentRunRequest(operation=str(kwargs.get("operation") or ""), namespace=str(meta.get("namespace")
                                 or ""), name=str(meta.get("name") or ""), obj=body, old=kwargs.get("old"),
                                 username=str(user.get("username") or ""))


class GrantPolicy:
    def __init__(self, kube: Kube, store: Store, responder: Responder) -> None:
        self.kube = kube
        self.store = store
        self.responder = responder  # a quarantined run's children are quarantined too

    async def prime_index(self) -> None:
        """Fill the index before the webhook answers: an empty index would refuse every AgentRun."""
        policies, namespaces = await asyncio.gather(self.kube.call("GET", POLICIES_PATH),
                                                    self.kube.list_objects("v1", "Namespace"))
        for body in policies.get("items", []):
            INDEX.put_policy(body)
        for body in namespaces:
            INDEX.put_namespace(body)
        INDEX.synced = True
        log.info("policy index: %d AgentPolicies, %d namespaces", len(INDEX.policies()), len(INDEX.namespaces()))

    # The webhook --------------------------------------------------------------------------------------------
    async def _ensure_namespace(self, namespace: str) -> None:
        if INDEX.namespace_labels(namespace) is None:
            found = await self.kube.get("v1", "Namespace", None, namespace)
            if found is not None:
                INDEX.put_namespace(found)

    async def _held(self, verdict: admit.Verdict, namespace: str, user: Mapping[str, Any]) -> list[Any]:
        """The permissions the requester does not hold (fail closed: no answer, not held)."""

        async def one(perm: Any) -> bool:
            try:
                answer = await self.kube.call("POST", SAR_PATH, admit.review(perm, namespace, user))
            except KubeError as err:
                log.warning("SubjectAccessReview for %s failed: %s", perm.text(), err)
                return False
            return bool((answer.get("status") or {}).get("allowed"))

        answers = await asyncio.gather(*(one(perm) for perm in verdict.permissions))
        return [admit.not_held(perm, namespace, str(user.get("username") or ""))
                for perm, allowed in zip(verdict.permissions, answers, strict=True) if not allowed]

    async def validate(self, kwargs: Mapping[str, Any]) -> None:
        """An AgentRun's grant within every AgentPolicy that bounds it, and nothing granted the requester lacks."""
        started = time.perf_counter()
        req = _request(kwargs)
        await self._ensure_namespace(req.namespace)
        verdict = admit.decide(req, index=INDEX, store=self.store, now=datetime.datetime.now(datetime.UTC))
        if verdict.allowed and verdict.permissions:
            verdict.findings += await self._held(verdict, req.namespace, kwargs.get("userinfo") or {})
        kwargs["patch"].as_json_patch = lambda *_args, **_kw: []  # nothing patched: skip kopf's deep-copy diff
        REQUESTS.labels(webhook=webhook.POLICY_ID, decision="allowed" if verdict.allowed else "refused").inc()
        SECONDS.labels(webhook=webhook.POLICY_ID).observe(time.perf_counter() - started)
        if not verdict.allowed:
            log.info("AgentRun %s/%s refused by policy", req.namespace, req.name,
                     extra={"user": req.username, "findings": [f.kind for f in verdict.findings]})
            raise kopf.AdmissionError(summary(verdict.findings), code=403)

    async def defaults(self, kwargs: Mapping[str, Any]) -> None:
        """Fill what a grant omits from the defaults of the AgentPolicies that bound it."""
        started = time.perf_counter()
        req = _request(kwargs)
        await self._ensure_namespace(req.namespace)
        ops = admit.default_ops(req, index=INDEX, store=self.store)
        # The operations are known exactly: kopf need not deep-copy and diff the object to find them.
        kwargs["patch"].as_json_patch = lambda *_args, **_kw: ops
        REQUESTS.labels(webhook=webhook.POLICY_DEFAULTS_ID, decision="patched" if ops else "allowed").inc()
        SECONDS.labels(webhook=webhook.POLICY_DEFAULTS_ID).observe(time.perf_counter() - started)

    # Lineage ------------------------------------------------------------------------------------------------
    def parent_quarantined(self, event: Mapping[str, Any], body: Mapping[str, Any]) -> None:
        """A quarantined run's children are quarantined too, each by its own response ladder. (Deleting a run
        deletes its children with its run namespace; they expire no later than it does, by carving.)"""
        if event.get("type") == "DELETED":
            return
        children = admit.children_to_quarantine(self.store, body)
        if not children:
            return
        meta, quarantine = body["metadata"], (body.get("status") or {}).get("quarantine") or {}
        detail = (f"the parent run {meta['namespace']}/{meta['name']} is quarantined "
                  f"({quarantine.get('reason') or 'Violation'}): its child runs are quarantined with it")
        for key in children:
            log.warning("quarantining child run %s/%s of quarantined %s/%s", *key, meta["namespace"], meta["name"])
            self.responder.submit(key, [Incident(violation("ParentQuarantined", detail, "api", stamp(utcnow()),
                                                           severity="critical"))])
