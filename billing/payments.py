"""Buying credit: Checkout, the webhook that fulfils it, refunds, automatic top-ups.

Fulfilment is keyed on our Purchase row: the purchase ledger entry's source is
``purchase:<id>``, unique per account and kind, so however many times Stripe
delivers ``checkout.session.completed`` (or ``async_payment_succeeded``, in any
order), the credit is booked once. Network calls to Stripe happen outside
database transactions; the webhook only writes rows and enqueues follow-ups.
"""

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import django.dispatch
from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from marketplace.services import audit_record

from . import ledger, money, stripe_gateway
from .models import CreditAccount, GrantMirror, Invoice, LedgerEntry, Purchase, StripeEvent

logger = logging.getLogger(__name__)

# Sent after commit when an automatic top-up is declined and switched off.
auto_topup_disabled = django.dispatch.Signal()  # kwargs: tenant_id, message


class AmountInvalid(ValueError):
    pass


def amount_check(amount_cents: int) -> None:
    if amount_cents in settings.CREDIT_PACKS_CENTS:
        return
    low, high = settings.CREDIT_CUSTOM_MIN_CENTS, settings.CREDIT_CUSTOM_MAX_CENTS
    if not low <= amount_cents <= high:
        raise AmountInvalid(
            f"Choose an amount between {money.format_usd(money.cents_to_micros(low))} and "
            f"{money.format_usd(money.cents_to_micros(high))}."
        )


def customer_ensure(*, tenant_id: int, tenant_name: str, email: str) -> CreditAccount:
    """The account with its Stripe customer, created once (idempotent by account id)."""
    account = ledger.account_open(tenant_id=tenant_id)
    if not account.stripe_customer_id:
        customer_id = stripe_gateway.customer_create(
            account_id=account.pk, name=tenant_name, email=email, tenant_id=tenant_id
        )
        CreditAccount.objects.filter(pk=account.pk, stripe_customer_id="").update(
            stripe_customer_id=customer_id
        )
        account.refresh_from_db()
    return account


def checkout_start(
    *,
    tenant_id: int,
    tenant_name: str,
    email: str,
    amount_cents: int,
    success_url: str,
    cancel_url: str,
) -> str:
    """Create a Purchase and its Checkout Session; return the URL to send the buyer to."""
    amount_check(amount_cents)
    account = customer_ensure(tenant_id=tenant_id, tenant_name=tenant_name, email=email)
    purchase = Purchase.objects.create(
        account=account, tenant_id=tenant_id, amount_cents=amount_cents
    )
    checkout = stripe_gateway.checkout_session_create(
        purchase_id=purchase.pk,
        customer_id=account.stripe_customer_id,
        amount_cents=amount_cents,
        success_url=success_url,
        cancel_url=cancel_url,
    )
    Purchase.objects.filter(pk=purchase.pk).update(stripe_checkout_session_id=checkout.session_id)
    return checkout.url


def _purchase_fulfil(purchase: Purchase, *, payment_intent_id: str) -> bool:
    """Book the purchase's credit once; True if this call booked it."""
    with transaction.atomic():
        _, created = ledger.entry_book(
            tenant_id=purchase.tenant_id,
            kind=LedgerEntry.Kind.PURCHASE,
            source=purchase.ledger_source,
            amount_micros=money.cents_to_micros(purchase.amount_cents),
        )
        Purchase.objects.filter(pk=purchase.pk).exclude(status=Purchase.Status.PAID).update(
            status=Purchase.Status.PAID,
            paid_at=timezone.now(),
            stripe_payment_intent_id=payment_intent_id,
        )
        if created:
            transaction.on_commit(lambda: _after_purchase(purchase.pk))
    return created


def _after_purchase(purchase_id: int) -> None:
    from .tasks import purchase_mirror  # tasks import this module

    purchase_mirror.delay(purchase_id)


def purchase_mirror(*, purchase_id: int) -> None:
    """After a purchase: save the card for top-ups, mirror the credit as a credit grant."""
    purchase = Purchase.objects.select_related("account").get(pk=purchase_id)
    account = purchase.account
    if not account.stripe_payment_method_id and account.stripe_customer_id:
        method = stripe_gateway.customer_saved_card(account.stripe_customer_id)
        if method:
            CreditAccount.objects.filter(pk=account.pk).update(stripe_payment_method_id=method)
    if not purchase.stripe_credit_grant_id and account.stripe_customer_id:
        grant_id = stripe_gateway.credit_grant_create(
            purchase_id=purchase.pk,
            customer_id=account.stripe_customer_id,
            amount_cents=purchase.amount_cents,
        )
        Purchase.objects.filter(pk=purchase.pk).update(stripe_credit_grant_id=grant_id)


