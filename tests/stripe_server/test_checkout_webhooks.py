"""Checkout top-ups end to end: session, hosted page, pay, signed webhooks."""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import stripe

from deploy.stripe_server import StripeServer, signature_header
from tests.stripe_server.support import WEBHOOK_SECRET, Receiver, control, fetch


def _session(
    client: stripe.StripeClient, customer: str, amount: int = 2500, save_card: bool = True
) -> stripe.checkout.Session:
    params: stripe.params.checkout.SessionCreateParams = {
        "mode": "payment",
        "customer": customer,
        "line_items": [
            {
                "price_data": {
                    "currency": "usd",
                    "unit_amount": amount,
                    "product_data": {"name": "Cango credits"},
                },
                "quantity": 1,
            }
        ],
        "success_url": "http://app.test/billing/success?session_id={CHECKOUT_SESSION_ID}",
        "cancel_url": "http://app.test/billing/cancel",
        "client_reference_id": "tenant-7",
        "metadata": {"topup_id": "t-1"},
    }
    if save_card:
        params["payment_intent_data"] = {"setup_future_usage": "off_session"}
    return client.v1.checkout.sessions.create(params=params, options={"idempotency_key": "cs-1"})


def test_checkout_session_create_and_retrieve(
    client: stripe.StripeClient, server: StripeServer
) -> None:
    cus = client.v1.customers.create(params={"email": "buyer@example.com"})
    session = _session(client, cus.id)
    assert session.id.startswith("cs_test_")
    assert session.url == f"{server.url}/checkout/{session.id}"
    assert (session.status, session.payment_status) == ("open", "unpaid")
    assert session.amount_total == 2500
    assert session.currency == "usd"
    assert session.client_reference_id == "tenant-7"
    assert session.metadata is not None
    assert session.metadata.to_dict() == {"topup_id": "t-1"}
    assert session.payment_intent is None
    again = client.v1.checkout.sessions.retrieve(session.id)
    assert again.to_dict() == session.to_dict()
    items = client.v1.checkout.sessions.line_items.list(session.id)
    assert [(i.description, i.amount_total, i.quantity) for i in items.data] == [
        ("Cango credits", 2500, 1)
    ]


def test_pay_on_hosted_page_sends_signed_checkout_completed(
    client: stripe.StripeClient, server: StripeServer, receiver: Receiver
) -> None:
    cus = client.v1.customers.create(params={"email": "buyer@example.com"})
    session = _session(client, cus.id)
    assert session.url is not None

    status, headers, page = fetch("GET", session.url)
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    text = page.decode()
    assert "25.00 USD" in text
    assert f"/checkout/{session.id}/pay" in text
    assert "http://app.test/billing/cancel" in text
    assert "<script" not in text

    status, headers, _ = fetch("POST", f"{session.url}/pay", {"method": "card"})
    assert status == 303
    location = urlsplit(headers["Location"])
    assert location.path == "/billing/success"
    assert parse_qs(location.query) == {"session_id": [session.id]}

    delivery = receiver.wait_for("checkout.session.completed")[0]
    event = stripe.Webhook.construct_event(delivery.body, delivery.signature, WEBHOOK_SECRET)
    assert event.type == "checkout.session.completed"
    assert event.id.startswith("evt_")
    assert event.livemode is False
    obj = event.data.object
    assert obj["id"] == session.id
    assert (obj["status"], obj["payment_status"]) == ("complete", "paid")
    assert obj["client_reference_id"] == "tenant-7"
    assert delivery.headers["Content-Type"].startswith("application/json")

    paid = client.v1.checkout.sessions.retrieve(
        session.id, params={"expand": ["payment_intent", "payment_intent.latest_charge"]}
    )
    intent = paid.payment_intent
    assert isinstance(intent, stripe.PaymentIntent)
    assert intent.status == "succeeded"
    assert intent.amount_received == 2500
    assert intent.setup_future_usage == "off_session"
    assert isinstance(intent.latest_charge, stripe.Charge)
    assert intent.latest_charge.paid is True

    customer = client.v1.customers.retrieve(cus.id)
    assert customer.invoice_settings is not None
    default_pm = customer.invoice_settings.default_payment_method
    assert isinstance(default_pm, str)
    assert default_pm.startswith("pm_")
    assert client.v1.payment_methods.retrieve(default_pm).customer == cus.id

    server.wait_for_webhooks()
    types = receiver.types()
    assert types.index("payment_intent.succeeded") < types.index("checkout.session.completed")
    assert "payment_method.attached" in types


def test_webhook_signature_rejects_tampering_wrong_secret_and_stale_timestamps(
    client: stripe.StripeClient, receiver: Receiver
) -> None:
    cus = client.v1.customers.create(params={"email": "sig@example.com"})
    delivery = receiver.wait_for("customer.created")[0]
    stripe.Webhook.construct_event(delivery.body, delivery.signature, WEBHOOK_SECRET)
    assert cus.id in delivery.body.decode()

    tampered = delivery.body.replace(cus.id.encode(), b"cus_forged00000000")
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(tampered, delivery.signature, WEBHOOK_SECRET)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(delivery.body, delivery.signature, "whsec_wrong")
    stale = signature_header(delivery.body, WEBHOOK_SECRET, int(time.time()) - 3600)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(delivery.body, stale, WEBHOOK_SECRET)
    fresh = signature_header(delivery.body, WEBHOOK_SECRET)
    assert stripe.Webhook.construct_event(delivery.body, fresh, WEBHOOK_SECRET).id


