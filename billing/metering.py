"""Usage into Stripe invoices: meters and prices per model, a subscription per tenant,
the meter-event outbox sender, and the reconciliation of ledger against Stripe.

Each charged call wrote a ``UsageRecord`` in the same statement as its ledger entry.
``usage_send`` (beat, every few seconds) sends unsent records as meter events whose
``identifier`` is the record's id and whose value is the charge in micro-dollars;
the metered price is 0.0001 cent per unit, so an invoice line is exactly the
ledger's usage for that model, rounded to the cent once.
"""

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import close_old_connections, connection
from django.db.models import Sum
from django.utils import timezone

from . import money, stripe_gateway
from .models import BillingMeter, CreditAccount, LedgerEntry, SubscriptionItem, UsageRecord

logger = logging.getLogger(__name__)

SEND_THREADS = 4


def meter_ensure(model_slug: str) -> BillingMeter:
    """The model's meter and metered price, created in Stripe on first use."""
    meter, _ = BillingMeter.objects.get_or_create(
        model_slug=model_slug, defaults={"event_name": f"cango_usage_{model_slug}"}
    )
    if not meter.stripe_meter_id:
        meter.stripe_meter_id = stripe_gateway.meter_create(
            meter_row_id=meter.pk, event_name=meter.event_name, display_name=f"Usage: {model_slug}"
        )
        meter.save(update_fields=["stripe_meter_id"])
    if not meter.stripe_price_id:
        meter.stripe_price_id = stripe_gateway.metered_price_create(
            meter_row_id=meter.pk, meter_id=meter.stripe_meter_id, model_slug=model_slug
        )
        meter.save(update_fields=["stripe_price_id"])
    return meter


def subscription_item_ensure(account: CreditAccount, meter: BillingMeter) -> None:
    """The tenant's subscription, created when first needed, carries this meter's price."""
    if SubscriptionItem.objects.filter(account=account, meter=meter).exists():
        return
    if not account.stripe_customer_id:
        raise stripe_gateway.GatewayError(f"account {account.pk} has no Stripe customer yet")
    if not account.stripe_subscription_id:
        subscription_id, item_id = stripe_gateway.subscription_create(
            account_id=account.pk,
            customer_id=account.stripe_customer_id,
            price_id=meter.stripe_price_id,
        )
        CreditAccount.objects.filter(pk=account.pk).update(stripe_subscription_id=subscription_id)
        account.stripe_subscription_id = subscription_id
    else:
        item_id = stripe_gateway.subscription_item_add(
            account_id=account.pk,
            meter_row_id=meter.pk,
            subscription_id=account.stripe_subscription_id,
            price_id=meter.stripe_price_id,
        )
    SubscriptionItem.objects.get_or_create(
        account=account, meter=meter, defaults={"stripe_subscription_item_id": item_id}
    )


def _event(record: UsageRecord, meter: BillingMeter, customer_id: str) -> stripe_gateway.MeterEvent:
    return stripe_gateway.MeterEvent(
        identifier=f"usage_{record.pk}",
        event_name=meter.event_name,
        customer_id=customer_id,
        value=record.cost_micros,
        timestamp=record.created_at,
    )


def _send_batch(
    batch: list[tuple[UsageRecord, stripe_gateway.MeterEvent]],
) -> list[tuple[int, str]]:
    """Send one batch on the stream; if Stripe refuses it whole, send its events one by
    one so a single bad record cannot hold back the others. Returns (record id, error)."""
    try:
        stripe_gateway.meter_events_stream([event for _, event in batch])
    except stripe_gateway.GatewayError:
        logger.warning("meter event batch refused; sending its %s events one by one", len(batch))
    else:
        return [(record.pk, "") for record, _ in batch]
    results = []
    for record, event in batch:
        try:
            stripe_gateway.meter_event_send(
                identifier=event.identifier,
                event_name=event.event_name,
                customer_id=event.customer_id,
                value=event.value,
                timestamp=event.timestamp,
            )
            results.append((record.pk, ""))
        except stripe_gateway.GatewayError as exc:
            results.append((record.pk, str(exc)[:500] or "error"))
    return results


#: Key of the PostgreSQL advisory lock that lets one ``usage_send`` run at a time.
SEND_LOCK_KEY = 0x43414E474F0001


@contextmanager
def _sole_sender() -> Iterator[bool]:
    """Whether this run may send: no other run, in any process, is sending.

    Overlapping runs (beat's and a manual one, or two workers) picked the same
    records; Stripe took each event once and refused the other copy, which was then
    counted as a failure and retried for nothing. On SQLite (the demo) there is one
    worker, and no lock.
    """
    if connection.vendor != "postgresql":
        yield True
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [SEND_LOCK_KEY])
        (sole,) = cursor.fetchone()
    try:
        yield bool(sole)
    finally:
        if sole:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [SEND_LOCK_KEY])


