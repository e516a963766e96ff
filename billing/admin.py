"""Staff admin for credit: accounts, the ledger, reservations and the metering outbox.

Money columns are never edited here. The only way staff move credit is the
"Grant credit" and "Adjust credit" actions, which go through
``marketplace.services.credit_staff_book`` (the operator console's adjustments too):
the ledger entry and its audit event in one transaction, once per form.
The ledger, reservations and usage records are read-only: they are history.
"""

import uuid
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from marketplace import services
from marketplace.models import User

from . import money, payments, stripe_gateway
from .forms import StaffCreditForm, StaffRefundForm
from .models import CreditAccount, Invoice, LedgerEntry, Purchase, Reservation, UsageRecord


def _usd(micros: int | None) -> str:
    return "—" if micros is None else money.format_usd(micros, places=6)


class ReadOnlyAdmin(admin.ModelAdmin[Any]):
    """History: staff may look, never add, change or delete."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


_ACCOUNT_SETTINGS = (
    "low_balance_threshold_micros",
    "auto_topup_enabled",
    "auto_topup_threshold_micros",
    "auto_topup_amount_cents",
    "auto_topup_daily_limit_cents",
)


@admin.register(CreditAccount)
class CreditAccountAdmin(admin.ModelAdmin[CreditAccount]):
    list_display = ("tenant", "balance", "reserved", "available", "auto_topup_enabled")
    list_select_related = ("tenant",)
    search_fields = ("tenant__name", "=tenant__slug", "=stripe_customer_id")
    list_filter = ("auto_topup_enabled",)
    ordering = ("tenant__name",)
    fields = (
        "tenant",
        "balance",
        "reserved",
        "available",
        *_ACCOUNT_SETTINGS,
        "low_balance_alerted",
        "stripe_customer_id",
        "stripe_subscription_id",
        "stripe_payment_method_id",
        "created_at",
    )
    readonly_fields = (
        "tenant",
        "balance",
        "reserved",
        "available",
        "low_balance_alerted",
        "stripe_customer_id",
        "stripe_subscription_id",
        "stripe_payment_method_id",
        "created_at",
    )
    actions = ("grant_credit", "adjust_credit")

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Accounts are opened with their tenant.
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="balance", ordering="balance_micros")
    def balance(self, account: CreditAccount) -> str:
        return _usd(account.balance_micros)

    @admin.display(description="reserved", ordering="reserved_micros")
    def reserved(self, account: CreditAccount) -> str:
        return _usd(account.reserved_micros)

    @admin.display(description="available")
    def available(self, account: CreditAccount) -> str:
        return _usd(account.available_micros)

    def save_model(
        self, request: HttpRequest, obj: CreditAccount, form: ModelForm[CreditAccount], change: bool
    ) -> None:
        # Only the settings columns: saving the whole row would write back a balance
        # read before a concurrent charge, and lose that charge.
        changed = [name for name in form.changed_data if name in _ACCOUNT_SETTINGS]
        if changed:
            obj.save(update_fields=changed)
            services.audit_record(
                action="billing.settings_changed",
                actor=request.user,  # type: ignore[arg-type]
                target=obj.tenant,
                tenant=obj.tenant,
                metadata={
                    "changes": services.audit_changes(
                        fields=changed, before=form.initial, after=form.cleaned_data
                    )
                },
            )

    @admin.action(description="Grant credit to selected accounts (asks for amount and reason)")
    def grant_credit(
        self, request: HttpRequest, queryset: QuerySet[CreditAccount]
    ) -> HttpResponse | None:
        return _credit_action(self, request, queryset, kind=LedgerEntry.Kind.GRANT)

    @admin.action(description="Adjust credit of selected accounts (asks for amount and reason)")
    def adjust_credit(
        self, request: HttpRequest, queryset: QuerySet[CreditAccount]
    ) -> HttpResponse | None:
        return _credit_action(self, request, queryset, kind=LedgerEntry.Kind.ADJUSTMENT)


_ACTIONS = {
    LedgerEntry.Kind.GRANT: ("grant_credit", "Grant credit"),
    LedgerEntry.Kind.ADJUSTMENT: ("adjust_credit", "Adjust credit"),
}


def _credit_action(
    modeladmin: CreditAccountAdmin,
    request: HttpRequest,
    queryset: QuerySet[CreditAccount],
    *,
    kind: LedgerEntry.Kind,
) -> HttpResponse | None:
    """Ask for an amount and a reason, then book one entry per account and audit it.

    The form carries a token made when it was shown; it is the entries' source, so
    submitting the same form twice (a double click, a reload) books nothing more.
    """
    action_name, title = _ACTIONS[kind]
    accounts = list(queryset.select_related("tenant"))
    positive_only = kind == LedgerEntry.Kind.GRANT
    if "apply" in request.POST:
        form = StaffCreditForm(request.POST, positive_only=positive_only)
        if form.is_valid():
            booked = _credit_book(
                accounts,
                kind=kind,
                amount_micros=form.amount_micros(),
                reason=form.cleaned_data["reason"],
                token=form.cleaned_data["token"],
                actor=request.user,  # type: ignore[arg-type]
            )
            amount = _usd(form.amount_micros())
            modeladmin.message_user(
                request,
                f"{title}: {amount} booked on {booked} of {len(accounts)} account(s) "
                "(a form submitted twice books once).",
                messages.SUCCESS,
            )
            return None
    else:
        form = StaffCreditForm(initial={"token": uuid.uuid4()}, positive_only=positive_only)
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": title,
        "accounts": accounts,
        "form": form,
        "action_name": action_name,
        "opts": modeladmin.model._meta,
        "action_checkbox_name": ACTION_CHECKBOX_NAME,
    }
    return TemplateResponse(request, "admin/billing/creditaccount/credit_action.html", context)


def _credit_book(
    accounts: list[CreditAccount],
    *,
    kind: LedgerEntry.Kind,
    amount_micros: int,
    reason: str,
    token: uuid.UUID,
    actor: User,
) -> int:
    """Book the entry and its audit event on each account, each pair atomically."""
    return sum(
        services.credit_staff_book(
            tenant=account.tenant,
            actor=actor,
            kind=kind,
            amount_micros=amount_micros,
            reason=reason,
            token=token,
        )[1]
        for account in accounts
    )


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "tenant", "kind", "amount", "model_slug", "source", "created_by")
    list_filter = ("kind",)
    search_fields = ("source", "tenant__name", "=tenant__slug")
    list_select_related = ("tenant", "created_by")
    # Newest first by primary key: an index every table has, whatever its size.
    ordering = ("-id",)
    show_full_result_count = False

    @admin.display(description="amount", ordering="amount_micros")
    def amount(self, entry: LedgerEntry) -> str:
        return _usd(entry.amount_micros)


@admin.register(Reservation)
class ReservationAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "tenant", "source", "amount", "status", "expires_at")
    list_filter = ("status",)
    search_fields = ("source", "tenant__name", "=tenant__slug")
    list_select_related = ("tenant",)
    ordering = ("-id",)
    show_full_result_count = False

    @admin.display(description="amount", ordering="amount_micros")
    def amount(self, reservation: Reservation) -> str:
        return _usd(reservation.amount_micros)


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "tenant", "model_slug", "units", "cost", "sent_at", "attempts")
    search_fields = ("model_slug", "tenant__name", "=tenant__slug")
    list_select_related = ("tenant",)
    ordering = ("-id",)
    show_full_result_count = False

    @admin.display(description="cost", ordering="cost_micros")
    def cost(self, record: UsageRecord) -> str:
        return _usd(record.cost_micros)


@admin.register(Purchase)
class PurchaseAdmin(ReadOnlyAdmin):
    """Purchases; staff refund a paid one here (the ledger entry follows Stripe's webhook)."""

    list_display = ("created_at", "tenant", "kind", "amount", "status", "stripe_payment_intent_id")
    list_filter = ("status", "kind")
    search_fields = ("tenant__name", "=stripe_checkout_session_id", "=stripe_payment_intent_id")
    list_select_related = ("tenant",)
    actions = ("refund",)

    @admin.display(description="amount", ordering="amount_cents")
    def amount(self, obj: Purchase) -> str:
        return money.format_usd(money.cents_to_micros(obj.amount_cents))

    @admin.action(description="Refund selected purchases (asks for amount and reason)")
    def refund(self, request: HttpRequest, queryset: QuerySet[Purchase]) -> HttpResponse | None:
        form = StaffRefundForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            for purchase in queryset.select_related("tenant"):
                cents = form.cleaned_data["amount_cents"] or purchase.amount_cents
                try:
                    refund_id = payments.refund_purchase(
                        purchase=purchase, amount_cents=cents, key=form.cleaned_data["token"]
                    )
                except (payments.AmountInvalid, stripe_gateway.GatewayError) as exc:
                    self.message_user(request, f"Purchase {purchase.pk}: {exc}", messages.ERROR)
                    continue
                services.audit_record(
                    action="credit.refunded",
                    actor=request.user,  # type: ignore[arg-type]
                    target=purchase,
                    tenant=purchase.tenant,
                    reason=form.cleaned_data["reason"],
                    metadata={"amount_cents": cents, "stripe_refund": refund_id},
                )
                self.message_user(
                    request,
                    f"Purchase {purchase.pk}: refund {refund_id} requested.",
                    messages.SUCCESS,
                )
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Refund purchases",
            "objects": queryset,
            "form": form,
            "action_name": "refund",
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/billing/purchase/refund.html", context)


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdmin):
    list_display = ("number", "tenant", "status", "period_start", "period_end", "total_cents")
    list_filter = ("status",)
    search_fields = ("number", "tenant__name", "=stripe_invoice_id")
    list_select_related = ("tenant",)
