"""Child runs are carved out of their parent's grant."""

from __future__ import annotations

import copy
import datetime
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from stockade.api.models import AgentRunSpec, Grant
from stockade.grantcheck import granted_amounts
from stockade.grantpolicy.carve import Parent, check, pods_usage

from .fixtures import GPU_RUN

NOW = datetime.datetime(2026, 12, 2, 7, 0, tzinfo=datetime.UTC)
EXPIRES = "2026-12-02T09:00:00Z"  # two hours from NOW


def spec(**grant: Any) -> AgentRunSpec:
    raw = copy.deepcopy(GPU_RUN)
    for key, value in grant.items():
        if key in ("enforcement", "response"):
            raw[key] = value
        else:
            raw["grant"][key] = value
    return AgentRunSpec.model_validate(raw)


def parent(delegation: bool = True, phase: str = "Running", **grant: Any) -> Parent:
    return Parent("ml", "rome-42", spec(delegation=delegation, gpu=4, pods=4, **grant),
                  {"phase": phase, "expiresAt": EXPIRES})


def child(**grant: Any) -> AgentRunSpec:
    base = {"cpu": "2", "memory": "8Gi", "gpu": 1, "ephemeralStorage": "5Gi", "pods": 1, "duration": "1h",
            "egress": [{"cidr": "10.42.1.0/24", "ports": [443]}]}
    return spec(**{**base, **grant})


def texts(found):
    return [f.text() for f in found]


def test_without_delegation_a_child_is_refused():
    (only,) = texts(check(child(), parent(delegation=False), now=NOW, asked_by="from run namespace x"))
    assert "the parent run ml/rome-42 allows no child runs" in only and "delegation is false" in only


def test_within_what_is_left_is_admitted():
    assert check(child(), parent(), now=NOW, asked_by="x") == []


def test_asking_more_than_is_left_names_field_and_what_is_left():
    siblings = [Grant.model_validate({"cpu": "4", "memory": "8Gi", "gpu": 2, "gpuResource": "nvidia.com/gpu"})]
    used = {"cpu": Decimal(2), "nvidia.com/gpu": Decimal(1), "pods": Decimal(1)}
    found = texts(check(child(gpu=2), parent(), siblings=siblings, used=used, now=NOW, asked_by="x"))
    assert found == ["spec.grant.gpu: 2 nvidia.com/gpu asked; the parent run ml/rome-42 allows 1 left of its 4 "
                     "(its pods and other children hold 3)"]


def test_egress_api_runtime_dns_mode_must_be_within_the_parents():
    found = texts(check(child(egress=[{"cidr": "0.0.0.0/0", "ports": [22]}], dns=True,
                              kubernetesAPI=[{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}],
                              runtimeClassNames=["runc"], enforcement="audit", response=["isolate"]),
                        parent(dns=False), now=NOW, asked_by="x"))
    fields = [t.split(":")[0] for t in found]
    assert fields == ["spec.grant.egress[0]", "spec.grant.dns", "spec.grant.kubernetesAPI[0]",
                      "spec.grant.runtimeClassNames", "spec.enforcement", "spec.response"]


def test_the_child_ends_no_later_than_the_parent():
    (late,) = texts(check(child(duration="3h"), parent(), now=NOW, asked_by="x"))
    assert late.startswith("spec.grant.duration: 3h asked") and "2026-12-02T09:00:00Z" in late
    (never,) = texts(check(child(duration=None), parent(), now=NOW, asked_by="x"))
    assert "never expires" in never


def test_an_ended_or_quarantined_parent_gives_nothing():
    for phase in ("Quarantined", "Expired"):
        (only,) = texts(check(child(), parent(phase=phase), now=NOW, asked_by="x"))
        assert phase in only


def test_pods_usage_counts_live_pods_only():
    pod = {"spec": {"containers": [{"resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "2",
                                                                                        "nvidia.com/gpu": "1"}}}]}}
    done = {**pod, "status": {"phase": "Succeeded"}}
    assert pods_usage([pod, pod, done]) == {"cpu": Decimal(4), "nvidia.com/gpu": Decimal(2), "pods": Decimal(2)}


AMOUNT = st.sampled_from(["1", "2", "4"])
grant = st.fixed_dictionaries({"cpu": AMOUNT, "memory": st.sampled_from(["1Gi", "4Gi", "16Gi"]),
                               "gpu": st.integers(0, 3), "gpuResource": st.just("nvidia.com/gpu"),
                               "ephemeralStorage": st.sampled_from(["1Gi", "5Gi"]), "pods": st.integers(1, 3),
                               "duration": st.sampled_from(["30m", "1h", "3h"])})


@settings(max_examples=300, deadline=None)
@given(asked=grant, others=st.lists(grant, max_size=3), used_cpu=st.integers(0, 4), used_gpu=st.integers(0, 2))
def test_any_child_accepted_fits_in_what_the_parent_has_left(asked, others, used_cpu, used_gpu):
    the_parent = parent()
    siblings = [Grant.model_validate(g) for g in others]
    used = {"cpu": Decimal(used_cpu), "nvidia.com/gpu": Decimal(used_gpu)}
    kid = spec(**asked)
    if check(kid, the_parent, siblings=siblings, used=used, now=NOW, asked_by="x"):
        return
    have = granted_amounts(the_parent.spec.grant)
    for resource, amount in granted_amounts(kid.grant).items():
        total = amount + used.get(resource, Decimal(0)) + sum(
            (granted_amounts(s).get(resource, Decimal(0)) for s in siblings), Decimal(0))
        assert amount == 0 or total <= have.get(resource, Decimal(0)), resource
    assert kid.grant.pods + sum(s.pods for s in siblings) <= the_parent.spec.grant.pods
    assert asked["duration"] != "3h"  # would end after the parent's expiresAt
