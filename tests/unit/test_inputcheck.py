"""inputcheck: what no fence can be built from, and which API server answers no retry can change."""

from __future__ import annotations

import pytest

from stockade.inputcheck import MAX_MESSAGE, api_refusal, spec_problem

from .fixtures import spec


@pytest.mark.parametrize(
    ("status", "message", "reason"),
    [(422, 'Pod "a" is invalid: spec.containers[0].name: Invalid value: "Agent_1"', "RefusedByAPIServer"),
     (400, "cannot unmarshal number into Go struct field", "RefusedByAPIServer"),
     (403, 'pods "a" is forbidden: violates PodSecurity "restricted:latest": runAsNonRoot != true',
      "PodSecurityRefused"),
     (403, 'pods "a" is forbidden: exceeded quota: stockade-grant', None),  # the quota frees up: retry
     (403, "forbidden: User cannot create resource", None), (409, "conflict", None), (429, "slow down", None),
     (500, "etcd timeout", None)],
)
def test_api_refusals_that_no_retry_changes(status: int, message: str, reason: str | None) -> None:
    found = api_refusal(status, message)
    if reason is None:
        assert found is None
    else:
        assert found is not None and found.startswith(f"{reason}: ") and message[:40] in found


def test_a_long_refusal_stays_readable_in_the_status() -> None:
    found = api_refusal(422, "x" * 5000)
    assert found is not None and len(found) <= MAX_MESSAGE + len("RefusedByAPIServer: ")


def test_a_usable_spec_has_no_problem_and_a_bad_one_names_the_field() -> None:
    assert spec_problem(spec()) is None
    problem = spec_problem(spec(grant_kubernetesAPI=[{"resources": ["pods/binding"], "verbs": ["create"]}]))
    assert problem is not None and problem.startswith("APIRuleNotGrantable: spec.grant.kubernetesAPI[0].resources")
    bad = spec(template={"spec": {"containers": [{"name": "a", "image": "i"}], "volumes": 5}})
    assert spec_problem(bad) == "InvalidTemplate: spec.template.spec.volumes: must be a list, not 5"
