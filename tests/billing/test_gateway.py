"""The Stripe gateway through the official library: against the project's
Stripe-compatible server always, and against real Stripe test mode when opted in.

Opt in with ``STRIPE_LIVE_TEST_KEY=sk_test_...`` (and network): the same tests then
also run with the ``stripe_live`` marker against api.stripe.com.
"""

import hashlib
import hmac
import json
import os
import time
import uuid
from datetime import UTC, datetime

import pytest

from billing import stripe_gateway

LIVE_KEY = os.environ.get("STRIPE_LIVE_TEST_KEY", "")


@pytest.fixture(
    params=[
        "standin",
        pytest.param(
            "live",
            marks=[
                pytest.mark.stripe_live,
                pytest.mark.skipif(
                    not LIVE_KEY.startswith("sk_test_"),
                    reason="set STRIPE_LIVE_TEST_KEY=sk_test_... to run against Stripe test mode",
                ),
            ],
        ),
    ]
)
def gateway(request, settings):
    """The gateway pointed at one Stripe; yields a unique suffix for object names."""
    server = None
    if request.param == "standin":
        from deploy.stripe_server import StripeServer

        server = StripeServer().start()
        settings.STRIPE_API_BASE = server.url
        settings.STRIPE_SECRET_KEY = "sk_test_gateway"
    else:
        settings.STRIPE_API_BASE = ""
        settings.STRIPE_SECRET_KEY = LIVE_KEY
    stripe_gateway.client.cache_clear()
    try:
        yield uuid.uuid4().hex[:10]
    finally:
        stripe_gateway.client.cache_clear()
        if server is not None:
            server.stop()


def _row_id() -> int:
    return int(time.time_ns() % 10**12)


def test_customer_and_checkout_are_idempotent_by_our_row(gateway):
    account_id = _row_id()
    first = stripe_gateway.customer_create(
        account_id=account_id, name="Acme", email="a@example.com", tenant_id=1
    )
    again = stripe_gateway.customer_create(
        account_id=account_id, name="Acme", email="a@example.com", tenant_id=1
    )
    assert first == again
    assert first.startswith("cus_")
    purchase_id = _row_id()
    checkout = stripe_gateway.checkout_session_create(
        purchase_id=purchase_id,
        customer_id=first,
        amount_cents=5000,
        success_url="https://example.com/ok",
        cancel_url="https://example.com/no",
    )
    replay = stripe_gateway.checkout_session_create(
        purchase_id=purchase_id,
        customer_id=first,
        amount_cents=5000,
        success_url="https://example.com/ok",
        cancel_url="https://example.com/no",
    )
    assert checkout == replay
    assert checkout.session_id.startswith("cs_")
    assert checkout.url.startswith("http")


def test_meter_price_subscription_events_and_grant(gateway, settings):
    row = _row_id()
    customer = stripe_gateway.customer_create(
        account_id=row, name="Meter Co", email="m@example.com", tenant_id=2
    )
    event_name = f"cango_test_{gateway}"
    meter = stripe_gateway.meter_create(
        meter_row_id=row, event_name=event_name, display_name="test"
    )
    price = stripe_gateway.metered_price_create(
        meter_row_id=row, meter_id=meter, model_slug=f"m{gateway}"
    )
    subscription, item = stripe_gateway.subscription_create(
        account_id=row, customer_id=customer, price_id=price
    )
    assert subscription.startswith("sub_")
    assert item.startswith("si_")
    now = datetime.now(UTC)
    stripe_gateway.meter_event_send(
        identifier=f"usage_{gateway}",
        event_name=event_name,
        customer_id=customer,
        value=1234,
        timestamp=now,
    )
    stripe_gateway.meter_event_send(
        identifier=f"usage_{gateway}",
        event_name=event_name,
        customer_id=customer,
        value=1234,
        timestamp=now,
    )
    grant = stripe_gateway.credit_grant_create(
        purchase_id=row, customer_id=customer, amount_cents=500
    )
    assert grant
    if settings.STRIPE_API_BASE:  # Stripe's own summaries lag by minutes
        minute = int(now.timestamp()) // 60 * 60  # summaries take whole minutes
        start = datetime.fromtimestamp(minute - 60, tz=UTC)
        end = datetime.fromtimestamp(minute + 120, tz=UTC)
        assert (
            stripe_gateway.meter_event_total(
                meter_id=meter, customer_id=customer, start=start, end=end
            )
            == 1234
        )


def test_webhook_signature_is_checked(gateway, settings):
    settings.STRIPE_WEBHOOK_SECRET = "whsec_gateway_test"
    payload = json.dumps(
        {"id": "evt_1", "object": "event", "type": "ping", "data": {"object": {}}}
    ).encode()
    stamp = int(time.time())
    good = hmac.new(
        b"whsec_gateway_test", f"{stamp}.".encode() + payload, hashlib.sha256
    ).hexdigest()
    assert stripe_gateway.event_verify(payload, f"t={stamp},v1={good}")["id"] == "evt_1"
    with pytest.raises(stripe_gateway.SignatureInvalid):
        stripe_gateway.event_verify(payload, f"t={stamp},v1={'0' * 64}")
    with pytest.raises(stripe_gateway.SignatureInvalid):
        stripe_gateway.event_verify(payload + b" ", f"t={stamp},v1={good}")


def test_meter_event_stream_sends_batches_once(gateway, settings):
    row = _row_id()
    customer = stripe_gateway.customer_create(
        account_id=row, name="Stream Co", email="s@example.com", tenant_id=3
    )
    event_name = f"cango_stream_{gateway}"
    meter = stripe_gateway.meter_create(meter_row_id=row, event_name=event_name, display_name="s")
    now = datetime.now(UTC)
    events = [
        stripe_gateway.MeterEvent(f"usage_s{gateway}_{i}", event_name, customer, 10, now)
        for i in range(stripe_gateway.STREAM_BATCH)
    ]
    stripe_gateway.meter_events_stream(events)
    stripe_gateway.meter_events_stream(events[:10])  # resent: deduplicated by identifier
    with pytest.raises(ValueError, match="batch"):
        stripe_gateway.meter_events_stream([*events, events[0]])
    if settings.STRIPE_API_BASE:
        minute = int(now.timestamp()) // 60 * 60
        total = stripe_gateway.meter_event_total(
            meter_id=meter,
            customer_id=customer,
            start=datetime.fromtimestamp(minute - 60, tz=UTC),
            end=datetime.fromtimestamp(minute + 120, tz=UTC),
        )
        assert total == 10 * stripe_gateway.STREAM_BATCH
