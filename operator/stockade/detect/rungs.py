"""The rungs of the quarantine ladder (isolate, freeze, evict), each confined to the run's own namespace.

Mixed into ``Responder``; every write is guarded by ``_guard`` first (stockade.confine): a bug can
never make a rung act outside the run namespace of the run it is for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any

from stockade import audit, labels, metrics
from stockade.confine import run_namespace
from stockade.detect.incident import Incident
from stockade.kube import KubeError, object_path
from stockade.kubeapi import KubeAPI
from stockade.naming import label_value
from stockade.store import RunKey, Store

log = logging.getLogger("stockade.respond")

RETRIES = (0.1, 0.3, 1.0)


def quarantine_policy(run_namespace: str, run_name: str, run_team: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": labels.POLICY_QUARANTINE,
            "namespace": run_namespace,
            "labels": {labels.AGENTRUN: label_value(run_name), labels.AGENTRUN_NAMESPACE: run_team,
                       labels.MANAGED_BY: labels.MANAGED_BY_VALUE, labels.COMPONENT: "quarantine"},
        },
        "spec": {
            "podSelector": {"matchLabels": {labels.QUARANTINED: "true"}},
            "policyTypes": ["Ingress", "Egress"],
        },
    }


def _rung(key: RunKey, run_ns: str, step: str, pod: str | None, cause: Incident | None) -> None:
    """One log line per rung taken, with the violation that started it (the quarantine's id is in the
    responder's log context)."""
    v = cause.violation if cause else None
    log.warning("quarantine of %s/%s: %s %s", key[0], key[1], step,
                f"pod {run_ns}/{pod}" if pod else f"RoleBinding {run_ns}/{labels.ROLE_BINDING}",
                extra=audit.fields(key, run_namespace=run_ns, pod=pod, action=step, kind=v.kind if v else None,
                                   source=v.source if v else None, incident_id=cause.id if cause else None))


class ConfinementError(Exception):
    """An action outside the run namespace of the run it is for was about to be taken (a bug: never)."""


class RungsMixin:
    kube: KubeAPI
    store: Store

    def _guard(self, key: RunKey, namespace: str) -> None:
        """The last check before any write: only ever in this run's confirmed run namespace."""
        run = self.store.agentruns.get(key) or {}
        if run_namespace(self.store, key, run.get("status") or {}) != namespace:
            raise ConfinementError(f"refusing to act in namespace {namespace!r}: not the run namespace of "
                                   f"AgentRun {key[0]}/{key[1]}")

    async def _act(self, key: RunKey, run_ns: str, ladder: Sequence[str], targets: Mapping[str, Incident], *,
                   forced: set[str], freeze: bool) -> None:
        self._guard(key, run_ns)
        for step in ladder:
            if step == "isolate" and targets:
                await self._isolate(key, run_ns, targets)
            elif step == "freeze" and freeze:
                if await self._step("freeze", lambda: self.kube.delete(
                        "rbac.authorization.k8s.io/v1", "RoleBinding", run_ns, labels.ROLE_BINDING)):
                    _rung(key, run_ns, "freeze", None, next(iter(targets.values()), None))
            elif step == "evict":
                # A forced incident re-isolates a pod whose label was removed; it is not evicted twice.
                for pod in sorted(set(targets) - forced):
                    if await self._step("evict", partial(self._evict, run_ns, pod)):
                        _rung(key, run_ns, "evict", pod, targets[pod])

    async def _isolate(self, key: RunKey, run_ns: str, targets: Mapping[str, Incident]) -> None:
        self._guard(key, run_ns)
        policy = quarantine_policy(run_ns, key[1], key[0])
        results = await asyncio.gather(
            self._step("isolate", lambda: self._apply_policy(policy)),
            *(self._step("isolate", partial(self._label, run_ns, pod)) for pod in sorted(targets)),
        )
        for pod, labelled in zip(sorted(targets), results[1:], strict=True):
            if labelled and results[0]:
                _rung(key, run_ns, "isolate", pod, targets[pod])
        if all(results):
            done = time.perf_counter()
            for incident in targets.values():
                metrics.DETECTION_LATENCY.labels(source=incident.violation.source).observe(done - incident.received)

    async def _apply_policy(self, policy: Mapping[str, Any]) -> None:
        meta = policy["metadata"]
        live = self.store.get("NetworkPolicy", meta["namespace"], meta["name"])
        if live is not None and live.get("spec") == policy["spec"] and not live["metadata"].get("deletionTimestamp"):
            return
        applied = await self.kube.apply(policy)
        self.store.put({**applied, "kind": "NetworkPolicy", "apiVersion": "networking.k8s.io/v1"})

    async def _label(self, namespace: str, pod: str) -> None:
        path = object_path("v1", "Pod", namespace, pod)
        try:
            patched = await self.kube.merge_patch(path, {"metadata": {"labels": {labels.QUARANTINED: "true"}}})
        except KubeError as err:
            if err.not_found:
                return  # gone already: nothing left to isolate
            raise
        self.store.put({**patched, "kind": "Pod", "apiVersion": "v1"})

    async def _evict(self, namespace: str, pod: str) -> None:
        live = self.store.get("Pod", namespace, pod) or {}
        for owner in (live.get("metadata") or {}).get("ownerReferences") or []:
            if owner.get("kind") == "Job":
                # A Job would replace the pod; suspended, it does not (a release resumes it).
                await self._suspend(namespace, owner["name"], True)
        await self.kube.delete("v1", "Pod", namespace, pod, grace=0)

    async def _suspend(self, namespace: str, job: str, suspend: bool) -> None:
        path = object_path("batch/v1", "Job", namespace, job)
        try:
            await self.kube.merge_patch(path, {"spec": {"suspend": suspend}})
        except KubeError as err:
            if not err.not_found:
                raise

    @staticmethod
    async def _step(step: str, action: Callable[[], Awaitable[Any]]) -> bool:
        """One rung, with a few quick retries; a rung that still fails is counted and logged."""
        for attempt, delay in enumerate((*RETRIES, None)):
            try:
                await action()
            except KubeError as err:
                if err.terminating_namespace is not None:
                    # The namespace is being deleted, its pods with it: nothing left to confine.
                    log.info("quarantine step %s not taken: namespace %s is being deleted", step,
                             err.terminating_namespace, extra={"action": step, "outcome": "skipped"})
                    metrics.QUARANTINE_ACTIONS.labels(step=step, outcome="skipped").inc()
                    return False
                if delay is None:
                    log.error("quarantine step %s failed after %d tries: %s", step, attempt + 1, err)
                    metrics.QUARANTINE_ACTIONS.labels(step=step, outcome="failed").inc()
                    return False
                await asyncio.sleep(delay)
                continue
            metrics.QUARANTINE_ACTIONS.labels(step=step, outcome="done").inc()
            return True
        return False
