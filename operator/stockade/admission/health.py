"""Is admission whole? The operator's webhook configurations and admission policies, desired against live (pure).

The operator watches the objects it applied (or, under the chart, the ones the chart ships) and judges them
here: each is ``ok``, ``missing`` or ``changed`` (a field the operator wants differs: a ``failurePolicy``
turned to ``Ignore``, a ``namespaceSelector`` widened or narrowed). Extra fields and extra webhooks another
writer added are not drift; they can only refuse more. ``admission_health`` sums the objects up as the
``AdmissionReady`` condition (:mod:`stockade.conditions`) says it on every AgentRun.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stockade.api.reasons import ADMISSION_CHANGED, ADMISSION_IN_PLACE, ADMISSION_MISSING
from stockade.drift import contains

OK, MISSING, CHANGED = "ok", "missing", "changed"
# Who makes each object, so what the operator may do about it:
OPERATOR = "operator"  # the operator applies it: restored when missing or changed
FILLED = "filled"  # the chart makes it empty, the operator fills it in: restored when changed, reported when missing
SHIPPED = "shipped"  # the chart ships it whole (STOCKADE_ADMISSION_MANAGE_POLICY=false): reported only
# Condition reasons (AdmissionReady, and Ready while admission is not whole) and Event reasons: stockade.api.reasons

ObjectKey = tuple[str, str]  # (kind, name): every admission object is cluster-scoped


@dataclass(frozen=True)
class ObjectHealth:
    kind: str
    name: str
    state: str  # OK | MISSING | CHANGED
    detail: str = ""  # for CHANGED: the fields that differ (the first three)
    owner: str = OPERATOR

    @property
    def restorable(self) -> bool:
        return self.state != OK and (self.owner == OPERATOR or (self.owner == FILLED and self.state == CHANGED))

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}"


@dataclass(frozen=True)
class Health:
    ok: bool
    reason: str
    message: str
    objects: tuple[ObjectHealth, ...] = ()

    @property
    def broken(self) -> tuple[ObjectHealth, ...]:
        return tuple(o for o in self.objects if o.state != OK)

    def condition(self) -> tuple[bool, str, str]:
        return self.ok, self.reason, self.message


def key_of(obj: Mapping[str, Any]) -> ObjectKey:
    return str(obj["kind"]), str(obj["metadata"]["name"])


def _by_name(items: Any) -> dict[str, Any]:
    return {str(item.get("name")): item for item in items or [] if isinstance(item, Mapping)}


def differences(live: Any, desired: Any, path: str = "") -> list[str]:
    """Every path where ``live`` does not hold ``desired`` (empty: it does), the deepest that differ. Webhooks
    are compared by name by the caller (``webhooks`` is a list keyed by name)."""
    if contains(live, desired):
        return []
    if isinstance(desired, Mapping) and isinstance(live, Mapping):
        return [found for key, want in desired.items()
                for found in differences(live.get(key), want, f"{path}.{key}" if path else str(key))]
    if isinstance(desired, list) and isinstance(live, list) and len(desired) == len(live):
        return [found for index, (have, want) in enumerate(zip(live, desired, strict=True))
                for found in differences(have, want, f"{path}[{index}]")]
    return [path or "(the object)"]


def difference(live: Any, desired: Any, path: str = "") -> str | None:
    """The differing paths as one text (at most three named), None when ``live`` holds ``desired``."""
    return _joined(differences(live, desired, path))


def _joined(found: list[str]) -> str | None:
    if not found:
        return None
    return ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")


def _webhooks_difference(live: Mapping[str, Any], desired: Mapping[str, Any]) -> str | None:
    have = _by_name(live.get("webhooks"))
    found: list[str] = []
    for name, want in _by_name(desired.get("webhooks")).items():
        found += [f"webhooks[{name}] (missing)"] if name not in have else \
            differences(have[name], want, f"webhooks[{name}]")
    return _joined(found)


def normalized(obj: Any) -> Any:
    """A label selector's ``values`` are a set: sorted, so that order alone is never drift (the chart puts its
    namespace where its placeholder sorted, the operator sorts the names themselves)."""
    if isinstance(obj, Mapping):
        return {k: sorted(v) if k == "values" and isinstance(v, list) and all(isinstance(i, str) for i in v)
                else normalized(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [normalized(v) for v in obj]
    return obj


def object_health(desired: Mapping[str, Any], live: Mapping[str, Any] | None, owner: str = OPERATOR) -> ObjectHealth:
    kind, name = key_of(desired)
    if live is None or (live.get("metadata") or {}).get("deletionTimestamp"):
        return ObjectHealth(kind, name, MISSING, owner=owner)
    desired, live = normalized(desired), normalized(live)
    if kind.endswith("WebhookConfiguration"):
        found = _webhooks_difference(live, desired)
    else:
        found = difference(live.get("spec"), desired.get("spec"), "spec")
    return ObjectHealth(kind, name, CHANGED if found else OK, found or "", owner)


def _describe(item: ObjectHealth) -> str:
    what = "was deleted" if item.state == MISSING else f"was changed ({item.detail})"
    if item.restorable:
        fix = "the operator is restoring it"
    elif item.owner == FILLED:
        fix = "the chart makes it (helm upgrade makes it again) and the operator then fills it in"
    else:
        fix = "the chart ships it (STOCKADE_ADMISSION_MANAGE_POLICY=false): helm upgrade restores it"
    return f"{item.label} {what}; {fix}"


def admission_health(desired: Sequence[Mapping[str, Any]], live: Mapping[ObjectKey, Mapping[str, Any] | None],
                     owners: Mapping[ObjectKey, str] | None = None) -> Health:
    """Every desired object judged against what the watches last showed (``live``; absent: missing).
    ``owners``: who makes each object (OPERATOR when not named)."""
    objects = tuple(object_health(obj, live.get(key_of(obj)), (owners or {}).get(key_of(obj), OPERATOR))
                    for obj in desired)
    broken = [o for o in objects if o.state != OK]
    if not broken:
        return Health(True, ADMISSION_IN_PLACE,
                      f"{len(objects)} webhook configurations and admission policies in place", objects)
    reason = ADMISSION_MISSING if any(o.state == MISSING for o in broken) else ADMISSION_CHANGED
    message = "admission is not whole, so what it refuses may get in: " + "; ".join(_describe(o) for o in broken)
    return Health(False, reason, message, objects)


def restorable(health: Health) -> list[ObjectKey]:
    """What the operator should apply again: its own objects missing or changed, the filled ones changed."""
    return [(o.kind, o.name) for o in health.objects if o.restorable]
