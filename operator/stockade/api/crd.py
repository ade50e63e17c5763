"""Generate the AgentRun and AgentPolicy CustomResourceDefinitions from the pydantic models.

``python -m stockade.api.crd`` (or ``stockade crds``) prints the AgentRun CRD and
``python -m stockade.api.crd agentpolicies`` the AgentPolicy CRD; ``make crds`` writes both into
``crds/``, and a unit test fails when a committed file differs.
"""

from __future__ import annotations

import copy
import re
import sys
from collections.abc import Iterator
from typing import Any

import yaml

from stockade.api.models import GROUP, KIND, PLURAL, VERSION, AgentRunSpec, AgentRunStatus
from stockade.api.policy import POLICY_KIND, POLICY_PLURAL, AgentPolicySpec, AgentPolicyStatus

# Keys pydantic emits that a Kubernetes structural schema does not take.
_DROP = {"title", "$defs", "additionalProperties_", "examples"}


def _reflow(text: str) -> str:
    """A docstring's paragraphs, each on one line: kubectl explain wraps them itself."""
    return "\n\n".join(" ".join(part.split()) for part in re.split(r"\n\s*\n", text.strip()))


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Inline $refs and turn pydantic's JSON Schema into a Kubernetes structural schema."""
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].split("/")[-1]]
        merged = {**copy.deepcopy(target), **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    any_of = node.get("anyOf")
    non_null = [option for option in any_of or [] if option.get("type") != "null"]
    if any_of and not node.get("x-kubernetes-int-or-string") and len(non_null) == 1:
        # Optional[X] is anyOf [X, null]: Kubernetes expresses "may be absent" by not requiring it.
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        return _structural({**non_null[0], **rest}, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "const":
            out["enum"] = [value]
            continue
        if key == "default" and value is None:
            continue
        if key == "description" and isinstance(value, str):
            out[key] = _reflow(value)
        elif key == "properties":
            out[key] = {name: _structural(prop, defs) for name, prop in value.items()}
        elif (key == "additionalProperties" and isinstance(value, dict)) or key in {"items", "anyOf", "allOf", "oneOf"}:
            out[key] = _structural(value, defs)
        else:
            out[key] = value
    # Structural schemas take no boolean additionalProperties: "false" is the default (prune),
    # "true" is spelt x-kubernetes-preserve-unknown-fields.
    if isinstance(out.get("additionalProperties"), bool) and out.pop("additionalProperties"):
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def _schema_of(model: type[Any]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    result: dict[str, Any] = _structural(raw, defs)
    return result


# What `kubectl explain agentrun` and `kubectl explain agentpolicy` say about the object itself.
DESCRIPTIONS = {
    KIND: "An AI agent's run inside a fence: Stockade makes a run namespace whose NetworkPolicies, quota, RBAC and "
          "admission allow only spec.grant, starts spec.template there, and quarantines the run when a detector "
          "reports a violation. `stockade status NAME` shows it; `stockade explain` documents each field.",
    POLICY_KIND: "What a platform admin allows the AgentRuns of the namespaces it selects: per-run ceilings, "
                 "egress destinations, API rules, defaults and budgets across runs. Cluster-scoped; several "
                 "policies selecting one namespace all apply.",
}
# The same text Kubernetes' own types carry (k8s.io/apimachinery TypeMeta).
_META = {
    "apiVersion": "APIVersion defines the versioned schema of this representation of an object: stockade.io/v1alpha1.",
    "kind": "Kind is a string value representing the REST resource this object represents, in CamelCase.",
}


def openapi_schema(spec_model: type[Any] = AgentRunSpec, status_model: type[Any] = AgentRunStatus,
                   kind: str = KIND) -> dict[str, Any]:
    spec = _schema_of(spec_model)
    status = _schema_of(status_model)
    return {
        "type": "object",
        "description": DESCRIPTIONS[kind],
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": _META["apiVersion"]},
            "kind": {"type": "string", "description": _META["kind"]},
            # Nothing but the type: the API server refuses a CRD that says more about metadata, and serves
            # ObjectMeta's own schema (and descriptions) in its place.
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def _printer_columns() -> list[dict[str, Any]]:
    return [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
        {"name": "Reason", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].reason'},
        {"name": "GPUs", "type": "integer", "jsonPath": ".spec.grant.gpu"},
        # The EgressResolved reason: HostUnresolved says a granted host allows nothing (Ready stays True).
        {"name": "Egress", "type": "string", "jsonPath": '.status.conditions[?(@.type=="EgressResolved")].reason'},
        # Not "Namespace": `kubectl get -A -o wide` has a NAMESPACE column of its own (the AgentRun's).
        {"name": "Run-Namespace", "type": "string", "jsonPath": ".status.runNamespace", "priority": 1},
        {"name": "Enforcement", "type": "string", "jsonPath": ".spec.enforcement", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def agentrun_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "stockade", "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["ar"],
                "categories": ["stockade"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _printer_columns(),
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


def _policy_printer_columns() -> list[dict[str, Any]]:
    return [
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
        {"name": "Namespaces", "type": "integer", "jsonPath": ".status.selectedNamespaces"},
        {"name": "Runs", "type": "string", "jsonPath": ".status.usage.runs"},
        {"name": "GPUs", "type": "string", "jsonPath": ".status.usage.gpusTotal"},
        {"name": "CPU", "type": "string", "jsonPath": ".status.usage.cpu", "priority": 1},
        {"name": "Memory", "type": "string", "jsonPath": ".status.usage.memory", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def agentpolicy_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{POLICY_PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "stockade", "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Cluster",
            "names": {
                "kind": POLICY_KIND,
                "listKind": f"{POLICY_KIND}List",
                "plural": POLICY_PLURAL,
                "singular": POLICY_KIND.lower(),
                "shortNames": ["ap"],
                "categories": ["stockade"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _policy_printer_columns(),
                    "schema": {"openAPIV3Schema": openapi_schema(AgentPolicySpec, AgentPolicyStatus, POLICY_KIND)},
                }
            ],
        },
    }


# Each generated CRD: the plural that names it on the command line, its source and its builder.
CRDS: dict[str, tuple[str, Any]] = {
    PLURAL: ("operator/stockade/api/models.py", agentrun_crd),
    POLICY_PLURAL: ("operator/stockade/api/policy.py", agentpolicy_crd),
}


def render(plural: str = PLURAL) -> str:
    source, build = CRDS[plural]
    header = f"# Generated from {source} by `make crds`. Do not edit by hand.\n"
    return header + yaml.safe_dump(build(), sort_keys=False, width=120)


def main() -> None:
    sys.stdout.write(render(sys.argv[1] if len(sys.argv) > 1 else PLURAL))


if __name__ == "__main__":
    main()


def schema_nodes(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node a user can reach with kubectl explain (properties, list items, map values), with its
    path: what the tests walk to find a field without a description, in the CRD and as the API server serves it."""
    yield path, node
    for name, prop in (node.get("properties") or {}).items():
        yield from schema_nodes(prop, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from schema_nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from schema_nodes(node["additionalProperties"], f"{path}{{}}")
