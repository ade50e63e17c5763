"""Kubernetes I/O: a thin REST layer over one pool of connections (stockade.kubeconn).

Server-side apply with one field manager for everything the operator owns. Manifests are plain dicts in
and out, JSON on the wire (an apply patch is YAML, of which JSON is a part), which keeps the planner pure
and the calls cheap.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import urllib3

from stockade import k8snames, kinds, labels
from stockade.inputcheck import terminating_namespace
from stockade.kubeapi import KubeAPI
from stockade.kubeconn import Connection, NoCredentials

log = logging.getLogger(__name__)

# Where each kind lives in the REST API: (apiVersion, kind) -> (path prefix, plural, namespaced).
_KINDS: dict[tuple[str, str], tuple[str, str, bool]] = {
    kind.ref: (kind.prefix, kind.plural, kind.namespaced) for kind in kinds.KINDS}


class KubeError(Exception):
    def __init__(self, status: int, reason: str, message: str, causes: tuple[str, ...] = (),
                 retry_after: float | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.causes = causes  # the reasons of the Status's details.causes
        self.retry_after = retry_after  # seconds the API server still asked us to wait (429/503), if it did

    @property
    def terminating_namespace(self) -> str | None:
        """The namespace being deleted that refused a new object ("" if unnamed), else None."""
        return terminating_namespace(self.status, self.message, self.causes)

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def transient(self) -> bool:
        """The API server is away, throttling or failing: the same request may pass later (a 4xx would not)."""
        return self.status in (0, 429) or self.status >= 500


# RBAC objects may have any name that stays one path segment; everything else here is a DNS-1123 subdomain.
_PATH_SEGMENT_NAMES = {"Role", "RoleBinding"}


def object_path(api_version: str, kind: str, namespace: str | None = None, name: str | None = None) -> str:
    """The REST path of a kind, a namespace's collection or one object. Every segment is validated as the
    API server validates such names (ValueError otherwise): a name from outside, such as
    ``../../kube-system/pods/x``, can never become the path of another object."""
    prefix, plural, namespaced = _KINDS[(api_version, kind)]
    path = prefix
    if namespaced:
        if not namespace:
            raise ValueError(f"{kind} is namespaced: a namespace is required")
        if not k8snames.is_label(namespace):
            raise ValueError(f"not a namespace name (DNS-1123 label): {namespace[:80]!r}")
        path += f"/namespaces/{namespace}"
    path += f"/{plural}"
    if name:
        valid = k8snames.is_path_segment if kind in _PATH_SEGMENT_NAMES else \
            k8snames.is_label if kind == "Namespace" else k8snames.is_subdomain
        if not valid(name):
            raise ValueError(f"not a valid {kind} name: {name[:80]!r}")
        path += f"/{name}"
    return path


def path_of(obj: Mapping[str, Any]) -> str:
    meta = obj["metadata"]
    return object_path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])


# Retry-After from the API server (429 Too Many Requests, 503 while it starts or sheds load): how long to
# honour it at most, and how often one call waits and tries again before its caller sees the error.
RETRY_AFTER_MAX_SECONDS = 30.0
RETRY_AFTER_TRIES = 3


def retry_after(status: int, headers: Mapping[str, str] | None) -> float | None:
    """Seconds the API server asked us to wait (429 or 503 with Retry-After), else None."""
    if status not in (429, 503) or not headers:
        return None
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: the API server sends seconds; treat an unknown form as no advice
    return None if seconds is None or seconds < 0 else min(seconds, RETRY_AFTER_MAX_SECONDS)


class Backoff:
    """One "not before" moment shared by every call of a client: when the API server says wait, no call
    of ours goes out before that moment (the others would only be refused too)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._until = 0.0

    def push(self, seconds: float) -> None:
        with self._lock:
            self._until = max(self._until, time.monotonic() + seconds)

    def wait(self) -> None:
        while True:  # again after each sleep: a 429 that came meanwhile may have moved the moment on
            with self._lock:
                delay = self._until - time.monotonic()
            if delay <= 0:
                return
            time.sleep(delay)


