"""The only module that imports ``stripe``. Every write carries an idempotency key
built from one of our own rows, so a retried call can never create a second object.

In tests and the demo ``STRIPE_API_BASE`` points the official client at the
project's Stripe-compatible server (``deploy/stripe_server``); in production it is
empty and the client talks to Stripe.
"""

import functools
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import stripe
from django.conf import settings

CURRENCY = "usd"


class GatewayError(Exception):
    """Stripe could not be reached or refused the call; safe to retry later."""


class CardDeclined(GatewayError):
    pass


class SignatureInvalid(Exception):
    pass


@functools.cache
def client() -> stripe.StripeClient:
    base = settings.STRIPE_API_BASE
    addresses: Any = (
        {"api": base, "meter_events": base, "files": base, "connect": base} if base else None
    )
    return stripe.StripeClient(
        settings.STRIPE_SECRET_KEY, base_addresses=addresses, max_network_retries=2
    )


def _options(idempotency_key: str) -> Any:
    return {"idempotency_key": idempotency_key}


def _call(function: Any, params: dict[str, Any], idempotency_key: str | None = None) -> Any:
    try:
        if idempotency_key is None:
            return function(params=params)
        return function(params=params, options=_options(idempotency_key))
    except stripe.CardError as exc:
        raise CardDeclined(exc.user_message or str(exc)) from exc
    except stripe.StripeError as exc:
        raise GatewayError(str(exc)) from exc


def event_verify(payload: bytes, signature_header: str) -> dict[str, Any]:
    """The event, if the ``Stripe-Signature`` header is valid for this payload and fresh."""
    try:
        event = stripe.Webhook.construct_event(
            payload, signature_header, settings.STRIPE_WEBHOOK_SECRET
        )
    except (stripe.SignatureVerificationError, ValueError) as exc:
        raise SignatureInvalid(str(exc)) from exc
    return dict(event.to_dict())


def customer_create(*, account_id: int, name: str, email: str, tenant_id: int) -> str:
    customer = _call(
        client().v1.customers.create,
        {"name": name, "email": email, "metadata": {"tenant_id": str(tenant_id)}},
        f"customer:account:{account_id}",
    )
    return str(customer.id)


def customer_saved_card(customer_id: str) -> str:
    """The card to charge off-session: the customer's default, else the newest saved card."""
    try:
        customer = client().v1.customers.retrieve(customer_id)
        defaults = customer.invoice_settings
        if defaults and defaults.default_payment_method:
            return str(defaults.default_payment_method)
        cards = client().v1.customers.payment_methods.list(
            customer_id, params={"type": "card", "limit": 1}
        )
    except stripe.StripeError as exc:
        raise GatewayError(str(exc)) from exc
    return str(cards.data[0].id) if cards.data else ""


@dataclass(frozen=True, slots=True)
class Checkout:
    session_id: str
    url: str


def checkout_session_create(
    *,
    purchase_id: int,
    customer_id: str,
    amount_cents: int,
    success_url: str,
    cancel_url: str,
) -> Checkout:
    """A Checkout Session in payment mode that saves the card for automatic top-ups."""
    session = _call(
        client().v1.checkout.sessions.create,
        {
            "mode": "payment",
            "customer": customer_id,
            "client_reference_id": str(purchase_id),
            "line_items": [
                {
                    "price_data": {
                        "currency": CURRENCY,
                        "unit_amount": amount_cents,
                        "product_data": {"name": "Cango inference credit"},
                    },
                    "quantity": 1,
                }
            ],
            "payment_intent_data": {"setup_future_usage": "off_session"},
            "metadata": {"purchase_id": str(purchase_id)},
            "success_url": success_url,
            "cancel_url": cancel_url,
        },
        f"checkout:purchase:{purchase_id}",
    )
    return Checkout(session_id=str(session.id), url=str(session.url))