def usage_send(*, limit: int | None = None) -> dict[str, int]:
    """Send unsent usage records as meter events, in batches on the v2 meter event
    stream; mark each sent, or count its failure for a later run. Sends nothing while
    another run is sending (``busy``)."""
    with _sole_sender() as sole:
        result = _usage_send(limit) if sole else {"sent": 0, "failed": 0, "busy": 1}
    close_old_connections()
    return result


def _usage_send(limit: int | None) -> dict[str, int]:
    # Only tenants with a Stripe customer are invoiced (one is made at their first
    # purchase); others' records wait, without holding up anyone else's.
    records = list(
        UsageRecord.objects.filter(sent_at__isnull=True)
        .exclude(account__stripe_customer_id="")
        .select_related("account")
        # Records that keep failing go to the back, so they cannot hold up the rest.
        .order_by("attempts", "created_at")[: limit or settings.METER_EVENTS_BATCH]
    )
    if not records:
        return {"sent": 0, "failed": 0}
    meters: dict[str, BillingMeter] = {}
    ready: list[tuple[UsageRecord, stripe_gateway.MeterEvent]] = []
    attempts = {record.pk: record.attempts for record in records}
    failed: list[tuple[int, str]] = []
    for record in records:
        account = record.account
        try:
            meter = meters.get(record.model_slug) or meter_ensure(record.model_slug)
            meters[record.model_slug] = meter
            subscription_item_ensure(account, meter)
        except stripe_gateway.GatewayError as exc:
            failed.append((record.pk, str(exc)[:500]))
            continue
        ready.append((record, _event(record, meter, account.stripe_customer_id)))
    batches = [
        ready[start : start + stripe_gateway.STREAM_BATCH]
        for start in range(0, len(ready), stripe_gateway.STREAM_BATCH)
    ]
    with ThreadPoolExecutor(max_workers=SEND_THREADS) as pool:
        results = [result for batch in pool.map(_send_batch, batches) for result in batch]
    sent = [pk for pk, error in results if not error]
    failed += [(pk, error) for pk, error in results if error]
    UsageRecord.objects.filter(pk__in=sent).update(sent_at=timezone.now(), last_error="")
    for pk, error in failed:
        UsageRecord.objects.filter(pk=pk).update(attempts=attempts[pk] + 1, last_error=error)
    if failed:
        logger.warning("meter events failed", extra={"failed": len(failed), "sent": len(sent)})
    return {"sent": len(sent), "failed": len(failed)}


@dataclass(frozen=True, slots=True)
class Difference:
    tenant_id: int
    model_slug: str
    ledger_micros: int
    stripe_micros: int

    def __str__(self) -> str:
        return (
            f"tenant {self.tenant_id} model {self.model_slug}: ledger "
            f"{money.format_usd(self.ledger_micros, places=6)} vs Stripe "
            f"{money.format_usd(self.stripe_micros, places=6)} "
            f"(difference {money.format_usd(self.stripe_micros - self.ledger_micros, places=6)})"
        )


def reconcile(*, start: datetime, end: datetime) -> list[Difference]:
    """Compare the ledger's usage per tenant and model in [start, end) with Stripe's meters."""
    usage = (
        LedgerEntry.objects.filter(
            kind=LedgerEntry.Kind.USAGE, created_at__gte=start, created_at__lt=end
        )
        .values("tenant_id", "model_slug")
        .annotate(total=Sum("amount_micros"))
    )
    ledger_totals = {(row["tenant_id"], row["model_slug"]): -row["total"] for row in usage}
    accounts = {
        a.tenant_id: a
        for a in CreditAccount.objects.filter(
            tenant_id__in={tenant for tenant, _ in ledger_totals}
        ).exclude(stripe_customer_id="")
    }
    meters = {m.model_slug: m for m in BillingMeter.objects.exclude(stripe_meter_id="")}
    differences = []
    pairs = set(ledger_totals) | {
        (account.tenant_id, slug) for account in accounts.values() for slug in meters
    }
    for tenant_id, slug in sorted(pairs):
        account = accounts.get(tenant_id)
        meter = meters.get(slug)
        expected = ledger_totals.get((tenant_id, slug), 0)
        if account is None or meter is None:
            actual = 0
        else:
            actual = stripe_gateway.meter_event_total(
                meter_id=meter.stripe_meter_id,
                customer_id=account.stripe_customer_id,
                start=start,
                end=end,
            )
        if actual != expected:
            differences.append(Difference(tenant_id, slug, expected, actual))
    return differences
