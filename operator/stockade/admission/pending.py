"""Pods admitted a moment ago that the store has not seen yet.

The store learns of a pod from its watch event, some milliseconds after admission. Without this,
a burst of concurrent creations would each see the same room left in the grant; the quota is the
atomic backstop, this keeps the webhook's own answer right too.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from typing import Any

TTL_SECONDS = 10.0  # long after any watch event; a pod the API server refused later just expires


class Pending:
    def __init__(self) -> None:
        self._pods: dict[str, dict[str, tuple[float, Mapping[str, Any]]]] = {}

    def add(self, namespace: str, name: str, pod: Mapping[str, Any], now: float) -> None:
        if name:
            self._pods.setdefault(namespace, {})[name] = (now + TTL_SECONDS, pod)

    def unseen(self, namespace: str, seen: Container[str], now: float, exclude: str = "") -> list[Mapping[str, Any]]:
        """Pending pods of the namespace that ``seen`` lacks; forgets the seen and the expired."""
        pods = self._pods.get(namespace)
        if not pods:
            return []
        for name in [n for n, (deadline, _) in pods.items() if n in seen or deadline < now]:
            del pods[name]
        if not pods:
            del self._pods[namespace]
            return []
        return [pod for name, (_, pod) in pods.items() if name != exclude]
