"""What the mutating webhook does to an AgentRun: pure, a request in, JSON-patch operations out.

* On CREATE the cleanup finalizer goes on with the object itself, so there is never a moment in
  which an AgentRun exists, the operator starts building its fence, and a quick delete removes the
  object before the finalizer lands (kubernetes/kubernetes#77988): the delete then waits for us.
* Lifting a quarantine is a permission of its own, not a side effect of being allowed to edit the
  AgentRun. Setting or changing the ``stockade.io/release`` annotation needs the verb ``release`` on
  the AgentRun (``agentruns.stockade.io``, checked with a SubjectAccessReview of the requesting
  user), and the value recorded is the authenticated user, whatever the caller wrote. The operator
  records ``status.quarantine.releasedBy`` from that value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stockade import labels

# The permission that lifts a quarantine: verb ``release`` on agentruns (like ``approve`` on a
# certificate signer, a verb no built-in role holds, so only those a platform binds have it).
RELEASE_VERB = "release"
RELEASER_ROLE = "stockade-releaser"  # the chart's ClusterRole holding it (bind it to who may release)


def _escape(segment: str) -> str:
    """A JSON-pointer segment (RFC 6901): annotation keys hold '/'."""
    return segment.replace("~", "~0").replace("/", "~1")


def release_requested(obj: Mapping[str, Any] | None, old: Mapping[str, Any] | None) -> str | None:
    """The release annotation's new value when this request sets or changes it, else None."""
    def annotation(body: Mapping[str, Any] | None) -> str | None:
        value = (((body or {}).get("metadata") or {}).get("annotations") or {}).get(labels.RELEASE_ANNOTATION)
        return None if value is None else str(value)

    new = annotation(obj)
    return new if new is not None and new != annotation(old) else None


@dataclass(frozen=True)
class Mutation:
    ops: list[dict[str, Any]]
    refusal: str | None = None  # a message: the request is refused


def mutate(operation: str, obj: Mapping[str, Any] | None, old: Mapping[str, Any] | None, *, username: str,
           may_release: bool | None) -> Mutation:
    """``may_release`` is the SubjectAccessReview's answer, asked only when ``release_requested``."""
    meta: Mapping[str, Any] = (obj or {}).get("metadata") or {}
    ops: list[dict[str, Any]] = []
    if operation == "CREATE":
        finalizers = list(meta.get("finalizers") or [])
        if labels.FINALIZER not in finalizers:
            ops.append({"op": "add", "path": "/metadata/finalizers", "value": [*finalizers, labels.FINALIZER]})
    if release_requested(obj, old) is not None:
        if not may_release:
            name, namespace = meta.get("name", ""), meta.get("namespace", "")
            return Mutation([], refusal=(
                f"releasing the quarantine of AgentRun {namespace}/{name} needs the verb '{RELEASE_VERB}' on "
                f"agentruns.stockade.io, which {username or 'this user'} does not hold; a platform admin binds the "
                f"ClusterRole {RELEASER_ROLE} to whoever may release (editing the AgentRun is not enough)"))
        if not meta.get("annotations"):
            ops.append({"op": "add", "path": "/metadata/annotations", "value": {}})
        ops.append({"op": "add", "path": f"/metadata/annotations/{_escape(labels.RELEASE_ANNOTATION)}",
                    "value": username})
    return Mutation(ops)


def release_review(username: str, groups: tuple[str, ...], *, uid: str, extra: Mapping[str, Any] | None,
                   namespace: str, name: str) -> dict[str, Any]:
    """The SubjectAccessReview asking whether this user may release this AgentRun."""
    spec: dict[str, Any] = {
        "user": username, "groups": list(groups),
        "resourceAttributes": {"group": "stockade.io", "resource": "agentruns", "verb": RELEASE_VERB,
                               "namespace": namespace, "name": name},
    }
    if uid:
        spec["uid"] = uid
    if extra:
        spec["extra"] = {k: list(v) if isinstance(v, list | tuple) else [str(v)] for k, v in extra.items()}
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}
