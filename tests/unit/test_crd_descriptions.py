"""Every node of both CRDs' schemas has a description: `kubectl explain` shows nothing else about it."""

from typing import Any

import pytest

from stockade.api.crd import agentpolicy_crd, agentrun_crd, schema_nodes
from stockade.template_docs import NOTES, describe

# The API server refuses a CRD whose metadata schema says anything but its type; it serves ObjectMeta's own.
SERVED_BY_KUBERNETES = {"metadata"}


def undescribed(schema: dict[str, Any], root: str) -> list[str]:
    exempt = {f"{root}.{name}" for name in SERVED_BY_KUBERNETES}
    return [path for path, node in schema_nodes(schema, root)
            if path not in exempt and not str(node.get("description") or "").strip()]


@pytest.mark.parametrize("build", [agentrun_crd, agentpolicy_crd], ids=["AgentRun", "AgentPolicy"])
def test_every_schema_node_has_a_description(build: Any) -> None:
    crd = build()
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    missing = undescribed(schema, crd["spec"]["names"]["kind"])
    assert not missing, "no description: " + ", ".join(missing)


def test_the_walk_reaches_items_maps_and_open_objects() -> None:
    # The walk itself: a node hidden in list items, map values or a preserve-unknown-fields object is found.
    schema = {"type": "object", "description": "d", "properties": {
        "a": {"type": "array", "description": "d", "items": {"type": "string"}},
        "m": {"type": "object", "description": "d", "additionalProperties": {"type": "string"}},
        "o": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    }}
    assert undescribed(schema, "X") == ["X.a[]", "X.m{}", "X.o"]


def test_the_template_says_what_stockade_refuses_and_where_to_read_more() -> None:
    template = agentrun_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"]["template"]
    assert "PodTemplateSpec" in template["description"] and template["x-kubernetes-preserve-unknown-fields"]
    spec = template["properties"]["spec"]["properties"]
    assert "never granted" in spec["hostNetwork"]["description"]
    assert "grant.runtimeClassNames" in spec["runtimeClassName"]["description"]
    # A note on a container field holds for init containers; other fields point at the Pod's own docs.
    init = spec["initContainers"]["items"]["properties"]["securityContext"]["properties"]["privileged"]
    assert init["description"] == NOTES["spec.containers[].securityContext.privileged"]
    assert "kubectl explain pod.spec.containers.image" in spec["containers"]["items"]["properties"]["image"][
        "description"]


def test_every_note_names_a_field_of_the_template() -> None:
    from stockade.podshape import template_schema

    paths = {path.removeprefix("T").removeprefix(".") for path, _ in schema_nodes(template_schema(), "T")}
    assert set(NOTES) <= paths, f"notes for no field: {sorted(set(NOTES) - paths)}"
    assert describe({"type": "string"}, "spec.dnsConfig")["description"].startswith("As in a Pod")


@pytest.mark.parametrize("build", [agentrun_crd, agentpolicy_crd], ids=["AgentRun", "AgentPolicy"])
def test_metadata_is_left_to_the_api_server(build: Any) -> None:
    assert build()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["metadata"] == {"type": "object"}


@pytest.mark.parametrize("path", ["status.conditions", "spec.grant.kubernetesAPI"])
def test_conditions_and_rbac_rules_describe_their_items(path: str) -> None:
    node = agentrun_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for part in path.split("."):
        node = node["properties"][part]
    items = node["items"]
    assert items["description"] and all(p["description"] for p in items["properties"].values())
