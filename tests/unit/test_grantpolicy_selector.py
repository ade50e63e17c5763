"""Namespace selection with Kubernetes' label-selector semantics (k8s.io/apimachinery labels.Selector)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stockade.api.policy import LabelSelector
from stockade.grantpolicy.selector import matches, selects

TEAM = {"team": "ml", "tier": "gpu", "kubernetes.io/metadata.name": "ml-research"}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ({}, True),  # empty selects everything
        ({"matchLabels": {"team": "ml"}}, True),
        ({"matchLabels": {"team": "ml", "tier": "cpu"}}, False),  # every pair must hold
        ({"matchLabels": {"absent": ""}}, False),  # an absent label is not the empty value
        ({"matchExpressions": [{"key": "team", "operator": "In", "values": ["ml", "web"]}]}, True),
        ({"matchExpressions": [{"key": "team", "operator": "In", "values": ["web"]}]}, False),
        ({"matchExpressions": [{"key": "absent", "operator": "In", "values": ["x"]}]}, False),
        ({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["web"]}]}, True),
        ({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["ml"]}]}, False),
        ({"matchExpressions": [{"key": "absent", "operator": "NotIn", "values": ["x"]}]}, True),  # absent: holds
        ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, True),
        ({"matchExpressions": [{"key": "absent", "operator": "Exists"}]}, False),
        ({"matchExpressions": [{"key": "absent", "operator": "DoesNotExist"}]}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, False),
        ({"matchLabels": {"team": "ml"},
          "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                                "values": ["kube-system"]}]}, True),
        ({"matchLabels": {"team": "ml"},
          "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["gpu"]}]}, False),  # all must hold
    ],
)
def test_kubernetes_semantics(selector, expected):
    assert selects(LabelSelector.model_validate(selector), TEAM) is expected


def test_an_unreadable_selector_selects_everything():
    assert matches(None, {}) and matches(None, TEAM)


LABELS = st.dictionaries(st.sampled_from(["a", "b", "c"]), st.sampled_from(["1", "2"]), max_size=3)


@given(wanted=LABELS, have=LABELS)
def test_match_labels_is_a_subset_test(wanted, have):
    assert selects(LabelSelector(matchLabels=wanted), have) is (wanted.items() <= have.items())


@given(have=LABELS, key=st.sampled_from(["a", "b", "c"]), values=st.lists(st.sampled_from(["1", "2"]), min_size=1))
def test_in_and_not_in_are_complements(have, key, values):
    def one(op):
        return LabelSelector.model_validate({"matchExpressions": [{"key": key, "operator": op, "values": values}]})

    assert selects(one("In"), have) is not selects(one("NotIn"), have)
