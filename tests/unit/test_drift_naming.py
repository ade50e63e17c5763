from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from stockade.drift import needs_apply
from stockade.naming import run_namespace_name

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
names = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True)


def test_short_names_concatenate():
    assert run_namespace_name("ml-research", "rome-42") == "ml-research-rome-42"


@given(names, names)
def test_run_namespace_is_a_dns_label(namespace, name):
    result = run_namespace_name(namespace, name)
    assert len(result) <= 63 and DNS_LABEL.match(result)


def test_long_names_hash_and_stay_distinct():
    a = run_namespace_name("n" * 40, "a" * 40)
    b = run_namespace_name("n" * 40, "a" * 39 + "b")
    assert a != b and len(a) == 63


DESIRED = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "q", "labels": {"a": "1"}},
           "spec": {"hard": {"limits.cpu": "1", "pods": "2"}}}


def test_live_superset_is_not_drift():
    live = {"metadata": {"name": "q", "labels": {"a": "1", "extra": "x"}, "uid": "u"},
            "spec": {"hard": {"limits.cpu": "1000m", "pods": "2"}}, "status": {}}
    assert not needs_apply(DESIRED, live)


def test_changed_or_missing_is_drift():
    assert needs_apply(DESIRED, None)
    live = {"metadata": {"name": "q", "labels": {"a": "1"}}, "spec": {"hard": {"limits.cpu": "2", "pods": "2"}}}
    assert needs_apply(DESIRED, live)
    longer = {"metadata": {"name": "p"}, "spec": {"egress": [{"to": 1}, {"to": 2}]}}
    assert needs_apply({"metadata": {"name": "p"}, "spec": {"egress": [{"to": 1}]}}, longer)


def test_empty_list_matches_an_absent_field():
    desired = {"metadata": {"name": "p"}, "spec": {"podSelector": {}, "egress": []}}
    assert not needs_apply(desired, {"metadata": {"name": "p"}, "spec": {}})
    assert needs_apply(desired, {"metadata": {"name": "p"}, "spec": {"egress": [{"to": []}]}})
