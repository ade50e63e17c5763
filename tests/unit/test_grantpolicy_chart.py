"""The chart's default AgentPolicy: valid for the CRD model, modest, and lets the README example run."""

from __future__ import annotations

import subprocess

import yaml

from stockade.api.models import AgentRunSpec
from stockade.grantpolicy.ceilings import Bound, check
from stockade.grantpolicy.selector import selects

from .helm_support import ROOT, helm


def _rendered(*args: str) -> dict:
    out = subprocess.run([helm(), "template", "stockade", str(ROOT / "charts/stockade"), "--namespace",
                          "stockade-system", "--kube-version", "1.30.0", "-s", "templates/agentpolicy.yaml", *args],
                         capture_output=True, text=True, check=True).stdout
    return yaml.safe_load(out)


def _example() -> tuple[str, AgentRunSpec]:
    docs = list(yaml.safe_load_all((ROOT / "examples/agentrun.yaml").read_text()))
    run = next(d for d in docs if d["kind"] == "AgentRun")
    return run["metadata"]["namespace"], AgentRunSpec.model_validate(run["spec"])


def test_the_default_policy_admits_the_readme_example():
    policy = _rendered()
    bound = Bound.of(policy["metadata"]["name"], policy["spec"])
    assert bound.spec is not None, bound.error
    namespace, spec = _example()
    assert selects(bound.spec.namespaceSelector, {"kubernetes.io/metadata.name": namespace})
    assert [f.text() for f in check(spec, [bound], namespace)] == []


def test_the_default_policy_is_modest_and_never_selects_the_system_or_its_own_namespace():
    bound = Bound.of("default", _rendered()["spec"])
    assert bound.spec is not None
    namespace, spec = _example()
    for name in ("kube-system", "kube-public", "kube-node-lease", "stockade-system"):
        assert not selects(bound.spec.namespaceSelector, {"kubernetes.io/metadata.name": name})
    public = spec.model_copy(update={"grant": spec.grant.model_copy(update={
        "gpu": 4, "egress": [*spec.grant.egress, spec.grant.egress[0].model_copy(update={"cidr": "0.0.0.0/0"})]})})
    fields = {f.field for f in check(public, [bound], namespace)}
    assert fields == {"spec.grant.gpu", "spec.grant.egress[2].cidr"}


def test_the_default_policy_can_be_turned_off():
    result = subprocess.run([helm(), "template", "stockade", str(ROOT / "charts/stockade"), "--kube-version", "1.30.0",
                             "-s", "templates/agentpolicy.yaml", "--set", "defaultPolicy.enabled=false"],
                            capture_output=True, text=True, check=False)
    assert "kind: AgentPolicy" not in result.stdout
