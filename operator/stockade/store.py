"""What the operator has seen: AgentRuns and every object in their run namespaces, kept by watches.

The reconciler reads desired-vs-live from here instead of asking the API server each time, so a
reconcile with nothing to do makes no request at all. Each AgentRun's spec is parsed here once per
generation (:meth:`Store.spec_of`), for the reconciler, admission, detection and the budget gate alike.
"""

from __future__ import annotations

import json
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from stockade import labels
from stockade.api.models import AgentRunSpec

RunKey = tuple[str, str]  # (namespace, name) of an AgentRun
ObjectKey = tuple[str, str, str]  # (kind, namespace or "", name)
ObjectRef = tuple[str, str | None, Callable[[], dict[str, Any]]]  # (name, resourceVersion, decode it)


def key_of(obj: Mapping[str, Any]) -> ObjectKey:
    meta = obj["metadata"]
    return (obj["kind"], meta.get("namespace") or "", meta["name"])


def run_of(obj: Mapping[str, Any]) -> RunKey | None:
    """The AgentRun an object says it belongs to, from its labels (the name label of a name longer than a
    label value is shortened: for run namespaces prefer :meth:`Store.run_of_namespace`, which goes by uid)."""
    found = (obj.get("metadata") or {}).get("labels") or {}
    name, namespace = found.get(labels.AGENTRUN), found.get(labels.AGENTRUN_NAMESPACE)
    return (namespace, name) if name and namespace else None


