"""The AgentPolicy status the operator writes: usage, selected namespaces, Ready (Invalid when it cannot be
evaluated), and nothing new when nothing changed."""

from __future__ import annotations

from decimal import Decimal

from stockade.api.policy import AgentPolicyStatus
from stockade.conditions import status_changed
from stockade.grantpolicy.budget import Use
from stockade.grantpolicy.ceilings import Bound
from stockade.policy_status import desired_status

USES = {"runs": Use(Decimal(2), Decimal(5)), "nvidia.com/gpu": Use(Decimal(3), Decimal(8))}


def test_usage_and_ready_of_an_evaluable_policy() -> None:
    bound = Bound.of("p", {"namespaceSelector": {}, "budgets": {"total": {"runs": 5, "gpus": {"nvidia.com/gpu": 8}}}})
    status = desired_status(bound, USES, generation=3, selected=4, old={}, now="2026-01-01T00:00:00Z")
    assert status["usage"]["runs"] == "2/5" and status["usage"]["gpusTotal"] == "3/8"
    assert status["selectedNamespaces"] == 4 and status["observedGeneration"] == 3
    ready = status["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "True", "Evaluable")
    again = desired_status(bound, USES, generation=3, selected=4, old=status, now="2026-01-01T00:05:00Z")
    assert not status_changed(status, again), "no write when nothing changed"


def test_a_policy_that_cannot_be_evaluated_says_so() -> None:
    bound = Bound.of("bad", {"namespaceSelector": {}, "budgets": {"total": {"runs": -1}}})
    status = desired_status(bound, {}, generation=1, selected=0, old={}, now="2026-01-01T00:00:00Z")
    ready = status["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "Invalid")
    assert "admits nothing" in ready["message"]


def test_the_written_status_is_the_models_dump_with_its_nulls() -> None:
    """Composed from AgentPolicyStatus, written as the dict the writer wrote when it built one by hand: usage.gpus
    None (no GPU budget) is written as null, and lastTransitionTime is kept while the status holds."""
    bound = Bound.of("p", {"namespaceSelector": {}, "budgets": {"total": {"runs": 5}}})
    old = {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    status = desired_status(bound, {}, generation=3, selected=4, old=old, now="2026-01-01T00:05:00Z")
    assert status == {
        "observedGeneration": 3, "selectedNamespaces": 4,
        "usage": {"runs": "0", "gpus": None, "gpusTotal": "0", "cpu": "0", "memory": "0"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "Evaluable",
                        "message": "the policy bounds the AgentRuns of the namespaces it selects",
                        "observedGeneration": 3, "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    }
    assert AgentPolicyStatus.model_validate(status).model_dump(exclude_unset=True) == status
