"""Costs are integer micro-USD, rounded up, and bounded before a call runs."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from marketplace import pricing
from marketplace.exceptions import CostUnbounded
from marketplace.models import CatalogModel

Unit = CatalogModel.PricingUnit


def _model(unit: str, price: int, **kwargs) -> CatalogModel:
    return CatalogModel(slug="m", name="m", pricing_unit=unit, price_micros=price, **kwargs)


def test_costs_per_unit_round_half_up():
    assert pricing.cost_micros(_model(Unit.REQUEST, 10), 1) == 10
    assert pricing.cost_micros(_model(Unit.THOUSAND_TOKENS, 20_000), 7) == 140
    assert pricing.cost_micros(_model(Unit.THOUSAND_TOKENS, 20_000), 1) == 20
    assert pricing.cost_micros(_model(Unit.THOUSAND_INPUT_ELEMENTS, 3), 1) == 0  # 0.003 µ$
    assert pricing.cost_micros(_model(Unit.THOUSAND_INPUT_ELEMENTS, 500), 1) == 1  # 0.5 µ$
    assert pricing.cost_micros(_model(Unit.GPU_SECOND, 100_000), 1_500_000) == 150_000


@given(
    unit=st.sampled_from(list(Unit)),
    price=st.integers(min_value=0, max_value=10**9),
    units=st.integers(min_value=0, max_value=10**9),
)
def test_cost_is_the_nearest_micro_and_monotonic(unit, price, units):
    divisor = {Unit.REQUEST: 1, Unit.GPU_SECOND: 10**6}.get(unit, 1000)
    cost = pricing.cost_micros(_model(unit, price), units)
    assert abs(cost * divisor - units * price) * 2 <= divisor
    assert pricing.cost_micros(_model(unit, price), units + 1) >= cost


def test_bounds():
    tokens = _model(Unit.THOUSAND_TOKENS, 1, usage_output="tokens", max_units_per_item=256)
    assert pricing.max_units(tokens, batch_size=4, input_elements=4, timeout_seconds=30) == 1024
    gpu = _model(Unit.GPU_SECOND, 1)
    assert pricing.max_units(gpu, batch_size=1, input_elements=1, timeout_seconds=2) == 2_000_000
    with pytest.raises(CostUnbounded):
        pricing.max_units(
            _model(Unit.THOUSAND_TOKENS, 1), batch_size=1, input_elements=1, timeout_seconds=1
        )