def test_delayed_payment_completes_unpaid_then_settles(
    client: stripe.StripeClient, server: StripeServer, receiver: Receiver
) -> None:
    cus = client.v1.customers.create(params={"email": "bank@example.com"})
    session = _session(client, cus.id, save_card=False)
    status, _, _ = fetch("POST", f"{server.url}/checkout/{session.id}/pay", {"method": "delayed"})
    assert status == 303

    completed = receiver.wait_for("checkout.session.completed")[0].event
    assert completed["data"]["object"]["payment_status"] == "unpaid"
    pending = client.v1.checkout.sessions.retrieve(session.id)
    assert (pending.status, pending.payment_status) == ("complete", "unpaid")
    assert isinstance(pending.payment_intent, str)
    assert client.v1.payment_intents.retrieve(pending.payment_intent).status == "processing"

    control(server, f"/_test/checkout/{session.id}/settle")
    succeeded = receiver.wait_for("checkout.session.async_payment_succeeded")[0]
    event = stripe.Webhook.construct_event(succeeded.body, succeeded.signature, WEBHOOK_SECRET)
    assert event.data.object["payment_status"] == "paid"
    assert client.v1.payment_intents.retrieve(pending.payment_intent).status == "succeeded"


def test_declined_card_keeps_the_session_open(
    client: stripe.StripeClient, server: StripeServer, receiver: Receiver
) -> None:
    cus = client.v1.customers.create(params={"email": "declined@example.com"})
    session = _session(client, cus.id)
    status, _, page = fetch(
        "POST", f"{server.url}/checkout/{session.id}/pay", {"method": "decline"}
    )
    assert status == 402
    assert "Your card was declined." in page.decode()
    assert client.v1.checkout.sessions.retrieve(session.id).status == "open"
    receiver.wait_for("payment_intent.payment_failed")

    fetch("POST", f"{server.url}/checkout/{session.id}/pay", {"method": "card"})
    done = client.v1.checkout.sessions.retrieve(session.id)
    assert (done.status, done.payment_status) == ("complete", "paid")


def test_expired_session_cannot_be_paid(client: stripe.StripeClient, server: StripeServer) -> None:
    cus = client.v1.customers.create(params={"email": "late@example.com"})
    session = _session(client, cus.id)
    expired = client.v1.checkout.sessions.expire(session.id)
    assert expired.status == "expired"
    status, _, page = fetch("POST", f"{server.url}/checkout/{session.id}/pay", {"method": "card"})
    assert status == 409
    assert "expired" in page.decode()
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.checkout.sessions.expire(session.id)


def test_sessions_expire_when_the_clock_passes_expires_at(
    client: stripe.StripeClient, server: StripeServer, receiver: Receiver
) -> None:
    cus = client.v1.customers.create(params={"email": "clock@example.com"})
    session = _session(client, cus.id)
    control(server, "/_test/clock", advance=24 * 3600 + 1)
    assert client.v1.checkout.sessions.retrieve(session.id).status == "expired"
    receiver.wait_for("checkout.session.expired")


def test_resend_and_delivery_log(
    client: stripe.StripeClient, server: StripeServer, receiver: Receiver
) -> None:
    client.v1.customers.create(params={"email": "again@example.com"})
    first = receiver.wait_for("customer.created")[0].event
    control(server, f"/_test/events/{first['id']}/resend")
    both = receiver.wait_for("customer.created", count=2)
    assert {d.event["id"] for d in both} == {first["id"]}
    # The log is written after the receiver answered: wait until delivery is idle.
    assert control(server, "/_test/webhooks/wait", timeout=5) == {"idle": True}

    _, _, body = fetch("GET", f"{server.url}/_test/webhooks")
    log = json.loads(body)["data"]
    assert [a["resend"] for a in log if a["event_id"] == first["id"]] == [False, True]
    _, _, body = fetch("GET", f"{server.url}/_test/events?type=customer.created")
    assert [e["id"] for e in json.loads(body)["data"]] == [first["id"]]


def test_failed_deliveries_are_retried_in_order(
    client: stripe.StripeClient, server: StripeServer, receiver: Receiver
) -> None:
    receiver.fail_next = 2
    cus = client.v1.customers.create(params={"email": "retry@example.com"})
    client.v1.customers.update(cus.id, params={"name": "Second"})
    assert server.wait_for_webhooks()
    assert receiver.types() == ["customer.created", "customer.updated"]
    attempts = [a for a in server.dispatcher.attempts() if a["event_type"] == "customer.created"]
    assert [(a["attempt"], a["status"]) for a in attempts] == [(1, 500), (2, 500), (3, 200)]
    event = client.v1.events.list(params={"type": "customer.created"}).data[0]
    assert event.pending_webhooks == 0


def test_webhook_url_can_change_at_runtime(
    client: stripe.StripeClient, server: StripeServer, receiver: Receiver
) -> None:
    control(server, "/_test/config", webhook_url="")
    client.v1.customers.create(params={"email": "quiet@example.com"})
    assert server.wait_for_webhooks()
    assert receiver.types() == []
    control(server, "/_test/config", webhook_url=receiver.url)
    client.v1.customers.create(params={"email": "loud@example.com"})
    assert receiver.wait_for("customer.created")[0].event["data"]["object"]["email"] == (
        "loud@example.com"
    )
