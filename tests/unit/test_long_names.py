"""AgentRun names up to 253 characters: every label value the responder and detection use fits in 63."""

from __future__ import annotations

from stockade import labels
from stockade.detect.rules import _ours
from stockade.detect.rungs import quarantine_policy
from stockade.naming import label_value

LONG = "a" * 200 + ".b" * 26  # 252 characters, dots included: a name the API server accepts


def test_the_quarantine_policy_of_a_long_named_run_has_valid_labels() -> None:
    policy = quarantine_policy("team-abc123-aaaa-0123456789", LONG, "team")
    values = policy["metadata"]["labels"].values()
    assert all(len(value) <= 63 for value in values)
    assert policy["metadata"]["labels"][labels.AGENTRUN] == label_value(LONG)


def test_detection_recognises_a_long_named_runs_own_objects() -> None:
    mine = {"metadata": {"labels": {labels.MANAGED_BY: labels.MANAGED_BY_VALUE, labels.AGENTRUN: label_value(LONG)}}}
    other = {"metadata": {"labels": {labels.MANAGED_BY: labels.MANAGED_BY_VALUE, labels.AGENTRUN: label_value("x")}}}
    assert _ours(mine, LONG)
    assert not _ours(other, LONG)
    assert _ours({"metadata": {"labels": {labels.MANAGED_BY: labels.MANAGED_BY_VALUE, labels.AGENTRUN: "short"}}},
                 "short")


def test_a_long_named_runs_own_job_is_no_violation() -> None:
    from stockade.api.models import AgentRunSpec
    from stockade.detect.rules import judge_object
    from stockade.naming import job_name

    spec = AgentRunSpec.model_validate({"template": {"spec": {"containers": [{"name": "a", "image": "i"}]}},
                                        "grant": {"cpu": "1", "memory": "1Gi", "duration": "1h"}, "workload": "Job"})
    own = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": job_name(LONG), "labels": {
        labels.MANAGED_BY: labels.MANAGED_BY_VALUE, labels.AGENTRUN: label_value(LONG)}}}
    assert judge_object(own, spec, LONG, "2026-01-01T00:00:00Z") is None
    stray = {**own, "metadata": {**own["metadata"], "name": "miner"}}
    found = judge_object(stray, spec, LONG, "2026-01-01T00:00:00Z")
    assert found is not None and found.kind == "WorkloadNotGranted"
