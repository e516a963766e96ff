"""Forms for buying credit, the account's billing settings, exports and staff credits.

Amounts are typed in dollars and turned into integers by ``billing.money`` only.
"""

import uuid
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from django import forms
from django.conf import settings
from django.db.models import Case, F, Value, When

from . import money
from .models import CreditAccount

#: The largest dollar amount the settings take: far above any real need, and its
#: cents still fit the ``PositiveIntegerField`` columns of ``CreditAccount``.
SETTINGS_MAX_DOLLARS = Decimal("1000000")


def _micros(dollars: Decimal) -> int:
    return money.dollars_to_micros(dollars)


def _cents(dollars: Decimal) -> int:
    return money.micros_to_cents(_micros(dollars))


def _usd(cents: int) -> str:
    return money.format_usd(money.cents_to_micros(cents))


def _dollars(micros: int) -> Decimal:
    """Micro-USD as a dollar amount with two decimals, for a form's initial value."""
    return (Decimal(money.micros_to_cents(micros)) / 100).quantize(Decimal("0.01"))


def custom_limits_text() -> str:
    low = _usd(settings.CREDIT_CUSTOM_MIN_CENTS)
    high = _usd(settings.CREDIT_CUSTOM_MAX_CENTS)
    return f"between {low} and {high}"


def _within_custom_limits(cents: int) -> bool:
    return settings.CREDIT_CUSTOM_MIN_CENTS <= cents <= settings.CREDIT_CUSTOM_MAX_CENTS


def _custom_limits_hint(field: forms.Field) -> None:
    """Let the browser check the custom-amount limits too (the server always does)."""
    field.widget.attrs.update(
        {
            "min": f"{Decimal(settings.CREDIT_CUSTOM_MIN_CENTS) / 100:.2f}",
            "max": f"{Decimal(settings.CREDIT_CUSTOM_MAX_CENTS) / 100:.2f}",
            "step": "0.01",
            "inputmode": "decimal",
        }
    )


def _dollar_field(label: str, help_text: str = "", **kwargs: Any) -> forms.DecimalField:
    return forms.DecimalField(
        label=label,
        help_text=help_text,
        min_value=Decimal(0),
        max_value=SETTINGS_MAX_DOLLARS,
        max_digits=9,
        decimal_places=2,
        **kwargs,
    )


