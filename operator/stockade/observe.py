"""What the store shows about a run's fence and workload (pure): read by the reconciler each round."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from stockade.api.models import AgentRunSpec
from stockade.api.reasons import VIOLATION
from stockade.drift import contains
from stockade.plan import Plan, RunRef
from stockade.store import Store

QUOTA_PENDING = "the quota controller to enforce the ResourceQuota"
QUOTA_WAIT_SECONDS = 1.0


def guardrails_ready(store: Store, plan: Plan) -> tuple[bool, str]:
    """(every guardrail is live, what is still missing)."""
    for desired in plan.guardrails:
        meta = desired["metadata"]
        live = store.get(desired["kind"], meta.get("namespace") or "", meta["name"])
        if live is None:
            return False, f"{desired['kind']} {meta['name']}"
        # Until the quota controller fills status.hard, the API server refuses every pod
        # ("status unknown for quota"), and a stale status would admit the old grant.
        if desired["kind"] == "ResourceQuota" and not contains(
                (live.get("status") or {}).get("hard") or {}, desired["spec"]["hard"]):
            return False, QUOTA_PENDING
    return True, ""


async def await_quota(store: Store, plan: Plan) -> tuple[bool, str]:
    """The quota controller fills a new quota's status within moments; waiting for it here (the watch
    updates the store meanwhile) starts the agent in this pass instead of after a status write and
    another round. Bounded: a slow controller gets the status written and a later event."""
    deadline = time.monotonic() + QUOTA_WAIT_SECONDS
    while time.monotonic() < deadline:
        await asyncio.sleep(0.005)
        ready, waiting_on = guardrails_ready(store, plan)
        if ready or waiting_on != QUOTA_PENDING:
            return ready, waiting_on
    return False, QUOTA_PENDING


def workload_phase(store: Store, run: RunRef, spec: AgentRunSpec) -> tuple[str | None, str]:
    """(the workload's phase, its message); (None, "") while it does not exist."""
    live = store.get(spec.workload, run.run_namespace, run.workload_name(spec.workload))
    if live is None:
        return None, ""
    status = live.get("status") or {}
    if spec.workload == "Pod":
        return status.get("phase") or "Pending", status.get("message") or status.get("reason") or ""
    for cond in status.get("conditions") or []:
        if cond.get("type") in ("Complete", "SuccessCriteriaMet") and cond.get("status") == "True":
            return "Succeeded", cond.get("message", "")
        if cond.get("type") in ("Failed", "FailureTarget") and cond.get("status") == "True":
            return "Failed", cond.get("message", "")
    return ("Running" if status.get("active") else "Pending"), ""


def quarantine_of(status: Mapping[str, Any]) -> tuple[str, str] | None:
    """(reason, message) of an active quarantine, else None."""
    quarantine = status.get("quarantine") or {}
    if quarantine.get("active"):
        return str(quarantine.get("reason") or VIOLATION), str(quarantine.get("message") or "")
    return None
