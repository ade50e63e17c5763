"""The AgentPolicies and namespace labels the watches have seen, and which policies bound a namespace.

Filled by the policy watch (stockade.admission.policy_watch); read by the admission webhook and by the
reconciler's budget check. A policy is parsed once per resourceVersion, so a lookup parses nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stockade import labels
from stockade.grantpolicy.ceilings import Bound


class PolicyIndex:
    def __init__(self) -> None:
        self._policies: dict[str, tuple[str, Bound]] = {}  # name -> (resourceVersion, parsed)
        self._namespaces: dict[str, dict[str, str]] = {}  # name -> labels
        # namespace -> (generation, its bounding policies): an entry made before the last change is ignored,
        # so a lookup on the webhook's thread racing a watch event on the main one never keeps a stale answer.
        self._cache: dict[str, tuple[int, list[Bound]]] = {}
        self._generation = 0
        self.synced = False  # True once the first full listing of policies has been seen

    # Writes (the watch) ------------------------------------------------------------------------------
    def put_policy(self, body: Mapping[str, Any]) -> Bound:
        meta = body.get("metadata") or {}
        name, version = str(meta.get("name") or ""), str(meta.get("resourceVersion") or "")
        current = self._policies.get(name)
        if current is not None and current[0] == version and version:
            return current[1]
        bound = Bound.of(name, body.get("spec"))
        self._policies[name] = (version, bound)
        self._changed()
        return bound

    def forget_policy(self, name: str) -> None:
        if self._policies.pop(name, None) is not None:
            self._changed()

    def put_namespace(self, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        name = str(meta.get("name") or "")
        found = dict(meta.get("labels") or {})
        if self._namespaces.get(name) != found:
            self._namespaces[name] = found
            self._changed()

    def forget_namespace(self, name: str) -> None:
        if self._namespaces.pop(name, None) is not None:
            self._changed()

    def _changed(self) -> None:
        self._generation += 1
        self._cache.clear()

    # Reads -------------------------------------------------------------------------------------------
    def policies(self) -> list[Bound]:
        return [bound for _, (_, bound) in sorted(self._policies.items())]

    def policy(self, name: str) -> Bound | None:
        found = self._policies.get(name)
        return found[1] if found else None

    def namespace_labels(self, namespace: str) -> dict[str, str] | None:
        return self._namespaces.get(namespace)

    def namespaces(self) -> list[str]:
        return sorted(self._namespaces)

    def is_run_namespace(self, namespace: str) -> bool:
        return labels.AGENTRUN in (self._namespaces.get(namespace) or {})

    def bounding(self, namespace: str) -> list[Bound] | None:
        """The policies selecting ``namespace`` by its labels as last seen, by name; None for a namespace
        not seen yet (the caller reads it and puts it here first)."""
        generation = self._generation
        cached = self._cache.get(namespace)
        if cached is not None and cached[0] == generation:
            return cached[1]
        found = self._namespaces.get(namespace)
        if found is None:
            return None
        result = [bound for bound in self.policies() if bound.selects(found)]
        self._cache[namespace] = (generation, result)
        return result


# The operator's one index: fed by the policy and namespace watches, read by admission and the reconciler.
INDEX = PolicyIndex()
