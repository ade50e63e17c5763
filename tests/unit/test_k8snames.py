"""Names as the API server validates them, and API paths that can only be built from such names."""

from __future__ import annotations

import pytest

from stockade import k8snames
from stockade.kube import object_path

HOSTILE = ["../../kube-system/pods/probe-victim", "..", ".", "a/b", "%2e%2e", "a%2Fb", "x/../y", "", "a b",
           "a\n", "Rome", "-a", "a-", "a..b", "x" * 254]


@pytest.mark.parametrize("name", HOSTILE)
def test_object_path_refuses_names_that_are_not_one_valid_segment(name: str) -> None:
    with pytest.raises(ValueError, match="not a"):
        object_path("v1", "Pod", "team-rome", name or "x/")  # an empty name means the collection
    with pytest.raises(ValueError, match="not a"):
        object_path("v1", "Pod", name or "x/", "rome")
    with pytest.raises(ValueError):
        object_path("batch/v1", "Job", "team-rome", name or "x/")


def test_object_path_builds_valid_paths() -> None:
    assert object_path("v1", "Pod", "team-rome", "rome.v2-0") == "/api/v1/namespaces/team-rome/pods/rome.v2-0"
    assert object_path("v1", "Event", "team") == "/api/v1/namespaces/team/events"
    assert object_path("v1", "Namespace", None, "team-rome") == "/api/v1/namespaces/team-rome"
    with pytest.raises(ValueError):
        object_path("v1", "Namespace", None, "team.rome")  # a namespace is a label
    # RBAC names are path segments: colons are fine, slashes and dot-dot are not.
    rbac = "rbac.authorization.k8s.io/v1"
    assert object_path(rbac, "Role", "team-rome", "system:agent").endswith("/roles/system:agent")
    for bad in ("..", "a/b", "a%b"):
        with pytest.raises(ValueError):
            object_path(rbac, "RoleBinding", "team-rome", bad)


def test_patterns_match_the_predicates() -> None:
    assert k8snames.is_label("team-rome") and not k8snames.is_label("team.rome")
    assert k8snames.is_subdomain("a.b-c.d") and not k8snames.is_subdomain("a..b")
    assert k8snames.is_subdomain("a" * 63 + "." + "b" * 63) and not k8snames.is_label("a" * 64)
    assert not k8snames.is_subdomain(None) and not k8snames.is_label(3)
