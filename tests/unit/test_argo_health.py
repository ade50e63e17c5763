"""The Argo CD health check (docs/gitops/argocd-health.lua), run by a real Lua (lupa) against sample
AgentRuns: hand-written ones, and statuses the operator's own conditions code produces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import LuaRuntime

from stockade.conditions import Observed, compute_conditions, compute_phase, merge_conditions, run_status, status_patch
from stockade.egress_status import egress_resolution

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = (ROOT / "docs/gitops/argocd-health.lua").read_text()


def health(obj: dict[str, Any]) -> tuple[str, str]:
    """As Argo CD runs it: the object as the global ``obj``, the script's returned table read back."""
    lua = LuaRuntime(unpack_returned_tuples=True)
    lua.globals()["obj"] = lua.table_from(obj, recursive=True)
    result = lua.execute(SCRIPT)
    return str(result["status"]), str(result["message"])


def cond(kind: str, status: str, reason: str = "R", message: str = "") -> dict[str, Any]:
    return {"type": kind, "status": status, "reason": reason, "message": message}


def run(status: dict[str, Any] | None, generation: float = 2) -> dict[str, Any]:
    # JSON numbers reach Argo CD's Lua as floats: generation 2 arrives as 2.0.
    obj: dict[str, Any] = {"apiVersion": "stockade.io/v1alpha1", "kind": "AgentRun",
                           "metadata": {"name": "r", "namespace": "t", "generation": generation}}
    if status is not None:
        obj["status"] = status
    return obj


READY = cond("Ready", "True", "Running", "the agent is running inside its fence")
NOT_READY = cond("Ready", "False", "GuardrailsPending", "waiting for NetworkPolicy stockade-egress")
STALLED = cond("Stalled", "True", "TemplateExceedsGrant", "the template asks for 2 GPUs; the grant gives 1")
CALM = cond("Stalled", "False", "AsExpected")

CASES = [
    ("no status yet", run(None), "Progressing", "Waiting for the Stockade operator"),
    ("empty status", run({}), "Progressing", "Waiting"),
    ("running, current", run({"phase": "Running", "observedGeneration": 2, "conditions": [READY, CALM]}),
     "Healthy", "inside its fence"),
    ("running, observed as an integer", run({"phase": "Running", "observedGeneration": 2,
                                            "conditions": [READY]}, generation=2.0), "Healthy", "fence"),
    ("ready but an older generation", run({"phase": "Running", "observedGeneration": 1, "conditions": [READY]}),
     "Progressing", "generation 2"),
    ("pending, fence being built", run({"phase": "Pending", "observedGeneration": 2,
                                        "conditions": [NOT_READY, CALM]}), "Progressing", "stockade-egress"),
    ("stalled: template over grant", run({"phase": "Pending", "observedGeneration": 2,
                                          "conditions": [NOT_READY, STALLED]}), "Degraded", "2 GPUs"),
    ("stalled for an older generation", run({"phase": "Pending", "observedGeneration": 1,
                                             "conditions": [NOT_READY, STALLED]}), "Progressing", "generation"),
    ("succeeded", run({"phase": "Succeeded", "observedGeneration": 2,
                       "conditions": [cond("Ready", "True", "Succeeded", "the agent's workload completed")]}),
     "Healthy", "completed"),
    ("succeeded, spec edited since", run({"phase": "Succeeded", "observedGeneration": 1}), "Healthy", "Succeeded"),
    ("failed", run({"phase": "Failed", "observedGeneration": 2,
                    "conditions": [cond("Ready", "False", "WorkloadFailed", "exit code 1")]}),
     "Degraded", "Failed: exit code 1"),
    ("quarantined", run({"phase": "Quarantined", "observedGeneration": 2,
                         "conditions": [cond("Ready", "False", "Violation", "reverse shell in pod agent")]}),
     "Degraded", "Quarantined: reverse shell"),
    ("expired", run({"phase": "Expired", "observedGeneration": 2,
                     "conditions": [cond("Ready", "False", "Expired", "")]}), "Degraded", "Expired: Expired"),
    ("failed without conditions", run({"phase": "Failed"}), "Degraded", "see the AgentRun"),
    # Waiting for a budget or a team quota is progressing: it starts by itself when capacity frees.
    ("queued for a budget", run({"phase": "Queued", "observedGeneration": 2, "conditions": [
        cond("Ready", "False", "BudgetExhausted", "runs: used 5 + asked 1 > limit 5 (AgentPolicy p, budgets.total)"),
        CALM, cond("Admitted", "False", "BudgetExhausted", "runs: used 5 + asked 1 > limit 5")]}),
     "Progressing", "used 5 + asked 1 > limit 5"),
    ("queued without conditions", run({"phase": "Queued", "observedGeneration": 2}), "Progressing", "Queued"),
    # A granted host that resolves to nothing: the fence holds (Ready), the agent cannot reach the host. It
    # heals by itself once the name resolves: Progressing, naming the hosts, neither Healthy nor Degraded.
    ("running, a host unresolved", run({"phase": "Running", "observedGeneration": 2, "conditions": [
        READY, CALM, cond("EgressResolved", "False", "HostUnresolved", "no address found for api.example.com")]}),
     "Progressing", "api.example.com"),
    ("running, hosts resolved", run({"phase": "Running", "observedGeneration": 2, "conditions": [
        READY, CALM, cond("EgressResolved", "True", "AllHostsResolved", "every granted host resolved")]}),
     "Healthy", "inside its fence"),
    ("succeeded, a host unresolved", run({"phase": "Succeeded", "observedGeneration": 2, "conditions": [
        cond("Ready", "True", "Succeeded", "the agent's workload completed"),
        cond("EgressResolved", "False", "HostUnresolved", "no address found for api.example.com")]}),
     "Healthy", "completed"),
]


