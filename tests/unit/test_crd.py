from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from stockade.api.crd import agentpolicy_crd, agentrun_crd, render
from stockade.api.models import AgentRunSpec
from stockade.api.policy import AgentPolicySpec

from .fixtures import GPU_RUN

CRD_FILE = Path(__file__).resolve().parents[2] / "crds" / "agentruns.stockade.io.yaml"


def test_committed_crd_matches_the_models():
    assert CRD_FILE.read_text() == render(), "crds/ is stale: run `make crds` and commit the result"


def _walk(node, path="$"):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{path}[{index}]")


def test_schema_is_structural():
    schema = agentrun_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "$ref" not in node, path
        assert node.get("additionalProperties") not in (True, False), path
        if "properties" in node:
            assert node.get("type") == "object", path
            assert "additionalProperties" not in node, path


def test_contract_names_and_columns():
    crd = agentrun_crd()
    assert crd["metadata"]["name"] == "agentruns.stockade.io"
    assert crd["spec"]["names"]["shortNames"] == ["ar"]
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = version["additionalPrinterColumns"]
    assert [c["name"] for c in columns if not c.get("priority")] == ["Phase", "Ready", "Reason", "GPUs", "Egress",
                                                                     "Age"]
    # -o wide: kubectl adds its own NAMESPACE column with -A, so no column of ours may be called that.
    assert [c["name"] for c in columns if c.get("priority")] == ["Run-Namespace", "Enforcement"]
    assert all(c["name"].upper() != "NAMESPACE" for c in columns)
    grant = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["grant"]["properties"]
    for field in ("cpu", "memory", "gpu", "gpuResource", "ephemeralStorage", "pods", "egress", "dns",
                  "kubernetesAPI", "duration"):
        assert field in grant, field


def test_contract_example_validates():
    AgentRunSpec.model_validate(GPU_RUN)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"cpu": "eight"}, "cpu"),
        ({"pods": 0}, "pods"),
        ({"egress": [{"cidr": "10.0.0.0/8", "ports": [70000]}]}, "egress"),
        ({"duration": "four hours"}, "duration"),
        ({"gpuResource": "not a resource"}, "gpuResource"),
    ],
)
def test_models_reject_bad_grants(change, field):
    raw = {**GPU_RUN, "grant": {**GPU_RUN["grant"], **change}}
    with pytest.raises(ValidationError) as err:
        AgentRunSpec.model_validate(raw)
    assert field in str(err.value)


# AgentPolicy ---------------------------------------------------------------------------------------------
POLICY_CRD_FILE = CRD_FILE.parent / "agentpolicies.stockade.io.yaml"


def test_committed_policy_crd_matches_the_model():
    assert POLICY_CRD_FILE.read_text() == render("agentpolicies"), "crds/ is stale: run `make crds` and commit"


def test_policy_schema_is_structural_and_every_field_described():
    crd = agentpolicy_crd()
    version = crd["spec"]["versions"][0]
    assert crd["spec"]["scope"] == "Cluster" and crd["spec"]["names"]["shortNames"] == ["ap"]
    assert version["subresources"] == {"status": {}}
    assert {"Runs", "GPUs"} <= {c["name"] for c in version["additionalPrinterColumns"]}
    schema = version["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "$ref" not in node and "patternProperties" not in node, path
        assert node.get("additionalProperties") not in (True, False), path
        if "properties" in node:
            assert node.get("type") == "object", path
            for name, prop in node["properties"].items():
                if path.startswith("$.properties.spec") or path.startswith("$.properties.status"):
                    assert prop.get("description"), f"{path}.{name} has no description"


def test_policy_crd_carries_the_contradiction_rules():
    spec = agentpolicy_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = " ".join(v["rule"] for v in spec["x-kubernetes-validations"])
    assert "defaults.duration" in rules and "ceilings.maxDuration" in rules
    ceilings = spec["properties"]["ceilings"]
    assert "requiredRuntimeClassName in self.runtimeClassNames" in ceilings["x-kubernetes-validations"][0]["rule"]
    cidrs = spec["properties"]["egress"]["properties"]["cidrs"]
    assert "isCIDR" in cidrs["x-kubernetes-validations"][0]["rule"]


def test_grant_has_delegation_and_phase_queued():
    grant = agentrun_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "grant"]["properties"]
    assert grant["delegation"]["default"] is False and grant["delegation"]["description"]
    phase = agentrun_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"][
        "phase"]
    assert "Queued" in phase["enum"]


@pytest.mark.parametrize(
    "bad",
    [
        {"namespaceSelector": {}, "ceilings": {"gpus": {"not a resource": 1}}},
        {"namespaceSelector": {}, "ceilings": {"cpu": "lots"}},
        {"namespaceSelector": {}, "egress": {"hosts": ["*.*.example.com"]}},
        {"namespaceSelector": {}, "kubernetesAPI": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["exec"]}]},
        {"namespaceSelector": {}, "surprise": True},
    ],
)
def test_policy_model_rejects_bad_policies(bad):
    with pytest.raises(ValidationError):
        AgentPolicySpec.model_validate(bad)


@pytest.mark.parametrize(
    ("change", "words"),
    [({"cpu": "-1"}, "negative"), ({"cpu": "1e100"}, "most"), ({"memory": "2Ei"}, "most"),
     ({"ephemeralStorage": "-5Gi"}, "negative"), ({"duration": "1000000h"}, "at most"), ({"duration": "0s"}, "more")],
)
def test_grant_amounts_and_durations_are_bounded(change, words):
    raw = {**GPU_RUN, "grant": {**GPU_RUN["grant"], **change}}
    with pytest.raises(ValidationError) as err:
        AgentRunSpec.model_validate(raw)
    assert words in str(err.value) and next(iter(change)) in str(err.value)


def test_the_crd_bounds_what_the_api_server_would_refuse_later():
    grant = agentrun_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "grant"]
    rules = {r["rule"] for r in grant["x-kubernetes-validations"]}
    for field in ("cpu", "memory", "ephemeralStorage"):
        assert any(f"quantity(string(self.{field})).compareTo(quantity('0')) >= 0" in r for r in rules), field
        assert any(f"quantity(string(self.{field})).compareTo" in r for r in rules), field
    assert any("duration('2147483647s')" in r for r in rules)


def test_the_template_schema_types_what_the_operator_reads():
    template = agentrun_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"]["template"]
    pod = template["properties"]["spec"]["properties"]
    assert pod["volumes"]["type"] == "array" and pod["dnsPolicy"]["type"] == "string"
    assert pod["securityContext"]["type"] == "object"
    env = pod["containers"]["items"]["properties"]["env"]
    assert env["type"] == "array" and env["items"]["type"] == "object"
    assert template["properties"]["metadata"]["properties"]["annotations"]["additionalProperties"]["type"] == "string"
    assert pod["containers"]["minItems"] == 1
