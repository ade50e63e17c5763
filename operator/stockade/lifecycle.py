"""The two ends of a run's life: its finalizer first, and no workload outliving its AgentRun.

Nothing is created for an AgentRun until the API server's answer shows the finalizer in place. That
alone is not enough: a DELETE that read the object just before the finalizer patch still removes it
afterwards (kubernetes/kubernetes#77988), so a run namespace can be left with its agent running and no
AgentRun. Run namespaces carry their AgentRun's uid, and three things remove one whose AgentRun is gone:
the AgentRun's DELETED event, a check right after the namespace is created, and a sweep at start-up and
then periodically that compares fresh lists (so it also covers whatever happened while the operator was
down).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from stockade import labels, metrics, run_namespaces
from stockade.api.reasons import CLEANUP
from stockade.kube import KubeError, object_path
from stockade.kubeapi import EmitEvent, KubeAPI
from stockade.store import RunKey, Store, owner_uid, run_of, uid_of

log = logging.getLogger("stockade.lifecycle")


class NamespaceTaken(Exception):
    """The chosen run namespace was created by someone else first: choose again (never adopt it)."""


class RunGone(Exception):
    """The AgentRun was deleted while its fence was being built: stop building."""

AGENTRUN_API = "stockade.io/v1alpha1"


class RunLifecycle:
    def __init__(self, kube: KubeAPI, store: Store, emit: EmitEvent) -> None:
        self.kube = kube
        self.store = store
        self.emit = emit

    # The run namespace ----------------------------------------------------------------------------
    async def create_namespace(self, desired: Mapping[str, Any], body: Mapping[str, Any]) -> None:
        """Create (never apply) a run namespace: an apply would take over a namespace someone else made."""
        name = desired["metadata"]["name"]
        uid = uid_of(body)
        metrics.APPLIES.labels(kind="Namespace").inc()
        try:
            created = await self.kube.create(desired)
        except KubeError as err:
            if not err.conflict:
                raise
            found = await self.kube.get("v1", "Namespace", None, name)
            if found is None:
                raise  # gone again meanwhile: the next round creates it
            found.setdefault("apiVersion", "v1")
            found.setdefault("kind", "Namespace")
            self.store.put(found)
            if owner_uid(found) != uid:
                raise NamespaceTaken(name) from None  # the store now holds it: the next choice skips it
            return  # ours, made by an earlier round whose event has not come yet
        self.store.put(created)
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        current = self.store.agentruns.get(key)
        if current is None or uid_of(current) != uid:
            # The AgentRun went while the namespace was being made (its DELETED event came meanwhile).
            log.info("AgentRun %s/%s is gone: removing the run namespace %s just made", key[0], key[1], name)
            await self.kube.delete("v1", "Namespace", None, name)
            raise RunGone(name)

    # The finalizer -----------------------------------------------------------------------------------
    async def add_finalizer(self, body: dict[str, Any]) -> dict[str, Any]:
        meta = body["metadata"]
        path = object_path(AGENTRUN_API, "AgentRun", meta["namespace"], meta["name"])
        ops: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/resourceVersion",
                                      "value": meta["resourceVersion"]}]
        if meta.get("finalizers"):
            ops.append({"op": "add", "path": "/metadata/finalizers/-", "value": labels.FINALIZER})
        else:
            ops.append({"op": "add", "path": "/metadata/finalizers", "value": [labels.FINALIZER]})
        try:
            updated = await self.kube.json_patch(path, ops)
        except KubeError as err:
            raise _changed_since_read(err, meta) from None
        if labels.FINALIZER not in ((updated.get("metadata") or {}).get("finalizers") or []):
            # Nothing is created for a run whose finalizer the API server has not confirmed.
            raise KubeError(409, "Conflict", f"the finalizer on AgentRun {meta['namespace']}/{meta['name']} "
                            "is not in the API server's answer")
        self.store.put_agentrun(updated)
        return updated

    async def finalize(self, key: RunKey, body: Mapping[str, Any]) -> bool:
        """Delete the run namespace, then drop the finalizer. True once done, False while waiting."""
        finalizers = list(body["metadata"].get("finalizers") or [])
        if labels.FINALIZER not in finalizers:
            return True
        run_namespace = run_namespaces.owned(self.store, key, body)
        namespace = self.store.get("Namespace", "", run_namespace) if run_namespace else None
        if run_namespace and namespace is not None:
            if not namespace["metadata"].get("deletionTimestamp"):
                log.info("deleting run namespace %s", run_namespace)
                await self.kube.delete("v1", "Namespace", None, run_namespace)
                self.emit(body, "Normal", CLEANUP, f"deleting run namespace {run_namespace}")
            return False
        index = finalizers.index(labels.FINALIZER)
        path = object_path(AGENTRUN_API, "AgentRun", key[0], key[1])
        try:
            await self.kube.json_patch(path, [
                {"op": "test", "path": f"/metadata/finalizers/{index}", "value": labels.FINALIZER},
                {"op": "remove", "path": f"/metadata/finalizers/{index}"},
            ])
        except KubeError as err:
            if not err.not_found:
                raise _changed_since_read(err, body["metadata"]) from None
        return True

    # Orphans ----------------------------------------------------------------------------------------
    async def remove_orphan(self, uid: str, why: str) -> bool:
        """Delete the run namespace labelled with ``uid`` (an AgentRun known to be gone). True if one was."""
        name = self.store.namespace_of_uid(uid)
        found = self.store.get("Namespace", "", name) if name else None
        if not name or found is None or found["metadata"].get("deletionTimestamp"):
            return False
        log.warning("removing orphan run namespace %s: %s", name, why)
        await self.kube.delete("v1", "Namespace", None, name)
        return True

    async def sweep(self) -> int:
        """Remove every run namespace whose AgentRun is gone, judged from fresh lists (not the store, which
        may lag): namespaces first, then AgentRuns, so a namespace's AgentRun, made before it, is in the second
        list unless it was deleted. Returns how many were removed."""
        namespaces = await self.kube.list_objects("v1", "Namespace", selector=labels.AGENTRUN)
        runs = await self.kube.list_objects(AGENTRUN_API, "AgentRun")
        uids = {uid_of(run) for run in runs}
        keys = {(run["metadata"]["namespace"], run["metadata"]["name"]) for run in runs}
        removed = 0
        for namespace in namespaces:
            meta = namespace["metadata"]
            uid = owner_uid(namespace)
            if meta.get("deletionTimestamp") or (uid in uids if uid else run_of(namespace) in keys):
                continue
            log.warning("removing orphan run namespace %s: its AgentRun %s is gone", meta["name"],
                        uid or "/".join(run_of(namespace) or ("?", "?")))
            if await self.kube.delete("v1", "Namespace", None, meta["name"]):
                removed += 1
        return removed

    async def sweep_forever(self, interval: float, when: Callable[[], bool] = lambda: True) -> None:
        """``when``: only while this replica leads (a standby deletes nothing)."""
        while True:
            try:
                if when():
                    await self.sweep()
            except (KubeError, OSError) as err:
                log.warning("orphan sweep failed: %s; retrying in %.0fs", err, interval)
            await asyncio.sleep(interval)


def _changed_since_read(err: KubeError, meta: Mapping[str, Any]) -> KubeError:
    """A JSON patch's ``test`` op that fails is refused with 422, as an invalid object would be; here it only
    means the AgentRun changed since it was read (a label added, say): a conflict, tried again once the watch
    shows the new version, never a refusal that would stall the run until its spec changes."""
    if err.status != 422:
        return err
    return KubeError(409, "Conflict", f"AgentRun {meta.get('namespace')}/{meta.get('name')} changed since it was "
                     f"read: {err.message}")
