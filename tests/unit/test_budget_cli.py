"""`stockade status` for budgets: which AgentPolicies bound a run and what their budgets have left; a queued
run's header; `stockade explain` of the AgentPolicy fields."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from rich.console import Console

from stockade import cli_render
from stockade.explain import UnknownField, explain
from stockade.fence_report import Fence, build_report

from .fixtures import GPU_RUN

NOW = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
WAITING = "runs: used 5 + asked 1 > limit 5 (AgentPolicy gpu-team, budgets.total)"


def run(**status: Any) -> dict[str, Any]:
    return {"apiVersion": "stockade.io/v1alpha1", "kind": "AgentRun",
            "metadata": {"name": "rome-42", "namespace": "ml-research", "uid": "u-1", "generation": 1,
                         "creationTimestamp": "2026-01-02T02:59:05Z"},
            "spec": GPU_RUN, "status": status}


def policy(name: str, usage: dict[str, Any], **budgets: Any) -> dict[str, Any]:
    return {"apiVersion": "stockade.io/v1alpha1", "kind": "AgentPolicy", "metadata": {"name": name},
            "spec": {"namespaceSelector": {}, "budgets": budgets}, "status": {"usage": usage}}


QUEUED = run(phase="Queued", observedGeneration=1, policies=["gpu-team", "platform-default"], conditions=[
    {"type": "Ready", "status": "False", "reason": "BudgetExhausted", "message": WAITING},
    {"type": "Admitted", "status": "False", "reason": "BudgetExhausted", "message": WAITING}])
POLICIES = [
    policy("gpu-team", {"runs": "5/5", "gpus": {"nvidia.com/gpu": "3/8"}, "gpusTotal": "3/8", "cpu": "12/40",
                        "memory": "48Gi/64Gi"},
           total={"runs": 5}, perNamespace={"runs": 2, "gpus": {"nvidia.com/gpu": 4}}),
]


def test_report_names_the_bounding_policies_and_what_is_left() -> None:
    report = build_report(QUEUED, Fence(namespace=None, objects={}, policies=POLICIES), NOW)
    assert report["phase"] == "Queued"
    gpu_team, default = report["policies"]
    assert gpu_team["name"] == "gpu-team" and gpu_team["readable"]
    assert gpu_team["left"] == {"runs": "0", "gpus[nvidia.com/gpu]": "5", "cpu": "28", "memory": "16Gi"}
    assert gpu_team["perNamespace"] == {"runs": 2, "gpus": {"nvidia.com/gpu": 4}}
    assert default == {"name": "platform-default", "readable": False}  # named, but could not be read


def test_unbounded_usage_has_nothing_left_to_report() -> None:
    report = build_report(QUEUED, Fence(namespace=None, policies=[policy("gpu-team", {"runs": "3", "cpu": "4"})]),
                          NOW)
    assert report["policies"][0]["left"] == {}
    assert report["policies"][0]["total"] == {"runs": "3", "cpu": "4"}


def test_status_screen_shows_why_a_run_waits_and_the_budgets() -> None:
    console = Console(width=200, record=True, color_system=None)
    cli_render.status(build_report(QUEUED, Fence(namespace=None, policies=POLICIES), NOW), console)
    out = console.export_text()
    for text in ("Queued", "Admitted", "BudgetExhausted", WAITING, "gpu-team", "gpus[nvidia.com/gpu]", "3/8",
                 "16Gi", "platform-default", "could not be read"):
        assert text in out, text


def test_explain_covers_the_policy_fields() -> None:
    doc = explain("agentpolicy")
    assert {f["name"] for f in doc["fields"]} >= {"namespaceSelector", "ceilings", "egress", "kubernetesAPI",
                                                  "budgets", "defaults", "onNarrowed"}
    total = explain("agentpolicy.spec.budgets.total")
    assert [f["name"] for f in total["fields"]] == ["cpu", "memory", "gpus", "runs"]
    assert "Most runs active at once" in next(f for f in total["fields"] if f["name"] == "runs")["description"]
    assert explain("agentpolicy.status.usage")["fields"]
    assert "maxDuration" in [f["name"] for f in explain("ap.ceilings")["fields"]]
    with pytest.raises(UnknownField):
        explain("agentpolicy.spec.budget")
    assert explain("grant")["path"] == "spec.grant"  # AgentRun paths as before