class CreditPurchaseForm(forms.Form):
    """A credit pack (one of ``CREDIT_PACKS_CENTS``) or a custom amount in dollars."""

    pack_cents = forms.TypedChoiceField(
        label="Credit pack", coerce=int, empty_value=None, required=False
    )
    amount_dollars = _dollar_field("Custom amount (USD)", required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        packs = settings.CREDIT_PACKS_CENTS
        self.fields["pack_cents"].choices = [(c, _usd(c)) for c in packs]  # type: ignore[attr-defined]
        amount = self.fields["amount_dollars"]
        amount.help_text = f"Any amount {custom_limits_text()}."
        _custom_limits_hint(amount)

    def clean_amount_dollars(self) -> Decimal | None:
        dollars: Decimal | None = self.cleaned_data.get("amount_dollars")
        if dollars is not None and not _within_custom_limits(_cents(dollars)):
            raise forms.ValidationError(f"Enter an amount {custom_limits_text()}.")
        return dollars

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        pack = cleaned.get("pack_cents")
        dollars = cleaned.get("amount_dollars")
        if self.errors:
            return cleaned
        if pack is None and dollars is None:
            self.add_error("amount_dollars", "Choose a pack or enter an amount.")
        elif pack is not None and dollars is not None:
            raise forms.ValidationError("Choose a pack or enter an amount, not both.")
        return cleaned

    def amount_cents(self) -> int:
        """The chosen amount; only after ``is_valid()``."""
        pack: int | None = self.cleaned_data["pack_cents"]
        return pack if pack is not None else _cents(self.cleaned_data["amount_dollars"])


class BillingSettingsForm(forms.Form):
    """The low-balance alert and automatic top-up of a ``CreditAccount``."""

    low_balance_threshold_dollars = _dollar_field(
        "Low-balance alert threshold (USD)",
        "Owners and billing members get an e-mail when the available balance falls below this.",
    )
    auto_topup_enabled = forms.BooleanField(label="Top up automatically", required=False)
    auto_topup_threshold_dollars = _dollar_field(
        "Top up when the available balance falls below (USD)"
    )
    auto_topup_amount_dollars = _dollar_field("Top-up amount (USD)")
    auto_topup_daily_limit_dollars = _dollar_field(
        "Daily top-up limit (USD)",
        "Automatic top-ups in any 24 hours never add up to more than this.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        amount = self.fields["auto_topup_amount_dollars"]
        amount.help_text = f"Charged to the saved card each time; {custom_limits_text()}."
        _custom_limits_hint(amount)

    @classmethod
    def initial_for(cls, account: CreditAccount | None) -> dict[str, Any]:
        """The form's initial values from the account (the model's defaults if none yet)."""
        source = account or CreditAccount()
        return {
            "low_balance_threshold_dollars": _dollars(source.low_balance_threshold_micros),
            "auto_topup_enabled": source.auto_topup_enabled,
            "auto_topup_threshold_dollars": _dollars(source.auto_topup_threshold_micros),
            "auto_topup_amount_dollars": _dollars(
                money.cents_to_micros(source.auto_topup_amount_cents)
            ),
            "auto_topup_daily_limit_dollars": _dollars(
                money.cents_to_micros(source.auto_topup_daily_limit_cents)
            ),
        }

    def clean_auto_topup_amount_dollars(self) -> Decimal:
        dollars: Decimal = self.cleaned_data["auto_topup_amount_dollars"]
        if not _within_custom_limits(_cents(dollars)):
            raise forms.ValidationError(f"Enter an amount {custom_limits_text()}.")
        return dollars

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        amount = cleaned.get("auto_topup_amount_dollars")
        limit = cleaned.get("auto_topup_daily_limit_dollars")
        if amount is not None and limit is not None and limit < amount:
            self.add_error(
                "auto_topup_daily_limit_dollars",
                "The daily limit must be at least the top-up amount, or no top-up could run.",
            )
        return cleaned

    def save(self, *, tenant_id: int) -> None:
        """Write the settings to the tenant's account (which must exist).

        One UPDATE of these columns only: saving the whole row could overwrite a
        balance that a concurrent charge has just changed. The low-balance alert is
        re-armed when the new threshold is below what is available, so the next
        crossing e-mails again.
        """
        data = self.cleaned_data
        threshold = _micros(data["low_balance_threshold_dollars"])
        CreditAccount.objects.filter(tenant_id=tenant_id).update(
            low_balance_threshold_micros=threshold,
            low_balance_alerted=Case(
                When(balance_micros__gte=F("reserved_micros") + threshold, then=Value(False)),
                default=F("low_balance_alerted"),
            ),
            auto_topup_enabled=data["auto_topup_enabled"],
            auto_topup_threshold_micros=_micros(data["auto_topup_threshold_dollars"]),
            auto_topup_amount_cents=_cents(data["auto_topup_amount_dollars"]),
            auto_topup_daily_limit_cents=_cents(data["auto_topup_daily_limit_dollars"]),
        )


class DayPeriodForm(forms.Form):
    """A period of UTC days, ``end`` excluded; at most ``MAX_DAYS`` long."""

    MAX_DAYS = 366
    #: What the period is for, in the too-long error ("Export at most 366 days…").
    VERB = "Export"

    start = forms.DateField(
        label="From",
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="The first day included (UTC).",
    )
    end = forms.DateField(
        label="Until",
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="The first day not included (UTC).",
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        start: date | None = cleaned.get("start")
        end: date | None = cleaned.get("end")
        if start is not None and end is not None:
            if end <= start:
                self.add_error("end", "Choose a day after the first day.")
            elif end - start > timedelta(days=self.MAX_DAYS):
                self.add_error("end", f"{self.VERB} at most {self.MAX_DAYS} days at a time.")
        return cleaned


class LedgerExportForm(DayPeriodForm):
    """The period of a ledger CSV export."""


class StaffCreditForm(forms.Form):
    """A staff grant or adjustment: a dollar amount and why.

    ``token`` is made when the form is shown and becomes the ledger source, so the
    same form submitted twice books once.
    """

    amount_dollars = forms.DecimalField(
        label="Amount (USD)",
        max_digits=12,
        decimal_places=6,
        help_text="Up to six decimals. Adjustments may be negative.",
    )
    reason = forms.CharField(
        label="Reason",
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Stored with the ledger entry and the audit event.",
    )
    token = forms.UUIDField(widget=forms.HiddenInput)

    def __init__(self, *args: Any, positive_only: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.positive_only = positive_only
        if positive_only:
            self.fields["amount_dollars"].help_text = "A positive amount, up to six decimals."

    def clean_amount_dollars(self) -> Decimal:
        dollars: Decimal = self.cleaned_data["amount_dollars"]
        if dollars == 0:
            raise forms.ValidationError("Enter an amount other than zero.")
        if self.positive_only and dollars < 0:
            raise forms.ValidationError("A grant must be positive; use an adjustment to remove.")
        return dollars

    def clean_reason(self) -> str:
        reason: str = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("Say why.")
        return reason

    def amount_micros(self) -> int:
        """The amount in micro-USD; only after ``is_valid()``."""
        return _micros(self.cleaned_data["amount_dollars"])


class StaffRefundForm(forms.Form):
    """A staff refund: the amount (empty: the whole purchase) and why."""

    amount = forms.DecimalField(
        label="Amount (USD)",
        required=False,
        min_value=Decimal("0.01"),
        max_digits=10,
        decimal_places=2,
        help_text="Leave empty to refund each selected purchase in full.",
    )
    reason = forms.CharField(
        label="Reason", max_length=500, widget=forms.Textarea(attrs={"rows": 3})
    )
    token = forms.CharField(widget=forms.HiddenInput, initial=lambda: uuid.uuid4().hex)

    def clean(self) -> dict[str, object]:
        data = super().clean() or {}
        amount = data.get("amount")
        data["amount_cents"] = int(amount * 100) if amount is not None else None
        return data
