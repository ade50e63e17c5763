from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from stockade.drift import needs_apply
from stockade.naming import job_name, label_value, run_namespace_candidates, run_namespace_name

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
names = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True)


def test_short_names_concatenate():
    assert run_namespace_name("ml-research", "rome-42") == "ml-research-rome-42"


@given(names, names)
def test_run_namespace_is_a_dns_label(namespace, name):
    result = run_namespace_name(namespace, name)
    assert len(result) <= 63 and DNS_LABEL.match(result)


# AgentRun names are DNS-1123 subdomains: up to 253 characters, dots allowed.
subdomains = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?){0,5}",
                           fullmatch=True).filter(lambda n: len(n) <= 253)
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@given(names, subdomains, st.uuids())
def test_every_candidate_is_a_dns_label(namespace, name, uid):
    for candidate in run_namespace_candidates(namespace, name, str(uid)):
        assert len(candidate) <= 63 and DNS_LABEL.match(candidate), candidate


@given(subdomains)
def test_label_values_and_job_names_fit(name):
    for value in (label_value(name), job_name(name)):
        assert len(value) <= 63 and LABEL_VALUE.match(value)
    if len(name) <= 63:
        assert label_value(name) == name


def test_ambiguous_pairs_share_only_the_readable_first_choice():
    # "col-a"/"b-x" and "col"/"a-b-x" read the same; the hashed candidates (with the uid) differ.
    one = run_namespace_candidates("col-a", "b-x", "uid-1")
    two = run_namespace_candidates("col", "a-b-x", "uid-2")
    assert one[0] == two[0] == "col-a-b-x"
    assert not set(one[1:]) & set(two[1:])


def test_hashed_candidates_depend_on_the_uid():
    # A squatter who knows namespace and name, but not the uid the API server will assign, cannot
    # precompute the names after the first.
    assert run_namespace_candidates("t", "x", "uid-1")[1:] != run_namespace_candidates("t", "x", "uid-2")[1:]


def test_names_that_are_no_dns_label_get_only_hashed_candidates():
    dotted = run_namespace_candidates("team", "agent.v2", "u")
    assert all("." not in c for c in dotted) and dotted[0].startswith("team-agent-v2-")
    assert run_namespace_candidates("team", "a" * 253, "u")[0].startswith("team-aaa")


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
