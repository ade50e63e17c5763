"""Does a live object still hold everything the operator wants in it? (pure)

The desired manifest must be a subset of the live object: extra fields the API server defaults, or
labels someone adds, are not drift; a changed or missing field is. Quantities compare by value
("1000m" is "1"), since the API server rewrites them in canonical form.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stockade.quantity import parse_quantity


def _same_scalar(want: Any, have: Any) -> bool:
    if want == have:
        return True
    if isinstance(want, str | int) and isinstance(have, str | int) and not isinstance(want, bool):
        try:
            return parse_quantity(want) == parse_quantity(have)
        except ValueError:
            return False
    return False


def contains(live: Any, desired: Any) -> bool:
    if live is None and desired in ([], {}):
        return True  # the API server drops empty lists and maps ("egress: []" comes back absent)
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return False
        return all(contains(live.get(key), value) for key, value in desired.items())
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return False
        return all(contains(have, want) for have, want in zip(live, desired, strict=True))
    return _same_scalar(desired, live)


def needs_apply(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> bool:
    if live is None or (live.get("metadata") or {}).get("deletionTimestamp"):
        return True
    body = {k: v for k, v in desired.items() if k not in ("apiVersion", "kind")}
    return not contains(live, body)
