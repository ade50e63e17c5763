"""``stockade explain``: the AgentRun fields, documented from the API models themselves (pure).

Types, bounds and defaults come from the same pydantic models (and their JSON schema) that
generate the CRD, so the explanation cannot drift from what the API server enforces.
"""

from __future__ import annotations

import difflib
import functools
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from stockade.api.models import AgentRunSpec, AgentRunStatus
from stockade.api.policy import AgentPolicySpec, AgentPolicyStatus

ROOTS: dict[str, type[BaseModel]] = {"spec": AgentRunSpec, "status": AgentRunStatus}
# Prefixes a user may type before the field path, as with `kubectl explain agentrun.spec.grant`.
_KIND_PREFIXES = ("agentrun", "agentruns", "ar")
# The AgentPolicy (cluster-scoped, written by a platform admin): its paths are shown with this prefix.
POLICY_PREFIX = "agentpolicy"
_POLICY_PREFIXES = ("agentpolicy", "agentpolicies", "ap")
POLICY_ROOTS: dict[str, type[BaseModel]] = {"spec": AgentPolicySpec, "status": AgentPolicyStatus}
_CONSTRAINTS = ("minimum", "maximum", "minItems", "maxItems", "minLength", "maxLength", "pattern")


class UnknownField(LookupError):
    """A path that names no field; ``suggestions`` holds the nearest real paths."""

    def __init__(self, path: str, suggestions: list[str]) -> None:
        hint = f" (did you mean {', '.join(suggestions)}?)" if suggestions else ""
        super().__init__(f"no field {path!r} in AgentRun{hint}")
        self.path = path
        self.suggestions = suggestions


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model inside ``X``, ``list[X]`` or ``X | None``: where a path descends next."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _type_name(prop: dict[str, Any]) -> str:
    if "$ref" in prop:
        return str(prop["$ref"]).rsplit("/", 1)[-1]
    if prop.get("x-kubernetes-int-or-string"):
        return "quantity"
    if "anyOf" in prop:
        options = [_type_name(option) for option in prop["anyOf"] if option.get("type") != "null"]
        return " | ".join(options) if options else "null"
    if "enum" in prop:
        return " | ".join(str(value) for value in prop["enum"])
    kind = prop.get("type")
    if kind == "array":
        item = _type_name(prop.get("items") or {})
        return f"[]({item})" if " | " in item else f"[]{item}"
    return str(kind or "any")


def _constraints(prop: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    # Bounds sit on the property, on the non-null branch of an optional, or on list items.
    for source in [prop, *(o for o in prop.get("anyOf", []) if o.get("type") != "null")]:
        for key in _CONSTRAINTS:
            if key in source and not (key == "pattern" and prop.get("x-kubernetes-int-or-string")):
                found[key] = source[key]
    items = prop.get("items") or {}
    for key in ("minimum", "maximum", "maxLength"):
        if key in items:
            found[f"items.{key}"] = items[key]
    return found


def _default(field: FieldInfo) -> Any:
    if field.is_required():
        return None
    value = field.get_default(call_default_factory=True)
    return None if value is PydanticUndefined else value


def _doc(model: type[BaseModel] | None) -> str:
    return " ".join((model.__doc__ or "").split()) if model is not None else ""


def _rules(model: type[BaseModel] | None, field: str | None = None) -> list[str]:
    """The CEL rules the API server checks on this object (messages only; the CRD has the rules).

    With ``field``, only the rules that point at that field (their ``fieldPath``)."""
    extra = model.model_config.get("json_schema_extra") if model is not None else None
    rules = extra.get("x-kubernetes-validations") if isinstance(extra, dict) else None
    if not isinstance(rules, list):
        return []
    return [str(rule["message"]) for rule in rules
            if isinstance(rule, dict) and (field is None or rule.get("fieldPath") == f".{field}")]


@functools.cache
def _properties(model: type[BaseModel]) -> dict[str, Any]:
    properties: dict[str, Any] = model.model_json_schema()["properties"]
    return properties


def _field_entry(model: type[BaseModel], name: str, path: str) -> dict[str, Any]:
    field = model.model_fields[name]
    prop = _properties(model).get(name, {})
    nested = _model_in(field.annotation)
    return {
        "name": name,
        "path": path,
        "type": _type_name(prop),
        "required": field.is_required(),
        "default": _default(field),
        "description": field.description or prop.get("description") or _doc(nested),
        "constraints": _constraints(prop),
        "rules": _rules(model, name),
    }


def _fields(model: type[BaseModel] | None, path: str) -> list[dict[str, Any]]:
    if model is None:
        return []
    return [_field_entry(model, name, f"{path}.{name}") for name in model.model_fields]


def all_paths() -> list[str]:
    """Every explainable path, for suggestions and completion."""
    paths: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        paths.append(prefix)
        for name, field in model.model_fields.items():
            nested = _model_in(field.annotation)
            if nested is None:
                paths.append(f"{prefix}.{name}")
            else:
                walk(nested, f"{prefix}.{name}")

    for root, model in ROOTS.items():
        walk(model, root)
    for root, model in POLICY_ROOTS.items():
        walk(model, f"{POLICY_PREFIX}.{root}")
    return paths


def _normalise(path: str | None) -> tuple[bool, list[str]]:
    """(is it an AgentPolicy path, the parts from spec or status on)."""
    parts = [part for part in (path or "grant").strip().split(".") if part]
    policy = bool(parts) and parts[0].lower() in _POLICY_PREFIXES
    if parts and (policy or parts[0].lower() in _KIND_PREFIXES):
        parts = parts[1:]
    if not parts or parts[0] not in ROOTS:
        parts = ["spec", *parts]  # grant.egress means spec.grant.egress, as users write it
    return policy, parts


def explain(path: str | None = None) -> dict[str, Any]:
    """A document for one field (default ``grant``; ``agentpolicy...`` for the AgentPolicy): its type, default,
    bounds and subfields.

    Raises UnknownField for a path that names nothing."""
    policy, parts = _normalise(path)
    roots = POLICY_ROOTS if policy else ROOTS
    root = parts[0]
    model: type[BaseModel] = roots[root]
    shown = f"{POLICY_PREFIX}.{root}" if policy else root
    doc: dict[str, Any] = {"name": root, "path": shown, "type": model.__name__, "required": root == "spec",
                           "default": None, "description": _doc(model), "constraints": {}, "rules": []}
    current: type[BaseModel] | None = model
    walked = shown
    for part in parts[1:]:
        if current is None or part not in current.model_fields:
            wanted = ".".join([POLICY_PREFIX, *parts] if policy else parts)
            raise UnknownField(wanted, difflib.get_close_matches(wanted, all_paths(), n=3, cutoff=0.6))
        walked = f"{walked}.{part}"
        doc = _field_entry(current, part, walked)
        current = _model_in(current.model_fields[part].annotation)
    doc["rules"] = [*doc["rules"], *(rule for rule in _rules(current) if rule not in doc["rules"])]
    doc["fields"] = _fields(current, walked)
    return doc

