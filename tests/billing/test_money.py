"""The money module: integer arithmetic and its one rounding rule (half up)."""

from decimal import ROUND_HALF_UP, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing import money


@given(
    st.integers(min_value=-(10**15), max_value=10**15), st.integers(min_value=1, max_value=10**9)
)
def test_div_round_matches_decimal_half_up(numerator, denominator):
    expected = (Decimal(numerator) / Decimal(denominator)).quantize(
        Decimal(1), rounding=ROUND_HALF_UP
    )
    assert money.div_round(numerator, denominator) == int(expected)


def test_half_cents_round_up():
    assert money.micros_to_cents(4_999) == 0
    assert money.micros_to_cents(5_000) == 1
    assert money.micros_to_cents(15_000) == 2
    assert money.micros_to_cents(-5_000) == -1


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_cents_round_trip_exactly(cents):
    assert money.micros_to_cents(money.cents_to_micros(cents)) == cents


@given(st.lists(st.integers(min_value=0, max_value=10**9), max_size=50))
def test_summing_then_rounding_is_within_half_a_cent(amounts):
    total_cents = money.micros_to_cents(sum(amounts))
    assert abs(total_cents * money.MICROS_PER_CENT - sum(amounts)) <= money.MICROS_PER_CENT // 2


def test_dollars_parse_exactly_and_refuse_sub_micro_amounts():
    assert money.dollars_to_micros("12.50") == 12_500_000
    assert money.dollars_to_micros("0.000001") == 1
    for bad in ("0.0000001", "NaN", "Infinity", "abc", ""):
        with pytest.raises(ValueError, match="amount"):
            money.dollars_to_micros(bad)


def test_format():
    assert money.format_usd(1_234_567_890) == "$1,234.57"
    assert money.format_usd(-5_000) == "-$0.01"
    assert money.format_usd(12_345, places=6) == "$0.012345"
    assert money.format_usd(0) == "$0.00"


def test_stripe_unit_amount_decimal():
    assert money.cents_decimal_per_unit(1) == "0.0001"
    assert money.cents_decimal_per_unit(20_000) == "2"
    assert money.cents_decimal_per_unit(12_345) == "1.2345"
