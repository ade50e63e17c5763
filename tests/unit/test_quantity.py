from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stockade.quantity import format_bytes, format_cpu, parse_quantity


@pytest.mark.parametrize(
    ("text", "value"),
    [("500m", Decimal("0.5")), ("4", Decimal(4)), ("16Gi", Decimal(16 * 2**30)), ("1k", Decimal(1000)),
     ("1e3", Decimal(1000)), ("0.5", Decimal("0.5")), ("100Mi", Decimal(100 * 2**20))],
)
def test_parse(text, value):
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "Gi", "1.2.3", "12 Gi", "1gi", "abc"])
def test_parse_rejects(text):
    with pytest.raises(ValueError, match="quantity"):
        parse_quantity(text)


@given(st.integers(min_value=1, max_value=10**6))
def test_cpu_round_trip(millis):
    value = Decimal(millis) / 1000
    assert parse_quantity(format_cpu(value)) == value


@given(st.integers(min_value=0, max_value=2**50))
def test_bytes_round_trip(amount):
    assert parse_quantity(format_bytes(Decimal(amount))) == amount


def test_durations_are_parsed_where_the_models_can_use_them():
    from stockade.quantity import parse_duration

    assert parse_duration("1h30m") == 5400
    with pytest.raises(ValueError, match="duration"):
        parse_duration("1d")


@pytest.mark.parametrize("bad", [{"cpu": 1}, [1], "1x"])
def test_a_remembered_parse_still_refuses_what_is_no_quantity_with_a_value_error(bad):
    # Parses are cached (every admission request parses the same few): an unhashable value is no quantity either.
    for _ in range(2):
        with pytest.raises(ValueError, match="not a Kubernetes quantity"):
            parse_quantity(bad)


def test_a_remembered_parse_keeps_types_apart():
    assert str(parse_quantity(2)) == "2" and str(parse_quantity(2.0)) == "2.0"
    assert parse_quantity("100m") is parse_quantity("100m")  # the cache answers the second time
