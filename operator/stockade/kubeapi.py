"""What the controller logic needs from the API server, as types: the calls and the Event poster.

The reconciler, its collaborators (lifecycle, workload) and the responder depend on these Protocols,
not on the REST client: the operator gives them ``stockade.kube.Kube`` (which mypy checks satisfies
``KubeAPI``), the unit tests an in-memory API server (``tests/unit/fakes.py``). Manifests are plain
dicts in and out; paths are built by ``stockade.kube.object_path``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

# An Event on an object: (the object, "Normal" or "Warning", reason, message). Fire and forget.
EmitEvent = Callable[[Mapping[str, Any], str, str, str], None]


class KubeAPI(Protocol):
    """The calls the operator's logic makes. Errors are ``stockade.kube.KubeError`` (status, reason, message)."""

    async def call(self, method: str, path: str, body: Any = None, *, query: list[tuple[str, str]] | None = None,
                   content_type: str = "application/json") -> dict[str, Any]:
        """Any request on a REST path (a GET of a collection with a field selector, say)."""
        ...

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply with the operator's field manager, taking ownership on conflict."""
        ...

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """POST: 409 when it exists already (what an apply would take over)."""
        ...

    async def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The object, or None when there is none."""
        ...

    async def list_objects(self, api_version: str, kind: str, namespace: str | None = None,
                           selector: str | None = None) -> list[dict[str, Any]]:
        """Every object of a kind (in one namespace, or everywhere), with apiVersion and kind filled in."""
        ...

    async def delete(self, api_version: str, kind: str, namespace: str | None, name: str, *,
                     grace: int | None = None) -> bool:
        """Background propagation; False when it was gone already."""
        ...

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """RFC 7386 merge patch; a path ending in ``/status`` writes the status subresource."""
        ...

    async def json_patch(self, path: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        """RFC 6902 patch: a failed ``test`` op is refused (422), which makes it a compare-and-swap."""
        ...
