"""What the reconciler does when the API server answers a pass with an error (mixed into ``Reconciler``).

* a namespace being deleted refused a new object (the run namespace, while its AgentRun or the namespace
  itself is deleted): expected, not an error. One INFO line per run and namespace, no error counted, a
  calm retry (the namespace's own events normally retrigger first);
* the API server or the platform's admission refused an object: the run's status says why (stalled until
  the spec changes, or asked again after a growing delay; stockade.refusals);
* anything else (a conflict, a throttle, the API server away): a WARNING and a retry in a second.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from stockade import metrics
from stockade.conditions import Observed
from stockade.kube import KubeError
from stockade.refusals import Refusals
from stockade.store import RunKey, Store

log = logging.getLogger("stockade.reconcile")

TERMINATING_RETRY_SECONDS = 5.0


class FailureHandling:
    store: Store
    _refusals: Refusals
    _terminating: dict[RunKey, str]  # the namespace whose deletion this run was last told to wait for

    def _arm_timer(self, key: RunKey, delay: float | None) -> None:
        raise NotImplementedError

    def _warn_once(self, key: RunKey, body: Mapping[str, Any], reason: str, message: str) -> bool:
        raise NotImplementedError

    async def _write_status(self, key: RunKey, body: Mapping[str, Any], observed: Observed,
                            extra: Mapping[str, Any] | None = None) -> None:
        raise NotImplementedError

    async def _on_failure(self, key: RunKey, err: KubeError) -> None:
        namespace = err.terminating_namespace
        if namespace is not None:
            self._wait_for_deletion(key, namespace)
            return
        metrics.RECONCILE_ERRORS.labels(reason=err.reason or str(err.status)).inc()
        if await self._on_refusal(key, err):
            return
        # A quota charge left by a create aborted mid-request clears only at the quota controller's
        # next resync: wait for it calmly rather than hammer the API server.
        delay = 5.0 if "exceeded quota" in err.message else 1.0
        log.warning("reconcile of %s/%s failed: %s; retrying in %.0fs", key[0], key[1], err, delay)
        self._arm_timer(key, delay)

    def _wait_for_deletion(self, key: RunKey, namespace: str) -> None:
        """Nothing can be created in a namespace being deleted until it is gone: say so once, not as an error."""
        level = logging.DEBUG if self._terminating.get(key) == namespace else logging.INFO
        self._terminating[key] = namespace
        log.log(level, "namespace %s is being deleted: %s/%s waits until it is gone", namespace or "(unnamed)",
                key[0], key[1], extra={"run_namespace": namespace or None, "action": "wait-namespace-deletion"})
        self._arm_timer(key, TERMINATING_RETRY_SECONDS)

    async def _on_refusal(self, key: RunKey, err: KubeError) -> bool:
        """An object refused for what it is stalls the run until the spec changes; one a platform webhook or
        admission policy denied is asked again after a growing delay. Either way Ready=False says why."""
        body = self.store.agentruns.get(key)
        if body is None:
            return False
        generation = int(body["metadata"].get("generation") or 1)
        refusal = self._refusals.record(key, generation, err.status, err.message)
        if refusal is None:
            return False
        log.warning("the API server refused an object of %s/%s (generation %d): %s; %s", key[0], key[1], generation,
                    err, "waiting for a new spec" if refusal.stalls else f"asking again in {refusal.retry_in:.0f}s")
        # The name chosen this pass: a refusal on a first reconcile comes before any status records it.
        run_namespace = self._refusals.chosen.get(key) or (body.get("status") or {}).get("runNamespace")
        reason, _, message = refusal.problem.partition(": ")
        observed = Observed(generation, run_namespace, invalid=refusal.problem) if refusal.stalls else \
            Observed(generation, run_namespace, held=(reason, message))
        if not refusal.stalls:
            self._warn_once(key, body, reason, message)
            self._arm_timer(key, refusal.retry_in)
        try:
            await self._write_status(key, body, observed)
        except KubeError as again:
            log.warning("could not record that on %s/%s: %s", key[0], key[1], again)
        return True

    def _succeeded(self, key: RunKey) -> None:
        self._refusals.succeeded(key)
        self._terminating.pop(key, None)