def payment_intent_off_session(
    *, purchase_id: int, customer_id: str, payment_method_id: str, amount_cents: int
) -> str:
    """Charge a saved card without the customer present (automatic top-up)."""
    intent = _call(
        client().v1.payment_intents.create,
        {
            "amount": amount_cents,
            "currency": CURRENCY,
            "customer": customer_id,
            "payment_method": payment_method_id,
            "off_session": True,
            "confirm": True,
            "metadata": {"purchase_id": str(purchase_id)},
        },
        f"topup:purchase:{purchase_id}",
    )
    if intent.status != "succeeded":
        raise CardDeclined(f"payment {intent.status}")
    return str(intent.id)


def refund_create(*, purchase_id: int, payment_intent_id: str, amount_cents: int, key: str) -> str:
    refund = _call(
        client().v1.refunds.create,
        {"payment_intent": payment_intent_id, "amount": amount_cents},
        f"refund:purchase:{purchase_id}:{key}",
    )
    return str(refund.id)


def credit_grant_create(*, purchase_id: int, customer_id: str, amount_cents: int) -> str:
    """Mirror prepaid credit so the invoice shows usage minus what was prepaid."""
    return _credit_grant(
        customer_id=customer_id,
        amount_cents=amount_cents,
        name=f"Prepaid credit (purchase {purchase_id})",
        category="paid",
        metadata={"purchase_id": str(purchase_id)},
        idempotency_key=f"credit_grant:purchase:{purchase_id}",
    )


def credit_grant_promotional_create(
    *, mirror_id: int, ledger_entry_id: int, customer_id: str, amount_cents: int
) -> str:
    """Mirror credit that staff gave, so the invoice counts it as it counts purchases."""
    return _credit_grant(
        customer_id=customer_id,
        amount_cents=amount_cents,
        name=f"Credit from Cango (ledger entry {ledger_entry_id})",
        category="promotional",
        metadata={"ledger_entry_id": str(ledger_entry_id)},
        idempotency_key=f"credit_grant:mirror:{mirror_id}",
    )


def _credit_grant(
    *,
    customer_id: str,
    amount_cents: int,
    name: str,
    category: str,
    metadata: dict[str, str],
    idempotency_key: str,
) -> str:
    grant = _call(
        client().v1.billing.credit_grants.create,
        {
            "customer": customer_id,
            "name": name,
            "category": category,
            "amount": {
                "type": "monetary",
                "monetary": {"value": amount_cents, "currency": CURRENCY},
            },
            "applicability_config": {"scope": {"price_type": "metered"}},
            "metadata": metadata,
        },
        idempotency_key,
    )
    return str(grant.id)


def meter_create(*, meter_row_id: int, event_name: str, display_name: str) -> str:
    meter = _call(
        client().v1.billing.meters.create,
        {
            "display_name": display_name,
            "event_name": event_name,
            "default_aggregation": {"formula": "sum"},
            "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
            "value_settings": {"event_payload_key": "value"},
        },
        f"meter:{meter_row_id}",
    )
    return str(meter.id)


def metered_price_create(*, meter_row_id: int, meter_id: str, model_slug: str) -> str:
    """One unit of the meter is one micro-dollar: 0.0001 cent."""
    product = _call(
        client().v1.products.create,
        {"name": f"Inference: {model_slug}", "metadata": {"model": model_slug}},
        f"product:meter:{meter_row_id}",
    )
    price = _call(
        client().v1.prices.create,
        {
            "product": product.id,
            "currency": CURRENCY,
            "unit_amount_decimal": "0.0001",
            "billing_scheme": "per_unit",
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter_id},
        },
        f"price:meter:{meter_row_id}",
    )
    return str(price.id)


def subscription_create(*, account_id: int, customer_id: str, price_id: str) -> tuple[str, str]:
    """A tenant's usage subscription with its first metered price; (subscription, item)."""
    subscription = _call(
        client().v1.subscriptions.create,
        {"customer": customer_id, "items": [{"price": price_id}]},
        f"subscription:account:{account_id}",
    )
    return str(subscription.id), str(subscription["items"].data[0].id)


