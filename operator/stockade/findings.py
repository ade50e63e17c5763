"""A finding: one thing a pod (or a grant) asks for that the grant does not give. Pure data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Finding:
    """One thing the pod asks for that the grant does not give."""

    kind: str
    field: str
    message: str
    allowed: str = ""
    hint: str = ""

    def text(self) -> str:
        parts = [f"{self.field}: {self.message}"]
        if self.allowed:
            parts.append(f"the grant allows {self.allowed}")
        if self.hint:
            parts.append(self.hint)
        return "; ".join(parts)


def refusal_status(finding: Finding) -> dict[str, str]:
    """The finding as status.refusals holds it (api.models.Refusal): empty fields left out."""
    found = {"kind": finding.kind, "field": finding.field, "message": finding.message,
             "allowed": finding.allowed, "hint": finding.hint}
    return {key: value for key, value in found.items() if value}


def refusal_text(refusal: Mapping[str, Any]) -> str:
    """One item of status.refusals as the operator's condition message says it."""
    return Finding(str(refusal.get("kind") or ""), str(refusal.get("field") or ""), str(refusal.get("message") or ""),
                   str(refusal.get("allowed") or ""), str(refusal.get("hint") or "")).text()


def grant_hint(field_name: str) -> str:
    return f"to allow it, raise spec.grant.{field_name} on the AgentRun"
