"""The Kubernetes API as a signal: what the watches show in run namespaces, held against the grant.

Pods are judged on every reconcile of their run (the store already holds them, and a pod event
triggers that reconcile); other objects as their watch events arrive. Each finding is reported once
per object state, so a steady state produces no new violations.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from stockade import labels
from stockade.api.models import AgentRunSpec
from stockade.detect import rules
from stockade.detect.respond import Incident, Responder
from stockade.naming import run_namespace_name
from stockade.store import RunKey, Store

log = logging.getLogger("stockade.detect")

SEEN_PER_RUN = 2000


class ApiDetector:
    def __init__(self, store: Store, responder: Responder, now: Callable[[], str]) -> None:
        self.store = store
        self.responder = responder
        self.now = now
        self._seen: dict[RunKey, set[tuple[Any, ...]]] = {}

    def _first_time(self, key: RunKey, signature: tuple[Any, ...]) -> bool:
        seen = self._seen.setdefault(key, set())
        if signature in seen:
            return False
        if len(seen) >= SEEN_PER_RUN:
            seen.clear()  # a bounded memory: at worst a finding is reported once more
        seen.add(signature)
        return True

    def _prune(self) -> None:
        if len(self._seen) > len(self.store.agentruns) + 64:
            for key in [k for k in self._seen if k not in self.store.agentruns]:
                self._seen.pop(key, None)

    # Pods: a reconciler extension ---------------------------------------------------------------------
    async def on_reconcile(self, key: RunKey, body: dict[str, Any], spec: AgentRunSpec) -> None:
        self._prune()
        requested = ((body.get("metadata") or {}).get("annotations") or {}).get(labels.RELEASE_ANNOTATION)
        if requested is not None:  # level-based: a release the annotation handler missed still happens
            self.responder.release_soon(key, str(requested)[:253] or "unknown")  # (busy until it is done)
        status = body.get("status") or {}
        run_ns = status.get("runNamespace") or run_namespace_name(*key)
        pods = [p for p in self.store.in_namespace(run_ns, "Pod") if not p["metadata"].get("deletionTimestamp")]
        at = self.now()
        incidents = []
        for found in rules.judge_pods(pods, spec.grant, at):
            uid = (found.evidence or {}).get("uid")
            if self._first_time(key, (uid, found.kind, found.detail)):
                incidents.append(Incident(found, signal={"watch": "pods", "pod": found.pod, "uid": uid}))
        incidents += self._quarantine_drift(key, run_ns, status, spec, pods=pods, at=at)
        if incidents:
            self.responder.submit(key, incidents)

    def _quarantine_drift(self, key: RunKey, run_ns: str, status: Mapping[str, Any], spec: AgentRunSpec, *,
                          pods: Iterable[Mapping[str, Any]], at: str) -> list[Incident]:
        """While a run is quarantined (and nothing is mid-change): a quarantined pod that lost its label
        or policy is isolated again, and a pod that appeared since gets the ladder too."""
        quarantine = status.get("quarantine") or {}
        if not quarantine.get("active") or spec.enforcement == "audit" or self.responder.busy(key):
            return []
        held = set(quarantine.get("pods") or [])
        isolating = "isolate" in (quarantine.get("steps") or [])
        policy = self.store.get("NetworkPolicy", run_ns, labels.POLICY_QUARANTINE)
        out = []
        for pod in pods:
            name = pod["metadata"]["name"]
            marked = (pod["metadata"].get("labels") or {}).get(labels.QUARANTINED) == "true"
            if name in held and isolating and (not marked or policy is None):
                what = f"label {labels.QUARANTINED}" if not marked else f"NetworkPolicy {labels.POLICY_QUARANTINE}"
                found = rules.violation("QuarantineTampered", f"pod {name} lost its {what} while quarantined; "
                                        "isolating it again", "api", at, pod=name)
                out.append(Incident(found, signal={"watch": "pods", "pod": name}, force=True))
            elif name not in held and not marked:
                found = rules.violation("PodStartedWhileQuarantined", f"pod {name} appeared while the run is "
                                        "quarantined", "api", at, pod=name)
                if self._first_time(key, (pod["metadata"].get("uid"), found.kind)):
                    out.append(Incident(found, signal={"watch": "pods", "pod": name}))
        return out

    # Other objects: from their watch events -------------------------------------------------------------
    def on_object(self, obj: Mapping[str, Any], event_type: str | None) -> None:
        if event_type == "DELETED":
            return
        namespace = (obj.get("metadata") or {}).get("namespace") or ""
        key = self.store.run_of_namespace(namespace)
        spec = self.store.valid_spec(key) if key else None
        if key is None or spec is None:
            return
        found = rules.judge_object(obj, spec, key[1], self.now())
        if found is None:
            return
        meta = obj.get("metadata") or {}
        if not self._first_time(key, (meta.get("uid"), found.kind, found.detail)):
            return
        kind = str(obj.get("kind"))
        signal = {"watch": kind, "event": event_type, "name": meta.get("name"),
                  "resourceVersion": meta.get("resourceVersion")}
        self.responder.submit(key, [Incident(found, signal=signal,
                                             attributable=rules.attributable(found, kind, spec.grant))])