@dataclass
class Kube:
    """Blocking REST calls run on a thread pool so the asyncio loop (kopf) never waits on them."""

    connection: Connection
    executor: ThreadPoolExecutor
    impersonate: str | None = None
    backoff: Backoff = field(default_factory=Backoff)

    @classmethod
    def connect(cls, workers: int = 32, impersonate: str | None = None) -> Kube:
        return cls(Connection.open(maxsize=max(workers, 1)),
                   ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube"), impersonate)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        headers = self._headers({"Content-Type": content_type, "Accept": "application/json"})
        data = None if body is None else json.dumps(body).encode()
        relogged = False
        for attempt in range(RETRY_AFTER_TRIES + 1):
            self.backoff.wait()
            info = self.connection.info
            try:
                response = self.connection.request(method, path, query or [], headers, body=data, timeout=30)
            except urllib3.exceptions.HTTPError as err:  # refused, reset, timed out: the API server is away
                raise KubeError(0, "ConnectionError", str(err)) from None
            raw = response.data
            if 200 <= response.status < 300:
                result: dict[str, Any] = json.loads(raw) if raw else {}
                return result
            if response.status == 401 and not relogged:  # expired credentials: log in again, once
                relogged = True
                if self._relogin(info, method, path):
                    continue
            wait = retry_after(response.status, response.headers)
            if wait is None or attempt == RETRY_AFTER_TRIES:
                raise _kube_error(response.status, str(response.reason or ""), raw, wait)
            log.info("%s %s: %s, retrying after %.1fs as the API server asks", method, path, response.status, wait)
            self.backoff.push(wait)
        raise AssertionError("unreachable")

    def _headers(self, headers: dict[str, str]) -> dict[str, str]:
        return {**headers, "Impersonate-User": self.impersonate} if self.impersonate else headers

    def _relogin(self, stale: Any, method: str, path: str) -> bool:
        """After a 401 on the credentials ``stale``: whether logging in again gave others (worth a retry)."""
        try:
            return self.connection.relogin(stale)
        except NoCredentials as err:
            log.warning("%s %s: 401, and logging in again failed: %s", method, path, err)
            return False

    def open_stream(self, path: str, query: list[tuple[str, str]], timeout: urllib3.Timeout
                    ) -> urllib3.BaseHTTPResponse:
        """A GET whose body is read as it comes (a watch); the caller closes it. Raises KubeError."""
        headers = self._headers({"Accept": "application/json"})
        for relogged in (False, True):
            info = self.connection.info
            try:
                response = self.connection.request("GET", path, query, headers, body=None, timeout=timeout, stream=True)
            except urllib3.exceptions.HTTPError as err:
                raise KubeError(0, "ConnectionError", str(err)) from None
            if response.status == 200:
                return response
            raw = response.read()
            response.release_conn()
            if response.status == 401 and not relogged and self._relogin(info, "GET", path):
                continue
            raise _kube_error(response.status, str(response.reason or ""), raw)
        raise AssertionError("unreachable")

    async def call(self, method: str, path: str, body: Any = None, *, query: list[tuple[str, str]] | None = None,
                   content_type: str = "application/json") -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.executor, lambda: self.request(method, path, body, query=query, content_type=content_type))

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply with the operator's single field manager, taking ownership on conflict."""
        return await self.call(
            "PATCH", path_of(obj), dict(obj),
            query=[("fieldManager", labels.FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        path = object_path(obj["apiVersion"], obj["kind"], meta.get("namespace"))
        return await self.call("POST", path, dict(obj), query=[("fieldManager", labels.FIELD_MANAGER)])

    async def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return await self.call("GET", object_path(api_version, kind, namespace, name))
        except KubeError as err:
            if err.not_found:
                return None
            raise

    async def list_objects(
        self, api_version: str, kind: str, namespace: str | None = None, selector: str | None = None
    ) -> list[dict[str, Any]]:
        prefix, plural, namespaced = _KINDS[(api_version, kind)]
        path = object_path(api_version, kind, namespace) if namespaced and namespace else f"{prefix}/{plural}"
        query = [("labelSelector", selector)] if selector else []
        items: list[dict[str, Any]] = (await self.call("GET", path, query=query)).get("items", [])
        for item in items:
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items

    async def delete(
        self, api_version: str, kind: str, namespace: str | None, name: str, *, grace: int | None = None
    ) -> bool:
        body: dict[str, Any] = {"propagationPolicy": "Background"}
        if grace is not None:
            body["gracePeriodSeconds"] = grace
        try:
            await self.call("DELETE", object_path(api_version, kind, namespace, name), body)
        except KubeError as err:
            if err.not_found:
                return False
            raise
        return True

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return await self.call("PATCH", path, dict(patch), content_type="application/merge-patch+json")

    async def json_patch(self, path: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        return await self.call("PATCH", path, ops, content_type="application/json-patch+json")


def _kube_error(status: int, reason: str, raw: bytes | None, wait: float | None = None) -> KubeError:
    message = (raw or b"").decode(errors="replace")
    causes: tuple[str, ...] = ()
    try:
        parsed = json.loads(message or "{}")
        reason = parsed.get("reason", reason)
        message = parsed.get("message", message)
        causes = tuple(str(c.get("reason") or c.get("type") or "")
                       for c in ((parsed.get("details") or {}).get("causes") or []) if isinstance(c, dict))
    except (AttributeError, TypeError, ValueError):
        pass
    return KubeError(status, reason, message, causes, wait)


# Status writes -----------------------------------------------------------------------------------------
# Every status writer goes through write_status: read, let the writer decide, write with the resourceVersion
# it decided on (a compare-and-swap: violations and the quarantine are read-modify-write, and admission,
# detection and a release write them side by side), and on a conflict read again and decide again.
STATUS_ATTEMPTS = 5
CONFLICT_BACKOFF_SECONDS = 0.01  # the object changed: a fresh read is all it takes; jitter parts the writers
TRANSIENT_BACKOFF_SECONDS = 0.1  # the API server is away or failing: give it a moment
BACKOFF_MAX_SECONDS = 2.0

# Given the object as last read, the status fields to merge in, or None to write nothing.
Decide = Callable[[dict[str, Any]], "Mapping[str, Any] | Awaitable[Mapping[str, Any] | None] | None"]


class StatusConflict(KubeError):
    """Every attempt of a status write met a newer version: someone else keeps writing it."""


@dataclass(frozen=True)
class StatusWrite:
    seen: dict[str, Any] | None  # the object the last decision was made on; None: it is gone
    written: dict[str, Any] | None  # the API server's answer to the write; None: nothing was written


def status_backoff(attempt: int, err: KubeError, jitter: Callable[[], float] = random.random) -> float:
    """Seconds before try ``attempt + 2``: doubling from a base that depends on the error, jittered down to
    half (writers that collided do not collide again), never less than a Retry-After the API server sent."""
    base = CONFLICT_BACKOFF_SECONDS if err.conflict else TRANSIENT_BACKOFF_SECONDS
    delay = min(base * 2.0 ** attempt, BACKOFF_MAX_SECONDS) * (0.5 + jitter() / 2)
    return max(delay, err.retry_after or 0.0)


async def read_object(kube: KubeAPI, path: str) -> dict[str, Any] | None:
    try:
        return await kube.call("GET", path)
    except KubeError as err:
        if err.not_found:
            return None
        raise


async def write_status(
    kube: KubeAPI, path: str, decide: Decide, *, current: Mapping[str, Any] | None,
    read: Callable[[], Awaitable[dict[str, Any] | None]] | None = None, attempts: int = STATUS_ATTEMPTS,
    precondition: bool = True, remember: Callable[[dict[str, Any]], object] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> StatusWrite:
    """Write the status of the object at ``path`` (its REST path, without ``/status``) as ``decide`` says.

    ``current``: the object as last seen (the store's copy; None: gone, nothing is written). ``decide`` gets
    it and returns the status fields to merge in, or None for no write; on a conflict the object is read
    again (``read``, a GET of ``path`` by default) and ``decide`` asked again. A transient error (the API
    server away, throttling, failing) is tried again on the same decision after a back-off that honours
    Retry-After; anything else (a 422, a 403) is raised at once. After ``attempts`` conflicts
    ``StatusConflict`` is raised. ``precondition=False`` is for a writer that owns every field it writes
    (last writer wins, nothing to re-read). ``remember`` gets every object read and the write's answer."""
    seen = dict(current) if current is not None else None
    for attempt in range(attempts):
        if seen is None:
            return StatusWrite(None, None)
        decided = decide(seen)
        status = await decided if inspect.isawaitable(decided) else decided
        if status is None:
            return StatusWrite(seen, None)
        patch: dict[str, Any] = {"status": dict(status)}
        if precondition:
            patch["metadata"] = {"resourceVersion": seen["metadata"]["resourceVersion"]}
        try:
            written = await kube.merge_patch(path + "/status", patch)
        except KubeError as err:
            if err.not_found:
                return StatusWrite(None, None)
            if not (err.conflict or err.transient):
                raise
            if attempt == attempts - 1:
                if err.conflict:
                    raise StatusConflict(409, "Conflict", f"the status of {path} kept changing: gave up after "
                                         f"{attempts} attempts ({err.message})") from err
                raise
            log.info("status of %s: %s; trying again (%d)", path, err, attempt + 1)
            await sleep(status_backoff(attempt, err))
            if err.conflict:  # someone else wrote it: decide again on what it says now
                seen = await (read or (lambda: read_object(kube, path)))()
                if seen is not None and remember is not None:
                    remember(seen)
            continue
        if remember is not None:
            remember(written)
        return StatusWrite(seen, written)
    raise AssertionError("unreachable")


if TYPE_CHECKING:  # mypy checks that the REST client is what the logic is written against
    _KUBE_IS_A_KUBE_API: type[KubeAPI] = Kube
