"""The Flux healthCheckExprs in docs/gitops/flux-kustomization.yaml, evaluated by Flux's own evaluator
(github.com/fluxcd/pkg/runtime/cel, built from e2e/tools/fluxhealth) against the same AgentRuns as the
Argo CD health check: the two GitOps tools must agree on what a healthy, failed or progressing run is."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from stockade.conditions import compute_conditions, compute_phase, merge_conditions, run_status, status_patch

from .test_argo_health import CASES, OBSERVED, run

ROOT = Path(__file__).resolve().parents[2]
# Argo CD's verdicts and kstatus's, for the same meaning.
FLUX_STATUS = {"Healthy": "Current", "Degraded": "Failed", "Progressing": "InProgress"}
# Where Flux differs by design. Its evaluator reports InProgress whenever status.observedGeneration is
# set and differs from metadata.generation, before any expression runs (Flux RFC 0009). And CEL cannot
# ask whether a top-level field exists, so an AgentRun without any status (before the operator's first
# write) is an evaluation error, on which kustomize-controller keeps waiting, as for InProgress.
FLUX_ONLY = {"succeeded, spec edited since": "InProgress", "no status yet": "error"}


def expressions() -> dict[str, str]:
    docs = [d for d in yaml.safe_load_all((ROOT / "docs/gitops/flux-kustomization.yaml").read_text()) if d]
    found = [e for d in docs if d["kind"] == "Kustomization" for e in d["spec"].get("healthCheckExprs", [])]
    assert len(found) == 1 and found[0]["kind"] == "AgentRun" and found[0]["apiVersion"] == "stockade.io/v1alpha1"
    return {k: found[0][k] for k in ("current", "inProgress", "failed") if k in found[0]}


@pytest.fixture(scope="module")
def evaluator() -> str:
    result = subprocess.run([str(ROOT / "e2e/cluster.sh"), "tool", "fluxhealth"], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def flux(evaluator: str, objects: list[dict[str, Any]]) -> list[dict[str, str]]:
    result = subprocess.run([evaluator], input=json.dumps({"exprs": expressions(), "objects": objects}),
                            capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    verdicts: list[dict[str, str]] = json.loads(result.stdout)
    return verdicts


def as_json(obj: dict[str, Any]) -> dict[str, Any]:
    # Flux reads the object as JSON from the API server: whole numbers are integers there.
    meta = obj["metadata"]
    return {**obj, "metadata": {**meta, "generation": int(meta["generation"])}}


def test_flux_agrees_with_the_argo_health_check(evaluator: str) -> None:
    verdicts = flux(evaluator, [as_json(c[1]) for c in CASES])
    got = {case[0]: v.get("status") or "error" for case, v in zip(CASES, verdicts, strict=True)}
    want = {name: FLUX_ONLY.get(name, FLUX_STATUS[argo]) for name, _, argo, _ in CASES}
    assert got == want


def test_flux_reads_the_operators_own_statuses(evaluator: str) -> None:
    objects = []
    for observed, _ in OBSERVED:
        conditions = merge_conditions([], compute_conditions(observed), "2026-01-01T00:00:00Z")
        status = status_patch(run_status(observed, compute_phase(observed), conditions))
        objects.append(as_json(run(status, generation=observed.generation)))
    verdicts = flux(evaluator, objects)
    assert [v.get("status") or v.get("error") for v in verdicts] == [FLUX_STATUS[s] for _, s in OBSERVED]


def test_an_expression_error_is_reported_not_hidden(evaluator: str) -> None:
    """The helper must surface evaluation errors (Flux keeps waiting on them), or the tests above could pass
    on errors mapped to a status."""
    result = subprocess.run([evaluator], input=json.dumps({
        "exprs": {"current": "status.nothing.here == 1"},
        "objects": [{"apiVersion": "v1", "kind": "X", "metadata": {"generation": 1}, "status": {}}]}),
        capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "error" in json.loads(result.stdout)[0]

