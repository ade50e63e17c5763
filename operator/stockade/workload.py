"""The agent's workload in its run namespace: created once the fence is complete, stopped when the run ends."""

from __future__ import annotations

import logging

from stockade import kinds
from stockade.kube import KubeError
from stockade.kubeapi import KubeAPI
from stockade.plan import Plan, RunRef
from stockade.store import Store

log = logging.getLogger("stockade.reconcile")

WORKLOAD_KINDS = {kind.kind: kind.api_version for kind in kinds.RUN_WORKLOADS}  # kind -> apiVersion


async def ensure_workload(kube: KubeAPI, store: Store, plan: Plan) -> bool:
    """Create the workload if it does not exist; True if this call created it."""
    desired = plan.workload
    if desired is None:
        return False
    meta = desired["metadata"]
    if store.get(desired["kind"], meta["namespace"], meta["name"]) is not None:
        return False
    try:
        created = await kube.create(desired)
    except KubeError as err:
        if err.conflict:
            return False  # created by an earlier round whose watch event has not arrived yet
        raise
    store.put(created)
    log.info("started the agent's %s %s/%s", desired["kind"], meta["namespace"], meta["name"])
    return True


async def stop_workload(kube: KubeAPI, store: Store, run: RunRef) -> None:
    for kind in ("Job", "Pod"):
        for obj in list(store.in_namespace(run.run_namespace, kind)):
            if obj["metadata"].get("deletionTimestamp"):
                continue
            await kube.delete(WORKLOAD_KINDS[kind], kind, run.run_namespace, obj["metadata"]["name"],
                              grace=0 if kind == "Pod" else None)
