"""What a call costs: billable units × the model's price, and its worst case.

The seam for billing: both inference paths compute ``max_cost`` before dispatch
(what a reservation must cover) and ``cost`` after (what is charged). Costs are
integer micro-USD, rounded half up (``billing.money``'s one rule); the bound uses the
same rounding on more units, so it is never below the charge.
"""

from dataclasses import dataclass

from billing import money

from .exceptions import CostUnbounded
from .models import CatalogModel

Unit = CatalogModel.PricingUnit

# Units are counted in these amounts per priced unit: tokens and input elements per
# thousand, GPU time in microseconds per second.
_UNITS_PER_PRICED_UNIT = {
    Unit.REQUEST: 1,
    Unit.THOUSAND_TOKENS: 1000,
    Unit.THOUSAND_INPUT_ELEMENTS: 1000,
    Unit.GPU_SECOND: 1_000_000,
}


@dataclass(frozen=True, slots=True)
class Usage:
    units: int
    cost_micros: int


def cost_micros(model: CatalogModel, units: int) -> int:
    divisor = _UNITS_PER_PRICED_UNIT[Unit(model.pricing_unit)]
    return money.div_round(units * model.price_micros, divisor)


def usage(model: CatalogModel, units: int) -> Usage:
    return Usage(units=units, cost_micros=cost_micros(model, units))


def max_units(
    model: CatalogModel, *, batch_size: int, input_elements: int, timeout_seconds: float
) -> int:
    """The most units a request can bill, known before it runs."""
    unit = Unit(model.pricing_unit)
    if unit == Unit.REQUEST:
        return 1
    if unit == Unit.THOUSAND_INPUT_ELEMENTS:
        return input_elements
    if unit == Unit.THOUSAND_TOKENS:
        if not model.max_units_per_item or not model.usage_output:
            raise CostUnbounded(
                f"{model.slug} cannot be priced in advance, so it is not run.", field="model"
            )
        return batch_size * model.max_units_per_item
    return int(timeout_seconds * 1_000_000)


def units_known_before(model: CatalogModel) -> bool:
    """Whether the request alone fixes the units (no need to read the answer)."""
    return model.pricing_unit in (Unit.REQUEST, Unit.THOUSAND_INPUT_ELEMENTS)