def uid_of(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


def owner_uid(namespace: Mapping[str, Any]) -> str:
    """The AgentRun uid a run namespace is labelled with ("" on a namespace made before uids were recorded)."""
    return str(((namespace.get("metadata") or {}).get("labels") or {}).get(labels.AGENTRUN_UID) or "")


@dataclass(frozen=True)
class SpecError:
    """Why an AgentRun's spec does not parse: ``spec.<path>: <message>`` per problem, joined by "; "."""

    problems: str


def parse_spec(body: Mapping[str, Any]) -> AgentRunSpec | SpecError:
    try:
        return AgentRunSpec.model_validate(body.get("spec") or {})
    except ValidationError as err:
        return SpecError("; ".join(f"spec.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()))


@dataclass(frozen=True, slots=True)
class _Packed:
    """One stored object as compressed compact JSON, with the one field compared without decoding it.

    A decoded object costs about seven times its JSON in Python dicts and strings; 1,000 runs keep about
    8,000 of them, most of the operator's memory when they were kept as dicts. Each read decodes a fresh,
    detached copy (about 20 µs for a guardrail), so no reader can change what is stored."""

    version: str | None
    data: bytes

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> _Packed:
        meta = _slim_metadata(obj.get("metadata") or {})
        text = json.dumps({**obj, "metadata": meta}, separators=(",", ":"), ensure_ascii=False, default=_jsonable)
        return cls(meta.get("resourceVersion"), zlib.compress(text.encode(), 1))

    def unpack(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(zlib.decompress(self.data))
        return found


class Store:
    def __init__(self) -> None:
        self.agentruns: dict[RunKey, dict[str, Any]] = {}
        # The parsed spec (or why it does not parse) per run, for the (uid, generation) it was parsed from.
        # Read and written by the webhook's thread too: a race costs at most one parse more.
        self._specs: dict[RunKey, tuple[tuple[str, Any], AgentRunSpec | SpecError]] = {}
        self._objects: dict[ObjectKey, _Packed] = {}
        self._by_namespace: dict[str, set[ObjectKey]] = defaultdict(set)
        # Run namespace -> (the uid it is labelled with, the run its name labels say); uid -> AgentRun key.
        self._run_namespaces: dict[str, tuple[str, RunKey]] = {}
        self._namespace_of_uid: dict[str, str] = {}
        self._uids: dict[str, RunKey] = {}

    # AgentRuns -------------------------------------------------------------------------------
    def put_agentrun(self, body: Mapping[str, Any]) -> RunKey:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        current = self.agentruns.get(key)
        if current is None or _newer(body, current):
            if current is not None and uid_of(current) != uid_of(body):
                self._uids.pop(uid_of(current), None)
            self.agentruns[key] = _slim(body)
            if uid_of(body):
                self._uids[uid_of(body)] = key
        return key

    def has_seen(self, obj: Mapping[str, Any]) -> bool:
        """True when the store already holds this exact version (the echo of the operator's own write)."""
        meta = obj.get("metadata") or {}
        version = meta.get("resourceVersion")
        if obj.get("kind") == "AgentRun":
            current = self.agentruns.get((str(meta.get("namespace")), str(meta.get("name"))))
            return current is not None and version is not None and \
                (current.get("metadata") or {}).get("resourceVersion") == version
        packed = self._objects.get(key_of(obj))
        return packed is not None and version is not None and packed.version == version

    def forget_agentrun(self, key: RunKey) -> None:
        gone = self.agentruns.pop(key, None)
        self._specs.pop(key, None)
        if gone is not None:
            self._uids.pop(uid_of(gone), None)

    def spec_of(self, key: RunKey) -> AgentRunSpec | SpecError | None:
        """The stored AgentRun's parsed spec, parsed once per generation (None when no such run is stored).
        The spec of one generation never changes: the API server raises the generation with every edit."""
        body = self.agentruns.get(key)
        if body is None:
            return None
        token = (uid_of(body), (body.get("metadata") or {}).get("generation"))
        cached = self._specs.get(key)
        if cached is not None and cached[0] == token:
            return cached[1]
        spec = parse_spec(body)
        self._specs[key] = (token, spec)
        return spec

    def valid_spec(self, key: RunKey) -> AgentRunSpec | None:
        """The stored AgentRun's parsed spec; None for an invalid one (it grants nothing) or no such run."""
        spec = self.spec_of(key)
        return spec if isinstance(spec, AgentRunSpec) else None

    def agentrun_uids(self) -> dict[str, RunKey]:
        return dict(self._uids)

    # Everything else ---------------------------------------------------------------------------
    def put(self, obj: Mapping[str, Any]) -> None:
        key = key_of(obj)
        current = self._objects.get(key)
        if current is not None and not _newer_version((obj.get("metadata") or {}).get("resourceVersion"),
                                                      current.version):
            return
        self._objects[key] = _Packed.of(obj)
        self._by_namespace[key[1]].add(key)
        if obj["kind"] == "Namespace":
            self._forget_run_namespace(key[2])
            owner = run_of(obj)
            if owner:
                uid = owner_uid(obj)
                self._run_namespaces[key[2]] = (uid, owner)
                if uid:
                    self._namespace_of_uid[uid] = key[2]

    def remove(self, obj: Mapping[str, Any]) -> None:
        self._remove(key_of(obj))

    def _remove(self, key: ObjectKey) -> None:
        self._objects.pop(key, None)
        self._by_namespace[key[1]].discard(key)
        if not self._by_namespace[key[1]]:
            self._by_namespace.pop(key[1], None)
        if key[0] == "Namespace":
            self._forget_run_namespace(key[2])

    def _forget_run_namespace(self, name: str) -> None:
        uid, _ = self._run_namespaces.pop(name, ("", ("", "")))
        if uid and self._namespace_of_uid.get(uid) == name:
            self._namespace_of_uid.pop(uid, None)

    def objects_of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj.unpack() for key, obj in list(self._objects.items()) if key[0] == kind]

    def replace_kind(self, kind: str, listed: list[dict[str, Any]]) -> set[ObjectKey]:
        """Make the store hold exactly ``listed`` for ``kind`` (a fresh LIST after a watch broke or went
        quiet): what the list lacks is dropped, what is new or newer is kept. Returns the keys that changed."""
        fresh = {key_of(obj): obj for obj in listed}
        changed: set[ObjectKey] = set()
        for key in [k for k in self._objects if k[0] == kind and k not in fresh]:
            self._remove(key)
            changed.add(key)
        for key, obj in fresh.items():
            current = self._objects.get(key)
            version = (obj.get("metadata") or {}).get("resourceVersion")
            if current is None or current.version != version:
                self._objects.pop(key, None)  # a list is the truth: take it even if its version looks older
                self.put(obj)
                changed.add(key)
        return changed

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        packed = self._objects.get((kind, namespace, name))
        return packed.unpack() if packed is not None else None

    def in_namespace(self, namespace: str, kind: str | None = None) -> Iterator[dict[str, Any]]:
        for key in list(self._by_namespace.get(namespace, ())):
            if kind is None or key[0] == kind:
                packed = self._objects.get(key)
                if packed is not None:
                    yield packed.unpack()

    def refs_in_namespace(self, namespace: str, kind: str) -> Iterator[ObjectRef]:
        """(name, resourceVersion, decode) per object of this kind: a reader that keeps its own account by
        version decodes only what changed."""
        for key in list(self._by_namespace.get(namespace, ())):
            packed = self._objects.get(key) if key[0] == kind else None
            if packed is not None:
                yield key[2], packed.version, packed.unpack

    def run_of_namespace(self, namespace: str) -> RunKey | None:
        """The AgentRun whose run namespace this is: by the uid label (the name labels of a namespace made
        before uids were recorded). None for an orphan whose AgentRun is gone."""
        found = self._run_namespaces.get(namespace)
        if found is None:
            return None
        uid, by_labels = found
        return self._uids.get(uid) if uid else by_labels

    def namespace_of_uid(self, uid: str) -> str | None:
        return self._namespace_of_uid.get(uid) if uid else None

    def run_namespace_of(self, key: RunKey) -> str | None:
        """The run namespace of an AgentRun: the namespace labelled with its uid, else the recorded one."""
        body = self.agentruns.get(key)
        if body is None:
            return None
        return self.namespace_of_uid(uid_of(body)) or (body.get("status") or {}).get("runNamespace") or None

    def run_namespaces(self) -> list[tuple[str, str, RunKey]]:
        """(namespace, uid label, run by labels) of every run namespace seen."""
        return [(name, uid, key) for name, (uid, key) in self._run_namespaces.items()]

    def is_run_namespace(self, namespace: str) -> bool:
        return namespace in self._run_namespaces


# Bulky metadata the reconciler never reads: dropping it roughly halves what each object costs in memory.
_DROPPED_METADATA = ("managedFields",)
_DROPPED_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


def _slim(obj: Mapping[str, Any]) -> dict[str, Any]:
    plain = _plain(obj)
    if isinstance(plain.get("metadata"), dict):
        plain["metadata"] = _slim_metadata(plain["metadata"])
    return plain


def _slim_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the metadata without what no reader needs (managedFields, kubectl's last-applied)."""
    slim = {k: v for k, v in meta.items() if k not in _DROPPED_METADATA}
    annotations = slim.get("annotations")
    if isinstance(annotations, Mapping):
        slim["annotations"] = {k: v for k, v in annotations.items() if k not in _DROPPED_ANNOTATIONS}
    return slim


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):  # kopf's read-only views
        return dict(value)
    return str(value)


def _plain(obj: Mapping[str, Any]) -> dict[str, Any]:
    # kopf hands out read-only views; keep plain, detached dicts.
    return {k: (_plain(v) if isinstance(v, Mapping) else _plain_list(v) if isinstance(v, list) else v)
            for k, v in obj.items()}


def _plain_list(items: list[Any]) -> list[Any]:
    return [(_plain(v) if isinstance(v, Mapping) else _plain_list(v) if isinstance(v, list) else v) for v in items]


def _newer(candidate: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    return _newer_version((candidate.get("metadata") or {}).get("resourceVersion"),
                          (current.get("metadata") or {}).get("resourceVersion"))


def _newer_version(new: Any, old: Any) -> bool:
    """resourceVersions are opaque, but etcd's are integers: prefer the later one when both parse."""
    try:
        return int(str(new)) >= int(str(old))
    except ValueError:
        return True
