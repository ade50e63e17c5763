"""A refusal names the field, the policy and its limit, in the style of the template refusals."""

from __future__ import annotations

from dataclasses import dataclass

GRANT = "spec.grant"


@dataclass(frozen=True)
class PolicyFinding:
    """One thing a grant asks for that a policy (or the parent run's grant) does not allow."""

    kind: str  # CamelCase, for metrics and tests: CeilingExceeded, EgressNotAllowed, ...
    field: str  # where in the AgentRun: spec.grant.gpu, spec.grant.egress[0].cidr, ...
    message: str  # what was asked
    policy: str  # "AgentPolicy <name>", or "the parent run <ns>/<name>"
    limit: str  # what it allows, with the policy field: "at most 1 (ceilings.gpus[nvidia.com/gpu])"
    hint: str = ""

    def text(self) -> str:
        parts = [f"{self.field}: {self.message}", f"{self.policy} allows {self.limit}"]
        if self.hint:
            parts.append(self.hint)
        return "; ".join(parts)


def policy_label(name: str) -> str:
    return f"AgentPolicy {name}"


def summary(findings: list[PolicyFinding], limit: int = 8) -> str:
    """One message for the whole refusal: every finding (the first ``limit`` of them)."""
    shown = [f.text() for f in findings[:limit]]
    more = len(findings) - limit
    if more > 0:
        shown.append(f"and {more} more")
    return "Stockade: the grant is outside policy: " + " | ".join(shown)
