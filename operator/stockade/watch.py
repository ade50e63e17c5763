"""One watch stream per kind the operator observes, feeding the store and detection; kopf keeps only the
AgentRun (and the AgentPolicy).

Each kind is listed once (the store is primed before the first reconcile), then watched from the list's
resourceVersion with bookmarks. A stream that breaks (the API server or etcd restarted, 410 Gone, any
error) or goes quiet (no event or bookmark for ``SILENCE_SECONDS``; the API server sends a bookmark about
once a minute) is re-established from a fresh LIST, and the store is made to match that list: an object
deleted while the stream was down is dropped, so drift repair sees it missing. A periodic relist
(``RESYNC_SECONDS``) is the level-based backstop for anything a stream could still miss.

The same stream feeds detection for the kinds it judges (what an agent makes in its run namespace, or a
guardrail someone edited): every event of such an object in a run namespace goes to ``detect``, and
:meth:`WatchLayer.replay` hands it every such object at start and when this replica takes over. One stream
per kind, not one for the store and one per kopf handler: kopf's per-object workers for child kinds held a
decoded body and a queue per object (issue 12, point 1).

kopf's own watches were not enough: after an API server or etcd restart they resumed, but DELETED
events of guardrails stopped arriving and the store kept objects that were gone (issue 14, point 10).

Streams run in daemon threads (the official client is blocking); events cross to the asyncio loop in
order through a queue.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import urllib3

from stockade import kinds, labels
from stockade.kube import Kube
from stockade.store import ObjectKey, RunKey, Store, run_of

log = logging.getLogger("stockade.watch")

SERVER_TIMEOUT_SECONDS = 240  # the API server ends each watch request after this (then it is resumed)
SILENCE_SECONDS = 100  # nothing at all for this long (bookmarks come about every 60 s): the stream is dead
RESYNC_SECONDS = 600.0
BACKOFF_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)
PAGE = 500


@dataclass(frozen=True)
class WatchedKind:
    api_version: str
    kind: str
    path: str  # the cluster-wide collection
    selector: str | None = labels.AGENTRUN  # listed and watched with this label selector (None: everything)
    stored: kinds.Watch | None = "labelled"  # what the store keeps: the operator's own, or all in run namespaces
    detected: bool = False  # its events in run namespaces go to detection

    @property
    def resource(self) -> tuple[str, str]:
        """(API group, plural), as RBAC names it."""
        parts = self.path.strip("/").split("/")
        return ("" if parts[0] == "api" else parts[1]), parts[-1]


def _watched(kind: kinds.Kind) -> WatchedKind:
    # Detection needs what the agent made too, which the operator's label does not select: such a kind is
    # watched whole and the store keeps only what it would have selected.
    whole = kind.whole or kind.detected or kind.watched == "every"
    return WatchedKind(kind.api_version, kind.kind, kind.collection, selector=None if whole else labels.AGENTRUN,
                       stored=kind.watched, detected=kind.detected)


# Everything the reconciler (and admission, through the store) reads besides the AgentRun, and everything
# detection judges: the table's watched and detected kinds, the Namespace first (WatchLayer.prime lists it
# before the rest: pods and detected objects are kept only inside run namespaces).
KINDS: tuple[WatchedKind, ...] = tuple(_watched(k) for k in kinds.KINDS if k.watched is not None or k.detected)

Detect = Callable[[Mapping[str, Any], "str | None"], None]  # (object, event type: ADDED, MODIFIED, DELETED, None)
Listener = Detect  # every event of one kind, wherever it is (the policy index, budgets)


class Gone(Exception):
    """410: the resourceVersion is too old to resume from; list again."""


class Broken(Exception):
    """The stream ended before its time, or went silent: resume from a fresh list."""


Trigger = Callable[[RunKey], None]


class KindWatch:
    def __init__(self, kube: Kube, store: Store, kind: WatchedKind, trigger: Trigger, *,
                 detect: Detect | None = None, listeners: Sequence[Listener] = ()) -> None:
        self.kube = kube
        self.store = store
        self.kind = kind
        self.trigger = trigger
        self.detect = detect if kind.detected else None
        self.listeners = tuple(listeners)
        self.resource_version: str | None = None
        self.relists = 0  # how often the kind was listed (start-up included)
        self.events = 0
        self._listed_at = 0.0

    # Listing ------------------------------------------------------------------------------------------
    async def relist(self, feed: bool = True) -> set[ObjectKey]:
        """List the kind and make the store match; with ``feed``, detection sees every object listed (what
        was made while the stream was down). Priming does not feed: the AgentRuns are not known yet."""
        items, version = await self._list()
        if feed:
            self._feed(items)
            for obj in items:
                self._tell(obj, None)
        changed: set[ObjectKey] = set()
        if self.kind.stored is not None:
            changed = self.store.replace_kind(self.kind.kind, [obj for obj in items if self._keep(obj)])
        self.resource_version = version
        self.relists += 1
        self._listed_at = time.monotonic()
        return changed

    async def _list(self) -> tuple[list[dict[str, Any]], str]:
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            query = [("limit", str(PAGE))]
            if self.kind.selector:
                query.append(("labelSelector", self.kind.selector))
            if token:
                query.append(("continue", token))
            page = await self.kube.call("GET", self.kind.path, query=query)
            for item in page.get("items") or []:
                item.setdefault("apiVersion", self.kind.api_version)
                item.setdefault("kind", self.kind.kind)
                items.append(item)
            meta = page.get("metadata") or {}
            token = str(meta.get("continue") or "")
            if not token:
                return items, str(meta.get("resourceVersion") or "")

    async def replay(self) -> None:
        """Every object of the kind in a run namespace to detection, as a fresh list shows it (detection
        reports each finding once per object state, so what it saw before is not reported again)."""
        if self.detect is None:
            return
        self._feed((await self._list())[0])

    def _feed(self, items: list[dict[str, Any]]) -> None:
        if self.detect is not None:
            for obj in items:
                if self._in_run_namespace(obj):
                    self.detect(obj, None)

    def _tell(self, obj: Mapping[str, Any], event_type: str | None) -> None:
        for listener in self.listeners:
            try:
                listener(obj, event_type)
            except Exception:  # one consumer's bug must not break the stream the store depends on
                log.exception("a listener of %s failed on %s", self.kind.kind, (obj.get("metadata") or {}).get("name"))

    def _in_run_namespace(self, obj: Mapping[str, Any]) -> bool:
        return self.store.is_run_namespace(str((obj.get("metadata") or {}).get("namespace") or ""))

    def _keep(self, obj: Mapping[str, Any]) -> bool:
        """Whether the store keeps it: the operator's own (labelled by it), or for a kind the store keeps
        whole (pods an agent makes need not carry the label), what is inside a run namespace."""
        if self.kind.stored == "labelled":
            found = (obj.get("metadata") or {}).get("labels") or {}
            return self.kind.selector is not None or labels.AGENTRUN in found
        return self.kind.stored == "every" and self._in_run_namespace(obj)

    # Watching -----------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Forever: watch, and after any break relist (with back-off) and watch again."""
        failures = 0
        while True:
            try:
                if self.resource_version is None or time.monotonic() - self._listed_at > RESYNC_SECONDS:
                    self._trigger_all(await self.relist())
                await self._stream()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Gone:
                self.resource_version = None
            except Exception as err:
                self.resource_version = None
                delay = BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS) - 1)]
                failures += 1
                log.warning("watch of %s broke (%s); relisting in %.1fs", self.kind.kind, err, delay)
                await asyncio.sleep(delay)

    async def _stream(self) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any] | BaseException | None] = asyncio.Queue()

        def put(item: dict[str, Any] | BaseException | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        stop = threading.Event()
        started = time.monotonic()
        thread = threading.Thread(target=self._read, args=(str(self.resource_version), put, stop), daemon=True,
                                  name=f"watch-{self.kind.kind}")
        thread.start()
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                self._on_event(item)
        finally:
            stop.set()
        if time.monotonic() - started < SERVER_TIMEOUT_SECONDS * 0.9:
            # The API server closes a healthy watch at its timeout; earlier means it went away (restarted,
            # or its cache re-initialised after etcd did) and events may have been missed.
            raise Broken("the stream ended early")

    def _read(self, since: str, put: Callable[[dict[str, Any] | BaseException | None], None],
              stop: threading.Event) -> None:
        try:
            for event in self._lines(since, stop):
                put(event)
            put(None)
        except BaseException as err:
            put(err)

    def _lines(self, since: str, stop: threading.Event) -> Iterator[dict[str, Any]]:
        query = [("watch", "true"), ("allowWatchBookmarks", "true"), ("resourceVersion", since),
                 ("timeoutSeconds", str(SERVER_TIMEOUT_SECONDS))]
        if self.kind.selector:
            query.append(("labelSelector", self.kind.selector))
        # The read timeout is the silence detector: no bytes (not even a bookmark) for that long.
        response = self.kube.open_stream(self.kind.path, query, urllib3.Timeout(connect=10, read=SILENCE_SECONDS))
        try:
            for line in response:
                if stop.is_set():
                    return
                if line.strip():
                    yield json.loads(line)
        finally:
            # Closed, not handed back half-read: a stream left early must not leave bytes for the next request.
            response.close()
            response.release_conn()

    def _on_event(self, event: Mapping[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone(str(obj.get("message") or "410"))
            raise Broken(f"watch error: {obj.get('message') or obj}")
        self.events += 1
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if version:
            self.resource_version = str(version)
        if kind == "BOOKMARK":
            return
        obj = {"apiVersion": self.kind.api_version, "kind": self.kind.kind, **obj}
        if self.detect is not None and self._in_run_namespace(obj):
            self.detect(obj, str(kind) if kind else None)  # every event, the operator's own echoes included
        self._tell(obj, str(kind) if kind else None)
        if not self._keep(obj):
            return
        if kind == "DELETED":
            self.store.remove(obj)
        elif self.store.has_seen(obj):
            return  # the echo of the operator's own write: that reconcile already saw this state
        else:
            self.store.put(obj)
        self._trigger_object(obj)

    # Triggers ---------------------------------------------------------------------------------------
    def _trigger_object(self, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        if self.kind.kind == "Namespace":
            key = self.store.run_of_namespace(str(meta.get("name"))) or run_of(obj)
        else:
            key = self.store.run_of_namespace(str(meta.get("namespace") or "")) or run_of(obj)
        if key is not None:
            self.trigger(key)

    def _trigger_all(self, changed: set[ObjectKey]) -> None:
        runs = {self.store.run_of_namespace(name if kind == "Namespace" else namespace)
                for kind, namespace, name in changed}
        for key in runs:
            if key is not None:
                self.trigger(key)


class WatchLayer:
    """Every watched kind: primed together at start-up, then one task per kind."""

    def __init__(self, kube: Kube, store: Store, trigger: Trigger, detect: Detect | None = None,
                 listeners: Mapping[str, Sequence[Listener]] | None = None) -> None:
        """``listeners``: by kind, what else hears every event of it (the stream must be whole: see KINDS)."""
        found = listeners or {}
        self.watches = [KindWatch(kube, store, kind, trigger, detect=detect,
                                  listeners=found.get(kind.kind, ())) for kind in KINDS]
        self._tasks: list[asyncio.Task[None]] = []

    async def prime(self) -> None:
        """Fill the store before the first reconcile, so that "not seen yet" is never taken for "missing"
        (which would re-create what exists). Namespaces first: pods are kept only inside run namespaces."""
        await self.watches[0].relist(feed=False)
        await asyncio.gather(*(watch.relist(feed=False) for watch in self.watches[1:]))

    async def replay(self) -> None:
        """Every detected object in a run namespace to detection (at start, once the AgentRuns are known,
        and when this replica takes over: a standby judges nothing)."""
        await asyncio.gather(*(watch.replay() for watch in self.watches if watch.detect is not None))

    def start(self) -> None:
        self._tasks = [asyncio.get_running_loop().create_task(w.run(), name=f"watch-{w.kind.kind}")
                       for w in self.watches]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
