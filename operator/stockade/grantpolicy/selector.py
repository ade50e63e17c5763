"""Kubernetes label-selector semantics (metav1.LabelSelector), for policies that select namespaces.

As in k8s.io/apimachinery: an empty selector selects everything; every matchLabels pair and every
matchExpressions requirement must hold; NotIn and DoesNotExist also hold where the label is absent.
"""

from __future__ import annotations

from collections.abc import Mapping

from stockade.api.policy import LabelSelector, LabelSelectorRequirement


def _holds(requirement: LabelSelectorRequirement, labels: Mapping[str, str]) -> bool:
    present = requirement.key in labels
    values = requirement.values or []
    if requirement.operator == "In":
        return present and labels[requirement.key] in values
    if requirement.operator == "NotIn":
        return not present or labels[requirement.key] not in values
    if requirement.operator == "Exists":
        return present
    return not present  # DoesNotExist


def selects(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    for key, value in (selector.matchLabels or {}).items():
        if labels.get(key) != value:
            return False
    return all(_holds(requirement, labels) for requirement in selector.matchExpressions or [])


def matches(selector: LabelSelector | None, labels: Mapping[str, str]) -> bool:
    """As :func:`selects`; None (a selector that could not be read) selects everything: closed, not open."""
    return selector is None or selects(selector, labels)