def grants_mirror(*, limit: int = 100) -> dict[str, int]:
    """Send unsent free-credit mirrors as promotional credit grants; count failures.

    A tenant's mirrors wait until it has a Stripe customer (made at its first
    purchase), as its usage records do, so both reach Stripe before its first invoice.
    """
    mirrors = list(
        GrantMirror.objects.filter(stripe_credit_grant_id="")
        .exclude(account__stripe_customer_id="")
        .select_related("account")
        .order_by("attempts", "created_at")[:limit]
    )
    sent = failed = 0
    for mirror in mirrors:
        try:
            grant_id = stripe_gateway.credit_grant_promotional_create(
                mirror_id=mirror.pk,
                ledger_entry_id=mirror.ledger_entry_id,
                customer_id=mirror.account.stripe_customer_id,
                amount_cents=mirror.amount_cents,
            )
        except stripe_gateway.GatewayError as exc:
            GrantMirror.objects.filter(pk=mirror.pk).update(
                attempts=mirror.attempts + 1, last_error=str(exc)[:500]
            )
            failed += 1
            continue
        GrantMirror.objects.filter(pk=mirror.pk).update(
            stripe_credit_grant_id=grant_id, last_error=""
        )
        sent += 1
    if failed:
        logger.warning("credit grant mirrors failed", extra={"failed": failed, "sent": sent})
    return {"sent": sent, "failed": failed}


def _checkout_paid(session: dict[str, Any]) -> None:
    purchase = Purchase.objects.filter(stripe_checkout_session_id=session["id"]).first()
    if purchase is None:
        purchase_id = (session.get("metadata") or {}).get("purchase_id")
        purchase = Purchase.objects.filter(pk=purchase_id).first() if purchase_id else None
    if purchase is None:
        logger.error("checkout session %s matches no purchase", session["id"])
        return
    if session.get("amount_total") != purchase.amount_cents:
        logger.error(
            "checkout %s amount %s != purchase", session["id"], session.get("amount_total")
        )
        return
    _purchase_fulfil(purchase, payment_intent_id=str(session.get("payment_intent") or ""))


def _charge_refunded(charge: dict[str, Any]) -> None:
    purchase = Purchase.objects.filter(
        stripe_payment_intent_id=charge.get("payment_intent") or "-"
    ).first()
    if purchase is None:
        logger.warning("refund for unknown payment %s", charge.get("payment_intent"))
        return
    refunds = (charge.get("refunds") or {}).get("data") or []
    for refund in refunds:
        if refund.get("status") not in (None, "succeeded", "pending"):
            continue
        _, booked = ledger.entry_book(
            tenant_id=purchase.tenant_id,
            kind=LedgerEntry.Kind.REFUND,
            source=f"refund:{refund['id']}",
            amount_micros=-money.cents_to_micros(int(refund["amount"])),
            reason=f"Refund of purchase {purchase.pk}",
        )
        if booked:
            # Whoever asked (staff in the admin, or someone in Stripe's dashboard), the
            # credit leaves the account here: the audit log shows it once, from Stripe.
            audit_record(
                action="credit.refund_booked",
                actor=None,
                actor_label="stripe",
                target=purchase,
                tenant=purchase.tenant,
                metadata={"amount_cents": int(refund["amount"]), "stripe_refund": refund["id"]},
            )


def _stamp(value: int | None) -> datetime:
    return datetime.fromtimestamp(value or 0, tz=UTC)


def _invoice_mirror(invoice: dict[str, Any], event_created: datetime) -> None:
    customer = invoice.get("customer")
    account = CreditAccount.objects.filter(stripe_customer_id=customer).first()
    if account is None:
        logger.warning("invoice %s for unknown customer %s", invoice.get("id"), customer)
        return
    credits = sum(
        int(item.get("amount", 0)) for item in invoice.get("total_pretax_credit_amounts") or []
    )
    values = {
        "tenant_id": account.tenant_id,
        "number": invoice.get("number") or "",
        "status": invoice.get("status") or "",
        "period_start": _stamp(invoice.get("period_start")),
        "period_end": _stamp(invoice.get("period_end")),
        "subtotal_cents": int(invoice.get("subtotal") or 0),
        "credit_cents": credits,
        "total_cents": int(invoice.get("total") or 0),
        "amount_due_cents": int(invoice.get("amount_due") or 0),
        "hosted_invoice_url": invoice.get("hosted_invoice_url") or "",
        "invoice_pdf_url": invoice.get("invoice_pdf") or "",
        "lines": [
            {
                "description": line.get("description"),
                "amount_cents": line.get("amount"),
                "quantity": line.get("quantity"),
                "price": ((line.get("pricing") or {}).get("price_details") or {}).get("price")
                or (line.get("price") or {}).get("id"),
            }
            for line in (invoice.get("lines") or {}).get("data") or []
        ],
        "stripe_event_created": event_created,
    }
    with transaction.atomic():
        existing = (
            Invoice.objects.select_for_update().filter(stripe_invoice_id=invoice["id"]).first()
        )
        if existing is None:
            Invoice.objects.create(stripe_invoice_id=invoice["id"], **values)
        elif existing.stripe_event_created <= event_created:
            # Events can arrive out of order: an older one never overwrites a newer state.
            Invoice.objects.filter(pk=existing.pk).update(**values)


