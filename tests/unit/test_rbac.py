"""The chart's RBAC is exactly operator/stockade/rbac.py, and rbac.py is what the code uses.

* The rendered ClusterRole grants each permission in rbac.py and nothing else (both directions).
* Every permission names call sites that exist (module:qualname).
* Every resource a kopf handler watches has list and watch, and every list/watch permission is a watch
  some handler (or kopf itself) makes.
The e2e suite (e2e/test_helm.py) then runs the operator with only this identity.
"""

from __future__ import annotations

import importlib
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from stockade.rbac import PERMISSIONS, RELEASE, expand

from .helm_support import helm

ROOT = Path(__file__).resolve().parents[2]
Grant = tuple[str, str, str, str]  # (group, resource, verb, name or "")
ALL_FEATURES = {"peering.enabled", "webhook.enabled"}
# Watches kopf makes by itself, with no handler of ours behind them.
FRAMEWORK_WATCHES = {("apiextensions.k8s.io", "customresourcedefinitions"), ("kopf.dev", "clusterkopfpeerings")}


def render(*sets: str, release: str = "stockade") -> list[dict[str, Any]]:
    args = [helm(), "template", release, str(ROOT / "charts/stockade"), "--namespace", "stockade-system",
            "--kube-version", "1.30.0"]
    for value in sets:
        args += ["--set", value]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def granted(docs: list[dict[str, Any]]) -> set[Grant]:
    """What the roles bound to the operator's ServiceAccount grant (the chart's roles for people, such as
    the releaser, are not the operator's)."""
    bound = {d["roleRef"]["name"] for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")
             and any(s.get("kind") == "ServiceAccount" for s in d.get("subjects") or [])}
    found: set[Grant] = set()
    for doc in docs:
        if doc["kind"] in ("Role", "ClusterRole") and doc["metadata"]["name"] in bound:
            for rule in doc.get("rules") or []:
                names = rule.get("resourceNames") or [""]
                found |= {(g, r, v, n) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
                          for n in names}
    return found


@pytest.mark.parametrize(("sets", "features"), [
    ((), ALL_FEATURES),
    (("peering.enabled=false",), {"webhook.enabled"}),
    (("webhook.enabled=false",), {"peering.enabled"}),
    (("peering.enabled=false", "webhook.enabled=false"), set()),
])
def test_chart_grants_exactly_rbac_py(sets: tuple[str, ...], features: set[str]) -> None:
    chart = granted(render(*sets))
    wanted = expand(PERMISSIONS, "stockade", features)
    assert not chart - wanted, f"the chart grants what operator/stockade/rbac.py does not: {sorted(chart - wanted)}"
    assert not wanted - chart, f"the chart lacks what operator/stockade/rbac.py needs: {sorted(wanted - chart)}"


def test_names_follow_the_release() -> None:
    docs = render(release="acme")
    chart = granted(docs)
    assert chart == expand(PERMISSIONS, "acme-stockade", ALL_FEATURES)
    binding = next(d for d in docs if d["kind"] == "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == "acme-stockade"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "acme-stockade", "namespace": "stockade-system"}]


def test_no_wildcards_and_no_namespaced_roles() -> None:
    docs = render()
    for group, resource, verb, _ in granted(docs):
        assert "*" not in (group, resource, verb)
    assert [d["kind"] for d in docs if d["kind"] in ("Role", "RoleBinding")] == []
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "ClusterRole"] == ["stockade", "stockade-releaser"]


def test_releasing_a_quarantine_is_a_role_of_its_own_that_nobody_holds_by_default() -> None:
    docs = render()
    releaser = next(d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "stockade-releaser")
    assert releaser["rules"] == [{"apiGroups": ["stockade.io"], "resources": ["agentruns"],
                                  "verbs": ["get", "list", "watch", "patch", "release"]}]
    assert "aggregationRule" not in releaser and not any(
        k.startswith("rbac.authorization.k8s.io/aggregate") for k in releaser["metadata"]["labels"])
    assert not [d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")
                and d["roleRef"]["name"] == "stockade-releaser"]
    assert ("stockade.io", "agentruns", "release", "") not in granted(docs), "the operator itself cannot release"


def test_rbac_py_has_no_duplicates_and_names_only_known_placeholders() -> None:
    seen: set[Grant] = set()
    for perm in PERMISSIONS:
        assert perm.verbs and perm.sites, perm
        for verb in perm.verbs:
            for name in perm.names or ("",):
                key = (perm.group, perm.resource, verb, name)
                assert key not in seen, f"listed twice: {key}"
                seen.add(key)
        assert all(n == RELEASE or "{" not in n for n in perm.names), perm


def _resolve(site: str) -> object:
    module_name, _, qualname = site.partition(":")
    target: object = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


@pytest.mark.parametrize("site", sorted({site for perm in PERMISSIONS for site in perm.sites}))
def test_every_call_site_exists(site: str) -> None:
    assert callable(_resolve(site)), f"{site} is not a function: rbac.py names a call site that is gone"


def test_watches_match_the_kopf_handlers() -> None:
    import kopf

    import stockade.admission.guard
    import stockade.handlers  # registers every handler, admission's and detection's too
    import stockade.watch

    registry = kopf.get_default_registry()
    selectors = [h.selector for h in registry._watching.get_all_handlers()]
    assert all(s is not None for s in selectors), "a handler watches every resource: rbac.py cannot cover that"
    watched = {(s.group or "", s.plural or s.any_name) for s in selectors if s is not None}
    watched |= {kind.resource for kind in stockade.watch.KINDS}  # the operator's own watch layer
    watched |= {kind.resource for kind in stockade.admission.guard.KINDS}  # and its admission objects
    listable = {(p.group, p.resource) for p in PERMISSIONS if {"list", "watch"} <= set(p.verbs)}
    assert not watched - listable, f"handlers watch what rbac.py cannot list/watch: {sorted(watched - listable)}"
    unused = listable - watched - FRAMEWORK_WATCHES
    assert not unused, f"rbac.py lets the operator list/watch what no handler watches: {sorted(unused)}"
