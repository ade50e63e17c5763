"""Stockade's admission handlers called straight from the webhook server, without kopf's per-request machinery.

kopf serves a request by wrapping the object in its read-only views, diffing it against the old one,
recalling a memo, building a logger and a cause whose every keyword argument is derived from those views,
and running the handler through its lifecycle and state machinery: about 0.3 ms of CPU a call on the
webhook's thread, where the handler itself needs about 0.1 ms, and the handler's reads of the object then
go through the views too. Under 50 concurrent pod creations (two webhook calls each, one thread) that
queue is the webhook's latency.

:func:`answer` finds the handler exactly as kopf does (the handler registered under the webhook's id,
kopf's resource from its own discovery, the same subresource and DELETE rules), calls it with the keyword
arguments Stockade's handlers read, as plain dicts, and answers as kopf's ``build_response`` does. It
declines (None: kopf serves the request) for any handler with a filter kopf would have to evaluate
(labels, annotations, fields, ``when``), for an ambiguous or unknown resource and for a malformed review,
so that kopf's own answers and errors stay the ones given.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Mapping
from typing import Any

import kopf
from kopf._core.engines import admission as kopf_admission
from kopf._core.intents import causes

log = logging.getLogger("stockade.admission")

# The keyword arguments kopf passes that :func:`answer` does not (the handlers here read none of them).
NOT_PASSED = ("diff", "indices", "retry", "started", "runtime", "settings", "param", "reason")


class JSONPatch:
    """kopf's ``patch`` argument as Stockade's handlers use it: they set ``as_json_patch`` to their operations."""

    def __init__(self) -> None:
        self.as_json_patch = self._nothing

    @staticmethod
    def _nothing(*_args: Any, **_kwargs: Any) -> list[dict[str, Any]]:
        return []


def _plain_handler(handler: Any) -> bool:
    """A coroutine with no filter for kopf to evaluate beyond the resource and subresource (checked here)."""
    return asyncio.iscoroutinefunction(handler.fn) and not (
        handler.labels or handler.annotations or handler.field is not None or handler.when is not None)


class Dispatcher:
    """The handlers of kopf's registry by webhook id, and kopf's discovered resources, for :func:`answer`."""

    def __init__(self, fn: Any) -> None:
        keywords: Mapping[str, Any] = getattr(fn, "keywords", None) or {}
        self.registry = keywords.get("registry")
        self.insights = keywords.get("insights")
        # The operator's memo (kopf's memobase), which the handlers reach the composition root through.
        self.memo = keywords.get("memobase")

    def handler(self, webhook: str) -> Any | None:
        if self.registry is None or self.insights is None or self.memo is None:
            return None
        found = [h for h in self.registry._webhooks.get_all_handlers() if h.id == webhook]
        return found[0] if len(found) == 1 and _plain_handler(found[0]) else None

    async def answer(self, webhook: str, review: Mapping[str, Any]) -> dict[str, Any] | None:
        """The AdmissionReview response kopf would give, or None where kopf must serve the request itself."""
        handler = self.handler(webhook)
        request = review.get("request")
        if handler is None or not isinstance(request, Mapping):
            return None
        try:
            resource = kopf_admission.find_resource(request=review, insights=self.insights)  # type: ignore[arg-type]
        except (kopf_admission.WebhookError, KeyError, TypeError):
            return None  # kopf answers these (404, 409, 400)
        new, old = request.get("object"), request.get("oldObject")
        body = new if new is not None else old
        userinfo = request.get("userInfo")
        if userinfo is None or body is None:
            return None
        operation, subresource = request.get("operation"), request.get("subResource")
        if handler.selector is not None and not handler.selector.check(resource):
            return _response(review, [], [], None)
        if handler.subresource not in ("*", subresource):
            return _response(review, [], [], None)
        mutating = handler.reason == causes.WebhookType.MUTATING
        if mutating and operation == "DELETE" and set(handler.operations or []) != {"DELETE"}:
            return _response(review, [], [], None)  # kopf calls no mutating handler on DELETE
        meta = body.get("metadata") or {}
        warnings: list[str] = []
        patch = JSONPatch()
        error: BaseException | None = None
        try:
            await handler.fn(
                resource=resource, body=body, new=new, old=old, userinfo=userinfo, operation=operation,
                subresource=subresource, dryrun=bool(request.get("dryRun")), warnings=warnings, patch=patch,
                webhook=webhook, headers={}, sslpeer={}, uid=meta.get("uid"), name=meta.get("name"),
                namespace=meta.get("namespace"), meta=meta, spec=body.get("spec") or {},
                status=body.get("status") or {}, labels=meta.get("labels") or {},
                annotations=meta.get("annotations") or {}, logger=log, memo=self.memo,
            )
        except kopf.AdmissionError as err:  # a refusal: recorded by the handler, not an error of ours
            error = err
        except Exception as err:
            log.exception("admission webhook %s failed", webhook)
            error = err
        ops = [] if error is not None else patch.as_json_patch()
        return _response(review, warnings, ops, error)


def _response(review: Mapping[str, Any], warnings: list[str], ops: list[dict[str, Any]],
              error: BaseException | None) -> dict[str, Any]:
    """kopf's ``admission.build_response`` for one handler's outcome."""
    request = review.get("request") or {}
    payload: dict[str, Any] = {"uid": request.get("uid", ""), "allowed": error is None}
    if warnings:
        payload["warnings"] = [str(w) for w in warnings]
    if ops:
        payload["patch"] = base64.b64encode(json.dumps(ops).encode("utf-8")).decode("ascii")
        payload["patchType"] = "JSONPatch"
    if error is not None:
        code = error.code if isinstance(error, kopf.AdmissionError) else None
        payload["status"] = {"message": str(error) or repr(error), "code": code or 500}
    return {"apiVersion": review.get("apiVersion", "admission.k8s.io/v1"),
            "kind": review.get("kind", "AdmissionReview"), "response": payload}
