"""An in-memory API server for unit tests: ``FakeKube`` implements ``stockade.kubeapi.KubeAPI``.

It holds objects by REST path (``stockade.kube.object_path``), gives each write a new resourceVersion,
honours a status write's resourceVersion precondition (409) and a JSON patch's ``test`` op (422), and
records every call in order: ``calls`` as (verb, path), ``sent`` with the body. Verbs: GET, LIST, CREATE,
APPLY, PATCH (merge and JSON patches; a status write is a PATCH of ``<path>/status``), DELETE.

Seed it with live objects (``FakeKube(obj, ...)`` or ``seed``) and make chosen calls fail with ``fail``:
``kube.fail("PATCH", status_path, conflict(), conflict())`` refuses the next two status writes with 409.
As a small stand-in for the quota controller, an applied ResourceQuota gets ``status.hard`` at once.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stockade.kube import KubeError, object_path, path_of

if TYPE_CHECKING:
    from stockade.kubeapi import KubeAPI


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


def conflict(message: str = "the object has been modified; please apply your changes to the latest version "
             "and try again") -> KubeError:
    return KubeError(409, "Conflict", message)


def invalid(message: str = "Pod \"rome\" is invalid: spec.containers[0].image: Required value") -> KubeError:
    return KubeError(422, "Invalid", message)


def throttled(retry_after: float | None = None) -> KubeError:
    return KubeError(429, "TooManyRequests", "the server has received too many requests", retry_after=retry_after)


@dataclass
class _Failure:
    verb: str
    path: str
    error: KubeError


class FakeKube:
    """Objects by REST path; every call recorded in order (see the module's docstring)."""

    def __init__(self, *objects: Mapping[str, Any], quota_controller: bool = True) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.sent: list[tuple[str, str, Any]] = []
        self.rv = 100
        self.quota_controller = quota_controller
        self._failures: list[_Failure] = []
        self._names = itertools.count(1)
        for obj in objects:
            self.seed(obj)

    # Set-up ----------------------------------------------------------------------------------------
    def put(self, path: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Store ``obj`` at ``path`` as the API server would after a write: a new resourceVersion."""
        self.rv += 1
        stored = copy.deepcopy(dict(obj))
        stored.setdefault("metadata", {})["resourceVersion"] = str(self.rv)
        self.objects[path] = stored
        return copy.deepcopy(stored)

    def seed(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """A live object (apiVersion, kind and metadata name it): returned as stored, for the store too."""
        return self.put(path_of(obj), obj)

    def fail(self, verb: str, path: str, *errors: KubeError) -> None:
        """The next calls of ``verb`` on ``path`` ("*": any path) raise ``errors``, one each, in order."""
        self._failures += [_Failure(verb, path, err) for err in errors]

    # What was done ---------------------------------------------------------------------------------
    def verbs(self, *, skip_get: bool = True) -> list[tuple[str, str]]:
        return [c for c in self.calls if not (skip_get and c[0] in ("GET", "LIST"))]

    def bodies(self, verb: str, suffix: str = "") -> list[Any]:
        """What was sent with each ``verb`` call whose path ends with ``suffix``."""
        return [body for v, path, body in self.sent if v == verb and path.endswith(suffix)]

    def status_writes(self) -> list[dict[str, Any]]:
        """The ``status`` of every status write sent (accepted or not)."""
        return [body["status"] for body in self.bodies("PATCH", "/status")]

    def applied(self) -> list[str]:
        """``Kind/name`` of every object applied, in order."""
        return [f"{b['kind']}/{b['metadata']['name']}" for b in self.bodies("APPLY")]

    def created(self) -> list[str]:
        return [f"{b['kind']}/{b['metadata'].get('name') or b['metadata'].get('generateName')}"
                for b in self.bodies("CREATE")]

    def deleted(self) -> list[str]:
        return [path for verb, path in self.calls if verb == "DELETE"]

    def live(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        found = self.objects.get(object_path(api_version, kind, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    # KubeAPI ---------------------------------------------------------------------------------------
    def _record(self, verb: str, path: str, body: Any = None) -> None:
        self.calls.append((verb, path))
        self.sent.append((verb, path, copy.deepcopy(body)))
        for failure in self._failures:
            if failure.verb == verb and failure.path in (path, "*"):
                self._failures.remove(failure)
                raise failure.error

    async def call(self, method: str, path: str, body: Any = None, *, query: list[tuple[str, str]] | None = None,
                   content_type: str = "application/json") -> dict[str, Any]:
        if method == "GET" and _is_collection(path):
            self._record("LIST", path)
            fields = dict(pair.split("=", 1) for key, value in query or () if key == "fieldSelector"
                          for pair in value.split(","))
            return {"items": [copy.deepcopy(obj) for at, obj in self.objects.items()
                              if at.rsplit("/", 1)[0] == path and _matches(obj, fields)]}
        if method == "GET":
            self._record("GET", path)
            if path not in self.objects:
                raise KubeError(404, "NotFound", f"{path} not found")
            return copy.deepcopy(self.objects[path])
        if method == "PATCH" and content_type == "application/merge-patch+json":
            return await self.merge_patch(path, body)
        if method == "PATCH" and content_type == "application/json-patch+json":
            return await self.json_patch(path, body)
        raise NotImplementedError(f"FakeKube.call {method} {path} ({content_type})")

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        path = path_of(obj)
        self._record("APPLY", path, obj)
        live = self.objects.get(path) or {}
        applied = copy.deepcopy(dict(obj))
        if live.get("status") is not None:
            applied["status"] = copy.deepcopy(live["status"])
        if self.quota_controller and obj["kind"] == "ResourceQuota":
            applied["status"] = {"hard": copy.deepcopy((obj.get("spec") or {}).get("hard") or {}), "used": {}}
        return self.put(path, applied)

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        created = copy.deepcopy(dict(obj))
        meta = created["metadata"]
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{next(self._names):05d}"
        path = path_of(created)
        self._record("CREATE", path, obj)
        if path in self.objects:
            raise KubeError(409, "AlreadyExists", f"{obj['kind']} {meta['name']!r} already exists")
        meta.setdefault("uid", f"uid-{meta['name']}")
        return self.put(path, created)

    async def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        path = object_path(api_version, kind, namespace, name)
        self._record("GET", path)
        found = self.objects.get(path)
        return copy.deepcopy(found) if found is not None else None

    async def list_objects(self, api_version: str, kind: str, namespace: str | None = None,
                           selector: str | None = None) -> list[dict[str, Any]]:
        self._record("LIST", f"{api_version}/{kind}")
        wanted = {key: value for key, _, value in (part.partition("=") for part in (selector or "").split(",") if part)}
        found = []
        for obj in self.objects.values():
            meta = obj.get("metadata") or {}
            obj_labels = meta.get("labels") or {}
            if (obj.get("apiVersion"), obj.get("kind")) != (api_version, kind):
                continue
            if namespace and meta.get("namespace") != namespace:
                continue
            if all(key in obj_labels and (not value or obj_labels[key] == value) for key, value in wanted.items()):
                found.append(copy.deepcopy(obj))
        return found

    async def delete(self, api_version: str, kind: str, namespace: str | None, name: str, *,
                     grace: int | None = None) -> bool:
        path = object_path(api_version, kind, namespace, name)
        self._record("DELETE", path, {"gracePeriodSeconds": grace} if grace is not None else None)
        if kind == "Namespace":  # what is in it goes with it
            for at in [at for at in self.objects if f"/namespaces/{name}/" in at]:
                self.objects.pop(at)
        return self.objects.pop(path, None) is not None

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        self._record("PATCH", path, patch)
        target = path.removesuffix("/status")
        live = self.objects.get(target)
        if live is None:
            raise KubeError(404, "NotFound", f"{target} not found")
        wanted = (patch.get("metadata") or {}).get("resourceVersion")
        if wanted and wanted != live["metadata"]["resourceVersion"]:
            raise conflict()
        if path.endswith("/status"):  # the status subresource: only the status changes
            return self.put(target, merge(live, {"status": patch.get("status")}))
        return self.put(target, merge(live, {k: v for k, v in patch.items() if k != "status"}))

    async def json_patch(self, path: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        self._record("PATCH", path, ops)
        live = self.objects.get(path)
        if live is None:
            raise KubeError(404, "NotFound", f"{path} not found")
        patched = copy.deepcopy(live)
        for op in ops:
            *parents, last = op["path"].lstrip("/").split("/")
            node: Any = patched
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
            if op["op"] == "test":
                found = node[int(last)] if isinstance(node, list) and last.isdigit() and int(last) < len(node) \
                    else node.get(last) if isinstance(node, dict) else None
                if found != op["value"]:
                    raise KubeError(422, "Invalid", f"testing value {op['path']} failed: test failed")
            elif op["op"] == "add" and isinstance(node, list):
                node.append(op["value"]) if last == "-" else node.insert(int(last), op["value"])
            elif op["op"] == "add":
                node[last] = copy.deepcopy(op["value"])
            elif op["op"] == "remove":
                del node[int(last) if isinstance(node, list) else last]
            else:
                raise NotImplementedError(op["op"])
        return self.put(path, patched)


def _is_collection(path: str) -> bool:
    """/api/v1/namespaces/x/pods is a collection, /api/v1/namespaces/x and .../pods/y are objects: after the
    group and version an odd number of segments."""
    parts = path.strip("/").split("/")
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    return len(rest) % 2 == 1


def _matches(obj: Mapping[str, Any], fields: Mapping[str, str]) -> bool:
    """A field selector of dotted paths, such as ``involvedObject.name=rome``."""
    for dotted, value in fields.items():
        node: Any = obj
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node != value:
            return False
    return True


class Events:
    """An ``EmitEvent`` that keeps what it was given: (type, reason, message)."""

    def __init__(self) -> None:
        self.posted: list[tuple[str, str, str]] = []

    def __call__(self, body: Any, kind: str, reason: str, message: str) -> None:
        self.posted.append((kind, reason, message))

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.posted]


class FakeResolver:
    """A ``HostResolver`` that knows a fixed set of addresses and never looks anything up."""

    def __init__(self, addresses: Mapping[str, list[str]] | None = None, refresh_in: float | None = None) -> None:
        self.addresses = dict(addresses or {})
        self.refresh_in = refresh_in

    async def resolve(self, hosts: list[str]) -> tuple[dict[str, list[str]], float | None]:
        return {h: self.addresses[h] for h in hosts if h in self.addresses}, self.refresh_in

    def stale(self, hosts: list[str]) -> list[str]:
        return []


if TYPE_CHECKING:  # mypy (run on this file) checks that the fake is what the operator's logic is written against
    _FAKE_IS_A_KUBE_API: type[KubeAPI] = FakeKube
