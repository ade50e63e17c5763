"""Operator restart with the AgentRuns present: stop it, start it again, and time until its gauge
``stockade_fences_confirmed`` counts every AgentRun (each run's first pass found the fence in place); the
operator's writes from the start to ``settle`` seconds after (audit log); the objects in run namespaces,
counted per namespace and kind before and after, so a duplicate (or a lost) object shows as a difference."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from api_requests import WRITES, AuditLog
from idle import requests_by_operator
from operator_proc import Operator
from stockade import labels
from stockade.kube import Kube

KINDS = (("v1", "ServiceAccount"), ("v1", "ResourceQuota"), ("v1", "LimitRange"), ("v1", "Pod"),
         ("networking.k8s.io/v1", "NetworkPolicy"), ("rbac.authorization.k8s.io/v1", "Role"),
         ("rbac.authorization.k8s.io/v1", "RoleBinding"))


async def object_counts(kube: Kube, team: str) -> Counter[str]:
    """"<run namespace> <kind>" -> objects, and "uid <AgentRun uid> Namespace" -> run namespaces of that run."""
    namespaces = await kube.list_objects("v1", "Namespace", selector=f"{labels.AGENTRUN_NAMESPACE}={team}")
    mine = {n["metadata"]["name"] for n in namespaces}
    out = Counter(f"uid {n['metadata']['labels'].get(labels.AGENTRUN_UID, '?')} Namespace" for n in namespaces)
    for api_version, kind in KINDS:
        for obj in await kube.list_objects(api_version, kind):
            if obj["metadata"].get("namespace") in mine:
                out[f"{obj['metadata']['namespace']} {kind}"] += 1
    return out


def differences(before: Counter[str], after: Counter[str]) -> list[str]:
    keys = sorted(set(before) | set(after))
    return [f"{key}: {before[key]} -> {after[key]}" for key in keys if before[key] != after[key]]


async def measure(kube: Kube, op: Operator, audit: AuditLog | None, operator_user: str, team: str, *,
                  settle: float = 10, limit: float = 900) -> dict[str, Any]:
    runs = len(await kube.list_objects("stockade.io/v1alpha1", "AgentRun", team))
    before = await object_counts(kube, team)
    run_namespaces = {key.split()[0] for key in before if not key.startswith("uid ")}

    def for_a_run(event: Mapping[str, Any]) -> bool:  # the AgentRuns and what is in their namespaces
        ref = event.get("objectRef") or {}
        return ref.get("resource") == "agentruns" or ref.get("namespace") in run_namespaces or \
            (ref.get("resource") == "namespaces" and ref.get("name") in run_namespaces)
    await asyncio.to_thread(op.stop)
    offset = audit.mark() if audit else 0
    wall, started = time.time(), time.perf_counter()
    await asyncio.to_thread(op.start)
    serving = time.perf_counter() - started
    confirmed = float("nan")
    while time.perf_counter() - started < limit:
        if await asyncio.to_thread(op.metric, "stockade_fences_confirmed") >= runs:
            confirmed = time.perf_counter() - started
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(settle)
    result: dict[str, Any] = {"runs": runs, "seconds_to_serving": serving, "seconds_to_confirmed": confirmed,
                              "load_average": os.getloadavg()[0], "rss_mb": op.rss_mb(), "writes": None,
                              "writes_by_request": {}}
    if audit is not None and operator_user:
        await asyncio.sleep(1)
        requests = requests_by_operator(audit, offset, wall, time.time(), operator_user)
        writes = {what: n for what, n in requests.items() if what.split()[0] in WRITES}
        run_writes = requests_by_operator(audit, offset, wall, time.time(), operator_user, keep=for_a_run)
        result.update(writes=sum(writes.values()), writes_by_request=writes, requests=sum(requests.values()),
                      run_writes=sum(n for what, n in run_writes.items() if what.split()[0] in WRITES))
    after = await object_counts(kube, team)
    result.update(objects_before=sum(before.values()), objects_after=sum(after.values()),
                  differences=differences(before, after))
    return result


def line(row: dict[str, Any]) -> str:
    return (f"restart with {row['runs']} AgentRuns (load {row['load_average']:.2f}): metrics up after "
            f"{row['seconds_to_serving']:.1f} s, every fence confirmed after {row['seconds_to_confirmed']:.1f} s; "
            f"operator writes from the start to 10 s after: {row['writes']} ("
            f"{row.get('run_writes')} to AgentRuns or run namespaces) {row['writes_by_request'] or ''}; "
            f"objects in run namespaces {row['objects_before']} -> {row['objects_after']}, differences: "
            f"{row['differences'] or 'none'}; RSS {row['rss_mb']:.0f} MB")
