"""inputcheck: what no fence can be built from, and which API server answers no retry can change."""

from __future__ import annotations

import pytest

from stockade.inputcheck import MAX_MESSAGE, admission_refusal, api_refusal, spec_problem
from stockade.refusals import LONGEST_RETRY_SECONDS, Refusals

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


VAP_DENIAL = ('pods "a" is forbidden: ValidatingAdmissionPolicy \'hold\' with binding \'hold\' denied request: '
              "pods held back")
WEBHOOK_DENIAL = 'admission webhook "pods.example.com" denied the request: no GPUs on Fridays'


@pytest.mark.parametrize(("status", "message"), [(422, VAP_DENIAL), (403, VAP_DENIAL), (403, WEBHOOK_DENIAL),
                                                 (400, WEBHOOK_DENIAL)])
def test_a_platform_admission_denial_is_asked_again_not_stalled_on(status: int, message: str) -> None:
    assert api_refusal(status, message) is None
    found = admission_refusal(status, message)
    assert found is not None and found.startswith("AdmissionRefused: ") and message in found


@pytest.mark.parametrize(("status", "message"), [
    (422, 'Pod "a" is invalid: spec.containers[0].image: Required value'), (409, WEBHOOK_DENIAL),
    (403, 'pods "a" is forbidden: violates PodSecurity "restricted:latest": admission webhook "x" denied the request'),
    (403, 'pods "a" is forbidden: exceeded quota: stockade-grant')])
def test_other_answers_are_not_admission_denials(status: int, message: str) -> None:
    assert admission_refusal(status, message) is None


def test_refusals_stall_one_generation_and_back_off_on_admission_denials() -> None:
    refusals = Refusals()
    key = ("team", "run")
    stalled = refusals.record(key, 3, 422, 'Pod "a" is invalid: bad name')
    assert stalled is not None and stalled.stalls and stalled.retry_in is None
    assert refusals.stalled(key, 3) == stalled.problem and refusals.stalled(key, 4) is None
    delays = []
    for _ in range(8):
        held = refusals.record(key, 4, 422, VAP_DENIAL)
        assert held is not None and not held.stalls and held.retry_in is not None
        delays.append(held.retry_in)
    assert delays == [2, 4, 8, 16, 32, 60, 60, 60] and max(delays) == LONGEST_RETRY_SECONDS
    refusals.succeeded(key)  # the first success starts the ladder over
    again = refusals.record(key, 4, 403, WEBHOOK_DENIAL)
    assert again is not None and again.retry_in == 2
    assert refusals.record(key, 4, 500, "etcd timeout") is None
