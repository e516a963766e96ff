"""Usage billing: meters, meter events, summaries, credit grants, period close, invoices."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import pytest
import stripe

from deploy.stripe_server import StripeServer
from tests.stripe_server.support import WEBHOOK_SECRET, Receiver, control, fetch


@dataclass
class Metered:
    customer: str
    meter: str
    price: str
    subscription: str
    start: int


def _meter(client: stripe.StripeClient, event_name: str) -> stripe.billing.Meter:
    return client.v1.billing.meters.create(
        params={
            "display_name": event_name.replace("_", " ").title(),
            "event_name": event_name,
            "default_aggregation": {"formula": "sum"},
            "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
            "value_settings": {"event_payload_key": "value"},
        }
    )


def _metered_price(client: stripe.StripeClient, meter_id: str, cents: str) -> stripe.Price:
    return client.v1.prices.create(
        params={
            "currency": "usd",
            "unit_amount_decimal": Decimal(cents),
            "product_data": {"name": "Inference usage"},
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter_id},
            "billing_scheme": "per_unit",
        }
    )


@pytest.fixture
def metered(client: stripe.StripeClient, server: StripeServer) -> Metered:
    cus = client.v1.customers.create(params={"email": "tenant@example.com"})
    meter = _meter(client, "cango_usage")
    price = _metered_price(client, meter.id, "0.0125")
    sub = client.v1.subscriptions.create(
        params={"customer": cus.id, "items": [{"price": price.id}]}
    )
    return Metered(cus.id, meter.id, price.id, sub.id, sub["items"].data[0].current_period_start)


def _usage(
    client: stripe.StripeClient,
    customer: str,
    value: int,
    identifier: str,
    timestamp: int,
    event_name: str = "cango_usage",
) -> stripe.billing.MeterEvent:
    return client.v1.billing.meter_events.create(
        params={
            "event_name": event_name,
            "payload": {"stripe_customer_id": customer, "value": str(value)},
            "identifier": identifier,
            "timestamp": timestamp,
        }
    )


def _grant(
    client: stripe.StripeClient, customer: str, cents: int, **extra: object
) -> stripe.billing.CreditGrant:
    params: stripe.params.billing.CreditGrantCreateParams = {
        "customer": customer,
        "name": "Prepaid credits",
        "amount": {"type": "monetary", "monetary": {"value": cents, "currency": "usd"}},
        "applicability_config": {"scope": {"price_type": "metered"}},
        "category": "paid",
        "metadata": {"topup_id": "t-1"},
    }
    params.update(extra)  # type: ignore[typeddict-item]
    return client.v1.billing.credit_grants.create(params=params)


def _close(server: StripeServer, customer: str, period_end: int, **extra: object) -> dict:
    result = control(
        server, "/_test/billing/close_period", customer=customer, period_end=period_end, **extra
    )
    assert len(result["data"]) == 1
    invoice = result["data"][0]
    assert isinstance(invoice, dict)
    return invoice


def test_meter_and_metered_price(client: stripe.StripeClient, metered: Metered) -> None:
    meters = client.v1.billing.meters.list(params={"status": "active"})
    assert [m.id for m in meters.data] == [metered.meter]
    meter = meters.data[0]
    assert meter.id.startswith("mtr_")
    assert meter.event_name == "cango_usage"
    assert meter.default_aggregation.formula == "sum"
    price = client.v1.prices.retrieve(metered.price)
    assert price.recurring is not None
    assert (price.recurring.usage_type, price.recurring.meter) == ("metered", metered.meter)
    assert price.unit_amount is None
    sub = client.v1.subscriptions.retrieve(metered.subscription)
    assert sub.status == "active"
    item = sub["items"].data[0]
    assert item.price.id == metered.price
    assert item.current_period_end > item.current_period_start


def test_meter_event_identifier_is_counted_once(
    client: stripe.StripeClient, server: StripeServer, metered: Metered
) -> None:
    now = server.state.now()
    event = _usage(client, metered.customer, 400, "usage-1", now)
    assert (event.object, event.identifier, event.payload["value"]) == (
        "billing.meter_event",
        "usage-1",
        "400",
    )
    with pytest.raises(stripe.InvalidRequestError) as duplicate:
        _usage(client, metered.customer, 400, "usage-1", now)
    assert duplicate.value.http_status == 400
    assert "already exists with identifier usage-1" in duplicate.value.user_message
    assert duplicate.value.headers is not None
    assert duplicate.value.headers["Stripe-Should-Retry"] == "false"

    # The same request retried with its Idempotency-Key replays the first answer.
    params: stripe.params.billing.MeterEventCreateParams = {
        "event_name": "cango_usage",
        "payload": {"stripe_customer_id": metered.customer, "value": "600"},
        "identifier": "usage-2",
        "timestamp": now,
    }
    client.v1.billing.meter_events.create(params=params, options={"idempotency_key": "me-2"})
    replay = client.v1.billing.meter_events.create(
        params=params, options={"idempotency_key": "me-2"}
    )
    assert replay.last_response is not None
    assert replay.last_response.headers["Idempotent-Replayed"] == "true"

    start = now - now % 60
    summaries = client.v1.billing.meters.event_summaries.list(
        metered.meter,
        params={"customer": metered.customer, "start_time": start, "end_time": start + 3600},
    )
    assert [s.aggregated_value for s in summaries.data] == [1000]
    assert summaries.data[0].meter == metered.meter

    # After the dedup window the identifier is free again (as at Stripe).
    control(server, "/_test/clock", advance=24 * 3600 + 60)
    _usage(client, metered.customer, 1, "usage-1", server.state.now())


def test_meter_event_validation(
    client: stripe.StripeClient, server: StripeServer, metered: Metered
) -> None:
    now = server.state.now()
    with pytest.raises(stripe.InvalidRequestError, match="35 days"):
        _usage(client, metered.customer, 1, "old", now - 36 * 86400)
    with pytest.raises(stripe.InvalidRequestError, match="5 minutes"):
        _usage(client, metered.customer, 1, "future", now + 600)
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        _usage(client, "cus_nobody", 1, "nobody", now)
    assert unknown.value.code == "resource_missing"
    with pytest.raises(stripe.InvalidRequestError):
        _usage(client, metered.customer, 1, "no-meter", now, event_name="nothing_here")


def test_event_summaries_by_day(
    client: stripe.StripeClient, server: StripeServer, metered: Metered
) -> None:
    now = server.state.now()
    _usage(client, metered.customer, 5, "a", now - 2 * 86400)
    _usage(client, metered.customer, 7, "b", now - 86400)
    _usage(client, metered.customer, 11, "c", now)
    day = 86400
    start = (now - 3 * day) - (now - 3 * day) % day
    end = now - now % day + day
    summaries = client.v1.billing.meters.event_summaries.list(
        metered.meter,
        params={
            "customer": metered.customer,
            "start_time": start,
            "end_time": end,
            "value_grouping_window": "day",
        },
    )
    values = [(s.start_time, s.aggregated_value) for s in summaries.auto_paging_iter()]
    assert values == [(end - day, 11), (end - 2 * day, 7), (end - 3 * day, 5), (start, 0)]
    with pytest.raises(stripe.InvalidRequestError, match="minute"):
        client.v1.billing.meters.event_summaries.list(
            metered.meter,
            params={"customer": metered.customer, "start_time": start + 1, "end_time": end},
        )


def test_close_period_invoices_usage_minus_credit(
    client: stripe.StripeClient, server: StripeServer, receiver: Receiver, metered: Metered
) -> None:
    now = server.state.now()
    grant = _grant(client, metered.customer, 1000)
    assert grant.id.startswith("credgr_")
    assert grant.amount.monetary is not None
    assert grant.amount.monetary.value == 1000
    assert grant.applicability_config.scope.price_type == "metered"
    listed = client.v1.billing.credit_grants.list(params={"customer": metered.customer})
    assert [g.id for g in listed.data] == [grant.id]

    _usage(client, metered.customer, 120_000, "u-1", now)
    _usage(client, metered.customer, 80_000, "u-2", now)
    with pytest.raises(stripe.InvalidRequestError):
        _usage(client, metered.customer, 80_000, "u-2", now)

    closed = _close(server, metered.customer, now + 60)
    invoice = client.v1.invoices.retrieve(closed["id"])
    assert invoice.id.startswith("in_")
    assert invoice.customer == metered.customer
    assert (invoice.period_start, invoice.period_end) == (metered.start, now + 60)
    line = invoice.lines.data[0]
    assert line.quantity == 200_000
    assert line.amount == 2500  # 200,000 × 0.0125¢
    assert line.pricing is not None
    assert line.pricing.price_details is not None
    assert line.pricing.price_details.price == metered.price
    assert line.pretax_credit_amounts is not None
    assert [c.amount for c in line.pretax_credit_amounts] == [1000]
    assert invoice.subtotal == 2500
    assert invoice.total_pretax_credit_amounts is not None
    credit = invoice.total_pretax_credit_amounts[0]
    assert (credit.amount, credit.type) == (1000, "credit_balance_transaction")
    assert isinstance(credit.credit_balance_transaction, str)
    assert (invoice.total, invoice.amount_due, invoice.status) == (1500, 1500, "open")
    assert invoice.number is not None
    assert invoice.number.endswith("-0001")
    assert invoice.hosted_invoice_url == f"{server.url}/invoices/{invoice.id}"

    listed_invoices = client.v1.invoices.list(params={"customer": metered.customer})
    assert [i.id for i in listed_invoices.data] == [invoice.id]

    receiver.wait_for("invoice.finalized")
    created = receiver.wait_for("invoice.created")[0]
    event = stripe.Webhook.construct_event(created.body, created.signature, WEBHOOK_SECRET)
    assert event.data.object["status"] == "draft"
    assert receiver.types().index("invoice.created") < receiver.types().index("invoice.finalized")

    balance = client.v1.billing.credit_balance_summary.retrieve(
        params={
            "customer": metered.customer,
            "filter": {
                "type": "applicability_scope",
                "applicability_scope": {"price_type": "metered"},
            },
        }
    )
    assert balance.balances[0].available_balance.monetary is not None
    assert balance.balances[0].available_balance.monetary.value == 0

    # The consumed credit is not applied again next period.
    control(server, "/_test/clock", advance=120)
    later = server.state.now()
    _usage(client, metered.customer, 40_000, "u-3", later)
    second = _close(server, metered.customer, later + 60)
    assert (second["subtotal"], second["total_pretax_credit_amounts"], second["amount_due"]) == (
        500,
        [],
        500,
    )
    assert second["period_start"] == now + 60
    assert second["number"].endswith("-0002")


def test_credit_covering_everything_pays_the_invoice(
    client: stripe.StripeClient, server: StripeServer, receiver: Receiver, metered: Metered
) -> None:
    now = server.state.now()
    _grant(client, metered.customer, 5000)
    _usage(client, metered.customer, 1000, "small", now)
    invoice = _close(server, metered.customer, now + 60)
    assert invoice["lines"]["data"][0]["amount"] == 13  # 12.5¢ rounds half up
    assert (invoice["amount_due"], invoice["status"]) == (0, "paid")
    paid = receiver.wait_for("invoice.paid")[0].event["data"]["object"]
    assert paid["id"] == invoice["id"]
    balance = client.v1.billing.credit_balance_summary.retrieve(
        params={
            "customer": metered.customer,
            "filter": {
                "type": "applicability_scope",
                "applicability_scope": {"price_type": "metered"},
            },
        }
    )
    assert balance.balances[0].available_balance.monetary is not None
    assert balance.balances[0].available_balance.monetary.value == 5000 - 13


def test_grants_apply_in_priority_order(
    client: stripe.StripeClient, server: StripeServer, metered: Metered
) -> None:
    now = server.state.now()
    paid = _grant(client, metered.customer, 5000)
    promo = _grant(client, metered.customer, 300, category="promotional", priority=10)
    _usage(client, metered.customer, 200_000, "u", now)
    invoice = _close(server, metered.customer, now + 60)
    applied = {}
    for entry in invoice["total_pretax_credit_amounts"]:
        txn = server.state.objects[entry["credit_balance_transaction"]]
        applied[txn["credit_grant"]] = entry["amount"]
    assert applied == {promo.id: 300, paid.id: 2200}
    assert invoice["amount_due"] == 0
    txns = client.v1.billing.credit_balance_transactions.list(
        params={"customer": metered.customer, "credit_grant": paid.id}
    )
    assert sorted(t.type or "" for t in txns.data) == ["credit", "debit"]


def test_second_metered_price_via_subscription_item(
    client: stripe.StripeClient, server: StripeServer, metered: Metered
) -> None:
    requests_meter = _meter(client, "cango_requests")
    per_request = _metered_price(client, requests_meter.id, "0.5")
    item = client.v1.subscription_items.create(
        params={"subscription": metered.subscription, "price": per_request.id}
    )
    assert item.id.startswith("si_")
    assert item.subscription == metered.subscription
    sub = client.v1.subscriptions.retrieve(metered.subscription)
    assert [i.price.id for i in sub["items"].data] == [metered.price, per_request.id]
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.subscription_items.create(
            params={"subscription": metered.subscription, "price": per_request.id}
        )

    now = server.state.now()
    _usage(client, metered.customer, 8000, "tokens", now)
    _usage(client, metered.customer, 3, "requests", now, event_name="cango_requests")
    invoice = _close(server, metered.customer, now + 60)
    assert [(line["quantity"], line["amount"]) for line in invoice["lines"]["data"]] == [
        (8000, 100),
        (3, 2),  # 1.5¢ rounds half up
    ]
    assert invoice["total"] == 102


def test_hosted_invoice_page_and_pdf(
    client: stripe.StripeClient, server: StripeServer, metered: Metered
) -> None:
    now = server.state.now()
    _grant(client, metered.customer, 1000)
    _usage(client, metered.customer, 200_000, "u", now)
    invoice = client.v1.invoices.retrieve(_close(server, metered.customer, now + 60)["id"])
    assert invoice.hosted_invoice_url is not None
    assert invoice.invoice_pdf is not None
    status, headers, page = fetch("GET", invoice.hosted_invoice_url)
    assert status == 200
    text = page.decode()
    assert "15.00 USD" in text
    assert "25.00 USD" in text
    assert (invoice.number or "") in text
    status, headers, pdf = fetch("GET", invoice.invoice_pdf)
    assert status == 200
    assert headers["Content-Type"] == "application/pdf"
    assert pdf.startswith(b"%PDF-1.4")
    assert pdf.rstrip().endswith(b"%%EOF")
    assert b"Amount due: 15.00 USD" in pdf


def test_invoice_payment_with_default_card(
    client: stripe.StripeClient, server: StripeServer, receiver: Receiver, metered: Metered
) -> None:
    pm = client.v1.payment_methods.attach("pm_card_visa", params={"customer": metered.customer})
    client.v1.customers.update(
        metered.customer, params={"invoice_settings": {"default_payment_method": pm.id}}
    )
    now = server.state.now()
    _usage(client, metered.customer, 200_000, "u", now)
    invoice = _close(server, metered.customer, now + 60)
    control(server, f"/_test/customers/{metered.customer}/decline_next")
    with pytest.raises(stripe.CardError) as declined:
        client.v1.invoices.pay(invoice["id"])
    assert declined.value.code == "card_declined"
    receiver.wait_for("invoice.payment_failed")
    paid = client.v1.invoices.pay(invoice["id"])
    assert (paid.status, paid.amount_paid, paid.amount_remaining) == ("paid", 2500, 0)
    receiver.wait_for("invoice.paid")