def event_handle(event: dict[str, Any]) -> str:
    """Apply one verified Stripe event at most once. Returns what was done."""
    created = _stamp(event.get("created"))
    with transaction.atomic():
        record, new = StripeEvent.objects.get_or_create(
            event_id=event["id"], defaults={"type": event["type"], "created": created}
        )
        if not new and record.processed:
            return "duplicate"
        obj = event["data"]["object"]
        kind = event["type"]
        if (
            kind == "checkout.session.completed" and obj.get("payment_status") == "paid"
        ) or kind == "checkout.session.async_payment_succeeded":
            _checkout_paid(obj)
            outcome = "fulfilled"
        elif kind == "checkout.session.completed":
            outcome = "awaiting_payment"
        elif kind in ("checkout.session.expired", "checkout.session.async_payment_failed"):
            Purchase.objects.filter(
                stripe_checkout_session_id=obj["id"], status=Purchase.Status.PENDING
            ).update(status=Purchase.Status.CANCELED)
            outcome = "canceled"
        elif kind == "charge.refunded":
            _charge_refunded(obj)
            outcome = "refunded"
        elif kind.startswith("invoice."):
            _invoice_mirror(obj, created)
            outcome = "invoice"
        else:
            outcome = "ignored"
        StripeEvent.objects.filter(pk=record.pk).update(processed=True)
    return outcome


def refund_purchase(*, purchase: Purchase, amount_cents: int, key: str) -> str:
    """Ask Stripe to refund (part of) a purchase; the ledger entry follows its webhook."""
    if purchase.status != Purchase.Status.PAID or not purchase.stripe_payment_intent_id:
        raise AmountInvalid("Only a paid purchase can be refunded.")
    if not 0 < amount_cents <= purchase.amount_cents:
        # Stripe refuses refunds beyond what is left of the payment.
        raise AmountInvalid("The refund must be between one cent and the purchase amount.")
    return stripe_gateway.refund_create(
        purchase_id=purchase.pk,
        payment_intent_id=purchase.stripe_payment_intent_id,
        amount_cents=amount_cents,
        key=key,
    )


def auto_topups_run() -> dict[str, int]:
    """Top up every account with automatic top-up on that fell below its threshold."""
    outcomes: dict[str, int] = {}
    for account_id in (
        CreditAccount.objects.filter(auto_topup_enabled=True)
        .exclude(stripe_payment_method_id="")
        .values_list("pk", flat=True)
    ):
        outcome = auto_topup(account_id=account_id)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes


def auto_topup(*, account_id: int) -> str:
    """Top the account up from its saved card if it is below its threshold.

    At most ``auto_topup_daily_limit_cents`` a day; a decline switches automatic
    top-up off and tells the tenant.
    """
    account = CreditAccount.objects.get(pk=account_id)
    if not account.auto_topup_enabled or not account.stripe_payment_method_id:
        return "off"
    if account.available_micros >= account.auto_topup_threshold_micros:
        return "not_needed"
    since = timezone.now() - timedelta(days=1)
    spent_today = (
        Purchase.objects.filter(
            account=account,
            kind=Purchase.Kind.AUTO_TOPUP,
            created_at__gte=since,
        )
        .exclude(status=Purchase.Status.FAILED)
        .aggregate(total=Sum("amount_cents"))["total"]
        or 0
    )
    if spent_today + account.auto_topup_amount_cents > account.auto_topup_daily_limit_cents:
        return "daily_limit"
    purchase = Purchase.objects.create(
        account=account,
        tenant_id=account.tenant_id,
        kind=Purchase.Kind.AUTO_TOPUP,
        amount_cents=account.auto_topup_amount_cents,
    )
    try:
        intent = stripe_gateway.payment_intent_off_session(
            purchase_id=purchase.pk,
            customer_id=account.stripe_customer_id,
            payment_method_id=account.stripe_payment_method_id,
            amount_cents=purchase.amount_cents,
        )
    except stripe_gateway.CardDeclined as exc:
        message = str(exc)
        with transaction.atomic():
            Purchase.objects.filter(pk=purchase.pk).update(
                status=Purchase.Status.FAILED, failure_message=message[:500]
            )
            CreditAccount.objects.filter(pk=account.pk).update(auto_topup_enabled=False)
            transaction.on_commit(
                lambda: auto_topup_disabled.send(
                    sender=CreditAccount, tenant_id=account.tenant_id, message=message
                )
            )
        return "declined"
    _purchase_fulfil(purchase, payment_intent_id=intent)
    return "charged"