def subscription_item_add(
    *, account_id: int, meter_row_id: int, subscription_id: str, price_id: str
) -> str:
    item = _call(
        client().v1.subscription_items.create,
        {"subscription": subscription_id, "price": price_id},
        f"subscription_item:account:{account_id}:meter:{meter_row_id}",
    )
    return str(item.id)


def meter_event_send(
    *, identifier: str, event_name: str, customer_id: str, value: int, timestamp: datetime
) -> None:
    """One meter event; Stripe deduplicates ``identifier``, so resending is harmless.

    Stripe answers a repeated identifier with "An event already exists with
    identifier …": that event was sent before, which is what was wanted.
    """
    try:
        client().v1.billing.meter_events.create(
            params={
                "event_name": event_name,
                "identifier": identifier,
                "timestamp": int(timestamp.timestamp()),
                "payload": {"stripe_customer_id": customer_id, "value": str(value)},
            },
            options=_options(f"meter_event:{identifier}"),
        )
    except stripe.InvalidRequestError as exc:
        if "already exists with identifier" in str(exc):
            return
        raise GatewayError(str(exc)) from exc
    except stripe.StripeError as exc:
        raise GatewayError(str(exc)) from exc


def meter_event_total(*, meter_id: str, customer_id: str, start: datetime, end: datetime) -> int:
    """Sum of a customer's meter values in [start, end), from Stripe's summaries."""
    try:
        page = client().v1.billing.meters.event_summaries.list(
            meter_id,
            params={
                "customer": customer_id,
                "start_time": int(start.timestamp()),
                "end_time": int(end.timestamp()),
            },
        )
    except stripe.StripeError as exc:
        raise GatewayError(str(exc)) from exc
    return sum(round(summary.aggregated_value) for summary in page.auto_paging_iter())


@dataclass(frozen=True, slots=True)
class MeterEvent:
    identifier: str
    event_name: str
    customer_id: str
    value: int
    timestamp: datetime


STREAM_BATCH = 100  # events per request on the v2 meter event stream

_stream_lock = threading.Lock()
# (the client it belongs to, token, monotonic expiry)
_stream_session: tuple[int, str, float] | None = None


def _stream_token(*, renew: bool = False) -> str:
    """A meter event session token (valid 15 minutes), shared by this process's threads."""
    global _stream_session
    current = id(client())
    with _stream_lock:
        if (
            renew
            or _stream_session is None
            or _stream_session[0] != current
            or _stream_session[2] <= time.monotonic()
        ):
            try:
                session = client().v2.billing.meter_event_session.create()
            except stripe.StripeError as exc:
                raise GatewayError(str(exc)) from exc
            token = str(session.authentication_token)
            _stream_session = (current, token, time.monotonic() + 600)
        return _stream_session[1]


def meter_events_stream(events: list[MeterEvent]) -> None:
    """Send up to ``STREAM_BATCH`` meter events in one request (the v2 stream).

    Stripe deduplicates ``identifier``s on the stream too, so a resent batch is harmless.
    """
    if not 0 < len(events) <= STREAM_BATCH:
        raise ValueError(f"a batch holds 1 to {STREAM_BATCH} events")
    params: Any = {
        "events": [
            {
                "event_name": event.event_name,
                "identifier": event.identifier,
                "timestamp": event.timestamp.astimezone(UTC).isoformat(),
                "payload": {"stripe_customer_id": event.customer_id, "value": str(event.value)},
            }
            for event in events
        ]
    }
    for renew in (False, True):
        try:
            client().v2.billing.meter_event_stream.create(
                params=params, options={"api_key": _stream_token(renew=renew)}
            )
            return
        except (stripe.TemporarySessionExpiredError, stripe.AuthenticationError):
            continue  # the session expired or was revoked: take a new one, once
        except stripe.StripeError as exc:
            raise GatewayError(str(exc)) from exc
    raise GatewayError("the meter event session kept expiring")
