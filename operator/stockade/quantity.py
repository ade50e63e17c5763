"""Kubernetes resource quantities ("500m", "16Gi", "1e3") as exact Decimals, and Go-style durations.

The Kubernetes client ships a parser, but pure modules stay free of the client (see the
import-linter contract), and the grammar is small and fixed by the API.
"""

from __future__ import annotations

import functools
import re
from decimal import Decimal, InvalidOperation
from typing import Any

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
            "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
            "P": Decimal("1e15"), "E": Decimal("1e18")}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_FORM = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))((?:[KMGTPE]i)|[numkMGTPE]|(?:[eE][+-]?[0-9]+))?$")


def parse_quantity(value: str | int | float) -> Decimal:
    """Parse a quantity; raise ValueError naming the bad value."""
    try:
        return _remembered(value)
    except TypeError:  # unhashable: a list or a mapping where a quantity belongs (refused below)
        return _parse(value)


# The same few quantities ("100m", "64Mi") are parsed for every pod on every admission request: remembered.
# Decimals are immutable, so sharing one is safe; typed, so 1 and 1.0 stay apart; errors are never cached.
@functools.lru_cache(maxsize=4096, typed=True)
def _remembered(value: str | int | float) -> Decimal:
    return _parse(value)


def _parse(value: Any) -> Decimal:
    text = str(value).strip()
    match = _FORM.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a Kubernetes quantity (examples: 500m, 4, 16Gi)")
    number, suffix = match.group(1), match.group(2) or ""
    try:
        base = Decimal(number)
    except InvalidOperation as err:  # pragma: no cover - the regex admits only valid numbers
        raise ValueError(f"{text!r} is not a Kubernetes quantity") from err
    if suffix in _BINARY:
        return base * _BINARY[suffix]
    if suffix in _DECIMAL:
        return base * _DECIMAL[suffix]
    return base * (Decimal(10) ** int(suffix[1:]))


def format_cpu(value: Decimal) -> str:
    """A CPU amount the way kubectl shows it: whole cores, else millicores."""
    if value == value.to_integral_value():
        return str(int(value))
    return f"{int((value * 1000).to_integral_value())}m"


def format_bytes(value: Decimal) -> str:
    """A byte amount with the largest exact binary suffix."""
    amount = int(value)
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = _BINARY[suffix]
        if amount and amount % unit == 0:
            return f"{amount // unit}{suffix}"
    return str(amount)


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration ("4h", "1h30m", "90s")."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a duration such as 4h, 90m or 30s")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