@pytest.mark.parametrize(("obj", "status", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_health(obj: dict[str, Any], status: str, message: str) -> None:
    got, text = health(obj)
    assert got == status
    assert message in text


# Statuses as the operator writes them (conditions.py), so the check follows the real contract.
OBSERVED = [
    (Observed(3, "t-r", guardrails_ready=False, guardrails_message="waiting for LimitRange"), "Progressing"),
    (Observed(3, "t-r", guardrails_ready=True, workload_phase="Pending"), "Progressing"),
    (Observed(3, "t-r", guardrails_ready=True, workload_phase="Running"), "Healthy"),
    (Observed(3, "t-r", guardrails_ready=True, workload_phase="Succeeded"), "Healthy"),
    (Observed(3, "t-r", guardrails_ready=True, workload_phase="Failed", workload_message="OOMKilled"), "Degraded"),
    (Observed(3, "t-r", refusals=["gpu: 2 > 1"]), "Degraded"),
    (Observed(3, "t-r", invalid="InvalidSpec: spec.grant.cpu: bad"), "Degraded"),
    (Observed(3, "t-r", blocked=("NamespaceConflict", "namespace exists")), "Degraded"),
    (Observed(3, "t-r", held=("AdmissionRefused", "ValidatingAdmissionPolicy 'hold' denied request")), "Progressing"),
    (Observed(3, "t-r", guardrails_ready=True, workload_phase="Running", quarantined=("Violation", "miner")),
     "Degraded"),
    (Observed(3, "t-r", guardrails_ready=True, expired=True), "Degraded"),
    (Observed(3, None, admission=(False, "BudgetExhausted", "runs: used 5 + asked 1 > limit 5")), "Progressing"),
    (Observed(3, None, admission=(False, "TeamQuotaExceeded", "requests.nvidia.com/gpu: used 1 + asked 4 > limit 1")),
     "Progressing"),
    (Observed(3, "t-r", guardrails_ready=True, workload_phase="Running", admission=(True, "Admitted", "within"),
              compliance=(False, "NarrowedBelowGrant", "spec.grant.cpu: 2 asked")), "Healthy"),
    (Observed(3, "t-r", guardrails_ready=True, workload_phase="Running", admission=(True, "Admitted", "within"),
              stopped=("NarrowedBelowGrant", "spec.grant.cpu: 2 asked (onNarrowed: Stop)")), "Degraded"),
    (Observed(3, "t-r", guardrails_ready=True, workload_phase="Running",
              egress=egress_resolution(["api.example.com"], {"api.example.com": []})), "Progressing"),
    (Observed(3, "t-r", guardrails_ready=True, workload_phase="Running",
              egress=egress_resolution(["a.test"], {"a.test": ["192.0.2.1"]}, stale=["a.test"])), "Healthy"),
    (Observed(3, "t-r", guardrails_ready=True, workload_phase="Running", egress=egress_resolution([], {})),
     "Healthy"),
    (Observed(3, "t-r", guardrails_ready=True, workload_phase="Running", quarantined=("Violation", "miner"),
              egress=egress_resolution(["api.example.com"], {})), "Degraded"),
]


@pytest.mark.parametrize(("observed", "status"), OBSERVED, ids=[f"{compute_phase(o)}-{s}" for o, s in OBSERVED])
def test_health_of_operator_statuses(observed: Observed, status: str) -> None:
    conditions = merge_conditions([], compute_conditions(observed), "2026-01-01T00:00:00Z")
    obj = run(status_patch(run_status(observed, compute_phase(observed), conditions)), generation=observed.generation)
    assert health(obj)[0] == status


def test_argocd_cm_carries_the_same_script() -> None:
    cm = yaml.safe_load((ROOT / "docs/gitops/argocd-cm.yaml").read_text())
    assert cm["data"]["resource.customizations.health.stockade.io_AgentRun"] == SCRIPT
