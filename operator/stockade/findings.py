"""A finding: one thing a pod (or a grant) asks for that the grant does not give. Pure data."""

from __future__ import annotations

from dataclasses import dataclass


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


def grant_hint(field_name: str) -> str:
    return f"to allow it, raise spec.grant.{field_name} on the AgentRun"
