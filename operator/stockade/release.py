"""Lifting a quarantine, the responder's last act: status first, then labels, the policy and a suspended
Job. Who may release is decided at admission (stockade.admission.agentrun_mutate); ``by`` is the
authenticated user recorded there."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from stockade import audit, labels, metrics
from stockade.kube import Kube, KubeError, object_path
from stockade.naming import job_name, run_namespace_name
from stockade.store import RunKey, Store, uid_of

if TYPE_CHECKING:
    from stockade.events import EmitEvent

log = logging.getLogger("stockade.respond")


class ReleaseMixin:
    """Mixed into ``Responder``: it shares the responder's per-run locks and status writes."""

    kube: Kube
    store: Store
    emit: EmitEvent
    trigger: Callable[[RunKey], None]
    now: Callable[[], str]
    _releasing: set[RunKey]
    _tasks: set[asyncio.Task[None]]

    def _lock(self, key: RunKey) -> asyncio.Lock:
        raise NotImplementedError

    async def _write_status(self, key: RunKey, body: Mapping[str, Any], patch: Mapping[str, Any]) -> None:
        raise NotImplementedError

    async def _suspend(self, namespace: str, job: str, suspend: bool) -> None:
        raise NotImplementedError

    def release_soon(self, key: RunKey, by: str) -> None:
        """Release in the background, once at a time per run (the annotation handler and every
        reconcile that still sees the annotation ask; only the first request does anything)."""
        if key in self._releasing:
            return
        self._releasing.add(key)

        async def run() -> None:
            try:
                await self.release(key, by)
            except Exception:
                log.exception("releasing %s/%s failed; the annotation stays, so the next reconcile retries", *key)
            finally:
                self._releasing.discard(key)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def release(self, key: RunKey, by: str) -> None:
        """Lift the quarantine after a human looked: status first (so nothing re-isolates the pods),
        then labels, the policy and a suspended Job; the reconciler restores RBAC and the workload."""
        async with self._lock(key):
            for attempt in range(3):
                body = self.store.agentruns.get(key)
                annotations = (body or {}).get("metadata", {}).get("annotations") or {}
                if body is None or labels.RELEASE_ANNOTATION not in annotations:
                    return  # gone, or released already (a second event for the same request)
                try:
                    await self._release(key, body, by)
                    return
                except KubeError as err:
                    if not err.conflict or attempt == 2:
                        raise
                    fresh = await self.kube.get("stockade.io/v1alpha1", "AgentRun", key[0], key[1])
                    if fresh is None:
                        return
                    self.store.put_agentrun(fresh)

    async def _release(self, key: RunKey, body: Mapping[str, Any], by: str) -> None:
        status = body.get("status") or {}
        quarantine = status.get("quarantine") or {}
        run_ns = status.get("runNamespace") or run_namespace_name(*key)
        at = self.now()
        was_active = bool(quarantine.get("active"))
        if was_active:
            await self._write_status(key, body, {"quarantine": {"active": False, "releasedAt": at, "releasedBy": by}})
        for pod in list(self.store.in_namespace(run_ns, "Pod")):
            if labels.QUARANTINED in (pod["metadata"].get("labels") or {}):
                await self._unlabel(run_ns, pod["metadata"]["name"])
        await self.kube.delete("networking.k8s.io/v1", "NetworkPolicy", run_ns, labels.POLICY_QUARANTINE)
        job = self.store.get("Job", run_ns, job_name(key[1]))
        if job is not None and (job.get("spec") or {}).get("suspend"):
            await self._suspend(run_ns, job_name(key[1]), False)
        path = object_path("stockade.io/v1alpha1", "AgentRun", key[0], key[1])
        updated = await self.kube.merge_patch(path, {"metadata": {"annotations": {labels.RELEASE_ANNOTATION: None}}})
        self.store.put_agentrun(updated)
        current = self.store.agentruns.get(key) or body
        if was_active:
            metrics.RELEASES.inc()
            pods = ", ".join(quarantine.get("pods") or []) or "none"
            steps = "+".join(quarantine.get("steps") or [])
            self.emit(current, "Normal", "Released",
                      f"quarantine ({quarantine.get('reason')}, pods {pods}, steps {steps}) released by {by}")
            log.info("quarantine of %s/%s released by %s (pods %s, steps %s)", key[0], key[1], by, pods, steps,
                     extra=audit.fields(key, run_namespace=run_ns, pods=list(quarantine.get("pods") or []),
                                        kind=quarantine.get("reason"), action="release", by=by,
                                        quarantine_id=audit.quarantine_id(uid_of(body), quarantine.get("since"))))
        else:
            self.emit(current, "Normal", "Released", f"nothing to release (requested by {by})")
        self.trigger(key)  # the reconciler restores RBAC and the workload

    async def _unlabel(self, namespace: str, pod: str) -> None:
        path = object_path("v1", "Pod", namespace, pod)
        try:
            patched = await self.kube.merge_patch(path, {"metadata": {"labels": {labels.QUARANTINED: None}}})
        except KubeError as err:
            if err.not_found:
                return
            raise
        self.store.put({**patched, "kind": "Pod", "apiVersion": "v1"})
