"""Lifting a quarantine, the responder's last act: status first, then labels, the policy and a suspended
Job. Who may release is decided at admission (stockade.admission.agentrun_mutate); ``by`` is the
authenticated user recorded there."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from stockade import audit, labels, metrics
from stockade.api.reasons import RELEASED
from stockade.kube import KubeError, object_path, write_status
from stockade.kubeapi import EmitEvent, KubeAPI
from stockade.naming import job_name, run_namespace_name
from stockade.store import RunKey, Store, uid_of

log = logging.getLogger("stockade.respond")


class ReleaseMixin:
    """Mixed into ``Responder``: it shares the responder's per-run locks (status writes: ``kube.write_status``)."""

    kube: KubeAPI
    store: Store
    emit: EmitEvent
    trigger: Callable[[RunKey], None]
    now: Callable[[], str]
    _releasing: set[RunKey]
    _tasks: set[asyncio.Task[None]]

    def _lock(self, key: RunKey) -> asyncio.Lock:
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
            body = self.store.agentruns.get(key)
            if not _release_asked(body):
                return  # gone, or released already (a second event for the same request)
            at = self.now()

            def lift(current: dict[str, Any]) -> Mapping[str, Any] | None:
                active = _release_asked(current) and ((current.get("status") or {}).get("quarantine") or {}).get(
                    "active")
                return {"quarantine": {"active": False, "releasedAt": at, "releasedBy": by}} if active else None

            path = object_path("stockade.io/v1alpha1", "AgentRun", key[0], key[1])
            result = await write_status(self.kube, path, lift, current=body, remember=self.store.put_agentrun)
            if result.seen is not None and _release_asked(result.seen):
                await self._release(key, result.seen, by, was_active=result.written is not None)

    async def _release(self, key: RunKey, body: Mapping[str, Any], by: str, *, was_active: bool) -> None:
        """The rest, once the status says released: ``body`` is the AgentRun as it was decided on."""
        status = body.get("status") or {}
        quarantine = status.get("quarantine") or {}
        run_ns = status.get("runNamespace") or run_namespace_name(*key)
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
            self.emit(current, "Normal", RELEASED,
                      f"quarantine ({quarantine.get('reason')}, pods {pods}, steps {steps}) released by {by}")
            log.info("quarantine of %s/%s released by %s (pods %s, steps %s)", key[0], key[1], by, pods, steps,
                     extra=audit.fields(key, run_namespace=run_ns, pods=list(quarantine.get("pods") or []),
                                        kind=quarantine.get("reason"), action="release", by=by,
                                        quarantine_id=audit.quarantine_id(uid_of(body), quarantine.get("since"))))
        else:
            self.emit(current, "Normal", RELEASED, f"nothing to release (requested by {by})")
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


def _release_asked(body: Mapping[str, Any] | None) -> bool:
    return body is not None and labels.RELEASE_ANNOTATION in ((body.get("metadata") or {}).get("annotations") or {})
