"""The smaller lifecycle calls: cancel, detach, confirm, deactivate, void, lines."""

from __future__ import annotations

from decimal import Decimal

import pytest
import stripe

from deploy.stripe_server import StripeServer
from tests.stripe_server.support import Receiver, control, fetch


def _metered(client: stripe.StripeClient) -> tuple[str, str, str]:
    cus = client.v1.customers.create(params={"email": "life@example.com"})
    meter = client.v1.billing.meters.create(
        params={
            "display_name": "Life",
            "event_name": "life",
            "default_aggregation": {"formula": "sum"},
        }
    )
    price = client.v1.prices.create(
        params={
            "currency": "usd",
            "unit_amount_decimal": Decimal(1),
            "product_data": {"name": "Life"},
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
        }
    )
    return cus.id, meter.id, price.id


def test_subscription_cancel(client: stripe.StripeClient, receiver: Receiver) -> None:
    customer, _, price = _metered(client)
    sub = client.v1.subscriptions.create(params={"customer": customer, "items": [{"price": price}]})
    canceled = client.v1.subscriptions.cancel(sub.id)
    assert (canceled.status, canceled.canceled_at is not None) == ("canceled", True)
    receiver.wait_for("customer.subscription.deleted")
    assert client.v1.subscriptions.list(params={"customer": customer}).data == []
    every = client.v1.subscriptions.list(params={"customer": customer, "status": "all"})
    assert [s.id for s in every.data] == [sub.id]


def test_metered_price_rules(client: stripe.StripeClient) -> None:
    customer, meter, price = _metered(client)
    with pytest.raises(stripe.InvalidRequestError, match="Quantity should not be specified"):
        client.v1.subscriptions.create(
            params={"customer": customer, "items": [{"price": price, "quantity": 2}]}
        )
    with pytest.raises(stripe.InvalidRequestError, match="meter"):
        client.v1.prices.create(
            params={
                "currency": "usd",
                "unit_amount": 1,
                "product_data": {"name": "No meter"},
                "recurring": {"interval": "month", "usage_type": "metered"},
            }
        )
    client.v1.billing.meters.deactivate(meter)
    assert client.v1.billing.meters.list(params={"status": "inactive"}).data[0].id == meter
    with pytest.raises(stripe.InvalidRequestError, match="No active meter"):
        client.v1.billing.meter_events.create(
            params={"event_name": "life", "payload": {"stripe_customer_id": customer, "value": "1"}}
        )


def test_payment_method_listing_and_detach(client: stripe.StripeClient) -> None:
    cus = client.v1.customers.create(params={"email": "pm@example.com"})
    pm = client.v1.payment_methods.attach("pm_card_mastercard", params={"customer": cus.id})
    assert pm.card is not None
    assert pm.card.brand == "mastercard"
    client.v1.customers.update(
        cus.id, params={"invoice_settings": {"default_payment_method": pm.id}}
    )
    listed = client.v1.customers.payment_methods.list(cus.id)
    assert [m.id for m in listed.data] == [pm.id]
    detached = client.v1.payment_methods.detach(pm.id)
    assert detached.customer is None
    customer = client.v1.customers.retrieve(cus.id)
    assert customer.invoice_settings is not None
    assert customer.invoice_settings.default_payment_method is None
    with pytest.raises(stripe.CardError):
        client.v1.payment_methods.attach("pm_card_chargeDeclined", params={"customer": cus.id})


def test_confirm_later(client: stripe.StripeClient) -> None:
    cus = client.v1.customers.create(params={"email": "confirm@example.com"})
    pm = client.v1.payment_methods.attach("pm_card_visa", params={"customer": cus.id})
    intent = client.v1.payment_intents.create(
        params={"amount": 1000, "currency": "usd", "customer": cus.id, "payment_method": pm.id}
    )
    assert intent.status == "requires_confirmation"
    confirmed = client.v1.payment_intents.confirm(intent.id, params={"off_session": True})
    assert confirmed.status == "succeeded"
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.payment_intents.confirm(intent.id)


def test_voided_grant_is_not_applied_and_invoice_lines_list(
    client: stripe.StripeClient, server: StripeServer
) -> None:
    customer, _, price = _metered(client)
    client.v1.subscriptions.create(params={"customer": customer, "items": [{"price": price}]})
    grant = client.v1.billing.credit_grants.create(
        params={
            "customer": customer,
            "amount": {"type": "monetary", "monetary": {"value": 100, "currency": "usd"}},
            "applicability_config": {"scope": {"prices": [{"id": price}]}},
        }
    )
    assert client.v1.billing.credit_grants.void_grant(grant.id).voided_at is not None
    now = server.state.now()
    client.v1.billing.meter_events.create(
        params={"event_name": "life", "payload": {"stripe_customer_id": customer, "value": "40"}}
    )
    closed = control(server, "/_test/billing/close_period", customer=customer, period_end=now + 60)
    invoice_id = closed["data"][0]["id"]
    lines = client.v1.invoices.line_items.list(invoice_id)
    assert [(line.amount, line.pretax_credit_amounts) for line in lines.data] == [(40, [])]
    assert client.v1.invoices.retrieve(invoice_id).amount_due == 40


def test_checkout_completion_control(client: stripe.StripeClient, server: StripeServer) -> None:
    session = client.v1.checkout.sessions.create(
        params={
            "mode": "payment",
            "customer_email": "guest@example.com",
            "customer_creation": "always",
            "line_items": [
                {
                    "price_data": {
                        "currency": "usd",
                        "unit_amount": 700,
                        "product_data": {"name": "Credits"},
                    },
                    "quantity": 2,
                }
            ],
        }
    )
    status, _, body = fetch(
        "POST", f"{server.url}/_test/checkout/{session.id}/complete", {"outcome": "declined"}
    )
    assert status == 402
    assert b"card_error" in body
    done = control(server, f"/_test/checkout/{session.id}/complete", outcome="paid")
    assert (done["status"], done["payment_status"], done["amount_total"]) == (
        "complete",
        "paid",
        1400,
    )
    assert done["customer"].startswith("cus_")
    assert client.v1.customers.retrieve(done["customer"]).email == "guest@example.com"
    status, _, page = fetch("GET", f"{server.url}/checkout/{session.id}")
    assert status == 200
    assert b"Payment received" in page
    assert fetch("GET", f"{server.url}/checkout/cs_test_nope")[0] == 404
