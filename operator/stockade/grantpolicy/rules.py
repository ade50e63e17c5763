"""Is an RBAC rule within others? Kubernetes RBAC's own matching, one permission at a time.

A grant's rule is within a set of rules when every (apiGroup, resource, verb, resourceName) it gives is
given by one of them (rbac/v1 semantics: "*" matches any group, resource or verb; "*/scale" any
resource's scale subresource; a rule with resourceNames gives only those objects). The same tuples are
what the webhook asks SubjectAccessReviews about.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol


class Rule(Protocol):
    @property
    def apiGroups(self) -> Sequence[str]: ...
    @property
    def resources(self) -> Sequence[str]: ...
    @property
    def verbs(self) -> Sequence[str]: ...
    @property
    def resourceNames(self) -> Sequence[str] | None: ...


@dataclass(frozen=True)
class Permission:
    group: str
    resource: str  # "pods" or "pods/log"
    verb: str
    name: str | None  # None: every object

    def text(self) -> str:
        group = self.group or "core"
        named = f" {self.name!r}" if self.name is not None else ""
        return f"{self.verb} {self.resource}{named} (group {group})"


def permissions(rule: Rule) -> Iterable[Permission]:
    names: Sequence[str | None] = list(rule.resourceNames) if rule.resourceNames else [None]
    for group in rule.apiGroups:
        for resource in rule.resources:
            for verb in rule.verbs:
                for name in names:
                    yield Permission(group, resource, verb, name)


def count(rule: Rule) -> int:
    return len(rule.apiGroups) * len(rule.resources) * len(rule.verbs) * max(1, len(rule.resourceNames or []))


def _resource_matches(allowed: str, asked: str) -> bool:
    if allowed in ("*", asked):
        return True
    if allowed.startswith("*/") and "/" in asked and not asked.startswith("*"):
        return asked.split("/", 1)[1] == allowed[2:]
    return False


def covers(rule: Rule, perm: Permission) -> bool:
    if "*" not in rule.apiGroups and perm.group not in rule.apiGroups:
        return False
    if not any(_resource_matches(allowed, perm.resource) for allowed in rule.resources):
        return False
    if "*" not in rule.verbs and perm.verb not in rule.verbs:
        return False
    if rule.resourceNames:
        return perm.name is not None and perm.name in rule.resourceNames
    return True


def uncovered(rule: Rule, allowed: Sequence[Rule]) -> list[Permission]:
    """The permissions ``rule`` gives that none of ``allowed`` gives."""
    return [perm for perm in permissions(rule) if not any(covers(a, perm) for a in allowed)]


def describe(rules: Sequence[Rule]) -> str:
    if not rules:
        return "no API access"
    parts = []
    for rule in rules[:4]:
        groups = ",".join(g or '""' for g in rule.apiGroups)
        named = f" names {','.join(rule.resourceNames)}" if rule.resourceNames else ""
        parts.append(f"[{','.join(rule.verbs)} {','.join(rule.resources)} in {groups}{named}]")
    return " ".join(parts) + (f" and {len(rules) - 4} more rules" if len(rules) > 4 else "")
