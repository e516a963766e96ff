"""Every object the server answers has exactly the fields of Stripe's current fixtures."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import stripe

from deploy.stripe_server import StripeServer
from deploy.stripe_server.objects import FIXTURES_PATH
from tests.stripe_server.support import Receiver, control, fetch

FIXTURES = json.loads(FIXTURES_PATH.read_text(encoding="utf-8"))["resources"]


def _check(kind: str, obj: dict[str, Any]) -> None:
    assert obj["object"] == kind
    assert set(obj) - {"total_count"} == set(FIXTURES[kind]) - {"total_count"}, kind
    assert obj.get("livemode", False) is False


def test_objects_have_current_shapes(
    client: stripe.StripeClient, server: StripeServer, receiver: Receiver
) -> None:
    cus = client.v1.customers.create(params={"email": "shape@example.com"})
    _check("customer", cus.to_dict())
    product = client.v1.products.create(params={"name": "Shape"})
    _check("product", product.to_dict())
    meter = client.v1.billing.meters.create(
        params={
            "display_name": "Shape",
            "event_name": "shape",
            "default_aggregation": {"formula": "sum"},
        }
    )
    _check("billing.meter", meter.to_dict())
    price = client.v1.prices.create(
        params={
            "currency": "usd",
            "unit_amount_decimal": Decimal("0.5"),
            "product": product.id,
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
        }
    )
    _check("price", price.to_dict())
    sub = client.v1.subscriptions.create(
        params={"customer": cus.id, "items": [{"price": price.id}]}
    )
    sub_dict = sub.to_dict()
    _check("subscription", sub_dict)
    _check("subscription_item", sub_dict["items"]["data"][0])
    _check("plan", sub_dict["items"]["data"][0]["plan"])
    now = server.state.now()
    event = client.v1.billing.meter_events.create(
        params={"event_name": "shape", "payload": {"stripe_customer_id": cus.id, "value": "3"}}
    )
    _check("billing.meter_event", event.to_dict())
    summaries = client.v1.billing.meters.event_summaries.list(
        meter.id,
        params={"customer": cus.id, "start_time": now - now % 60, "end_time": now - now % 60 + 60},
    )
    _check("billing.meter_event_summary", summaries.data[0].to_dict())
    grant = client.v1.billing.credit_grants.create(
        params={
            "customer": cus.id,
            "amount": {"type": "monetary", "monetary": {"value": 1, "currency": "usd"}},
            "applicability_config": {"scope": {"price_type": "metered"}},
        }
    )
    _check("billing.credit_grant", grant.to_dict())
    invoice = control(server, "/_test/billing/close_period", customer=cus.id, period_end=now + 60)
    inv = client.v1.invoices.retrieve(invoice["data"][0]["id"]).to_dict()
    _check("invoice", inv)
    _check("line_item", inv["lines"]["data"][0])
    txns = client.v1.billing.credit_balance_transactions.list(params={"customer": cus.id})
    for txn in txns.data:
        _check("billing.credit_balance_transaction", txn.to_dict())

    session = client.v1.checkout.sessions.create(
        params={
            "mode": "payment",
            "customer": cus.id,
            "line_items": [
                {
                    "price_data": {
                        "currency": "usd",
                        "unit_amount": 1000,
                        "product_data": {"name": "Credits"},
                    },
                    "quantity": 1,
                }
            ],
            "success_url": "http://app.test/ok",
        }
    )
    _check("checkout.session", session.to_dict())
    items = client.v1.checkout.sessions.line_items.list(session.id)
    _check("item", items.data[0].to_dict())
    status, _, _ = fetch("POST", f"{server.url}/checkout/{session.id}/pay", {"method": "card"})
    assert status == 303
    paid = client.v1.checkout.sessions.retrieve(session.id)
    assert isinstance(paid.payment_intent, str)
    intent = client.v1.payment_intents.retrieve(paid.payment_intent)
    _check("payment_intent", intent.to_dict())
    assert isinstance(intent.latest_charge, str)
    assert isinstance(intent.payment_method, str)
    _check("charge", client.v1.charges.retrieve(intent.latest_charge).to_dict())
    _check("payment_method", client.v1.payment_methods.retrieve(intent.payment_method).to_dict())
    refund = client.v1.refunds.create(params={"payment_intent": intent.id})
    _check("refund", refund.to_dict())
    evt = client.v1.events.list(params={"limit": 1}).data[0]
    _check("event", evt.to_dict())
