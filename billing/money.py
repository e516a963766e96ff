"""Money: integer micro-USD inside, integer cents at Stripe. No floats.

The rounding rule, the only one in the project: whenever an amount must lose
precision — a call's cost that falls between two micro-dollars, or micro-dollars
turned into cents — it is rounded **half up** (to the nearer unit; exact halves
away from zero). Costs stay exact across the ledger because they are summed in
micros and rounded to cents once, per invoice line.
"""

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

MICROS_PER_CENT = 10_000
MICROS_PER_DOLLAR = 1_000_000


def div_round(numerator: int, denominator: int) -> int:
    """``numerator / denominator`` rounded half up, in integers only."""
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    quotient, remainder = divmod(abs(numerator), denominator)
    if 2 * remainder >= denominator:
        quotient += 1
    return quotient if numerator >= 0 else -quotient


def cents_to_micros(cents: int) -> int:
    return cents * MICROS_PER_CENT


def micros_to_cents(micros: int) -> int:
    return div_round(micros, MICROS_PER_CENT)


def dollars_to_micros(text: str | Decimal) -> int:
    """Parse a dollar amount (``"12.50"``) exactly; more than 6 decimals is an error."""
    try:
        amount = Decimal(text)
    except (InvalidOperation, TypeError) as exc:
        raise ValueError(f"not an amount: {text!r}") from exc
    if not amount.is_finite():
        raise ValueError(f"not an amount: {text!r}")
    micros = amount * MICROS_PER_DOLLAR
    if micros != micros.to_integral_value():
        raise ValueError("amounts have at most 6 decimal places")
    return int(micros)


def format_usd(micros: int, *, places: int = 2) -> str:
    """``$1,234.57`` — for people; ``places`` up to 6 shows fractions of a cent."""
    if not 0 <= places <= 6:
        raise ValueError("places must be 0..6")
    unit = 10 ** (6 - places)
    rounded = div_round(micros, unit)
    sign = "-" if rounded < 0 else ""
    whole, fraction = divmod(abs(rounded), 10**places)
    text = f"{sign}${whole:,}"
    return f"{text}.{fraction:0{places}d}" if places else text


def cents_decimal_per_unit(price_micros: int) -> str:
    """A micro-dollar price as Stripe's ``unit_amount_decimal`` (cents, up to 12 places)."""
    value = (Decimal(price_micros) / MICROS_PER_CENT).quantize(
        Decimal("0.000000000001"), rounding=ROUND_HALF_UP
    )
    return format(value.normalize(), "f")
