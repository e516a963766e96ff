"""Off-session payments (auto top-up) and refunds."""

from __future__ import annotations

import pytest
import stripe

from deploy.stripe_server import StripeServer
from tests.stripe_server.support import WEBHOOK_SECRET, Receiver, control


@pytest.fixture
def saved_card(client: stripe.StripeClient) -> tuple[str, str]:
    cus = client.v1.customers.create(params={"email": "auto@example.com"})
    pm = client.v1.payment_methods.attach("pm_card_visa", params={"customer": cus.id})
    assert pm.id.startswith("pm_")
    assert pm.id != "pm_card_visa"
    assert pm.customer == cus.id
    return cus.id, pm.id


def _charge(
    client: stripe.StripeClient, customer: str, pm: str, key: str | None = None
) -> stripe.PaymentIntent:
    return client.v1.payment_intents.create(
        params={
            "amount": 2000,
            "currency": "usd",
            "customer": customer,
            "payment_method": pm,
            "off_session": True,
            "confirm": True,
            "metadata": {"topup_id": "auto-1"},
        },
        options={"idempotency_key": key} if key else None,
    )


def test_off_session_payment_succeeds(
    client: stripe.StripeClient, receiver: Receiver, saved_card: tuple[str, str]
) -> None:
    customer, pm = saved_card
    intent = _charge(client, customer, pm)
    assert intent.id.startswith("pi_")
    assert (intent.status, intent.amount_received, intent.payment_method) == ("succeeded", 2000, pm)
    assert isinstance(intent.latest_charge, str)
    assert intent.latest_charge.startswith("ch_")
    charge = client.v1.charges.retrieve(intent.latest_charge)
    assert (charge.paid, charge.amount, charge.payment_intent) == (True, 2000, intent.id)
    delivery = receiver.wait_for("payment_intent.succeeded")[0]
    event = stripe.Webhook.construct_event(delivery.body, delivery.signature, WEBHOOK_SECRET)
    assert event.data.object["metadata"].to_dict() == {"topup_id": "auto-1"}
    assert event.request is not None
    assert event.request.id is not None


def test_decline_is_a_card_error_and_replays_with_its_key(
    client: stripe.StripeClient,
    server: StripeServer,
    receiver: Receiver,
    saved_card: tuple[str, str],
) -> None:
    customer, pm = saved_card
    control(server, f"/_test/customers/{customer}/decline_next", decline_code="insufficient_funds")
    with pytest.raises(stripe.CardError) as info:
        _charge(client, customer, pm, key="auto-topup-1")
    error = info.value
    assert error.http_status == 402
    assert error.code == "card_declined"
    assert error.error is not None
    assert error.error.decline_code == "insufficient_funds"
    assert error.error.payment_intent is not None
    intent_id = error.error.payment_intent.id
    intent = client.v1.payment_intents.retrieve(intent_id)
    assert intent.status == "requires_payment_method"
    assert intent.last_payment_error is not None
    assert intent.last_payment_error.decline_code == "insufficient_funds"
    failed = receiver.wait_for("payment_intent.payment_failed")[0].event
    assert failed["data"]["object"]["id"] == intent_id

    # Retrying with the same key replays the decline; no second attempt is made.
    with pytest.raises(stripe.CardError) as again:
        _charge(client, customer, pm, key="auto-topup-1")
    assert again.value.error is not None
    assert again.value.error.payment_intent is not None
    assert again.value.error.payment_intent.id == intent_id
    assert again.value.headers is not None
    assert again.value.headers["Idempotent-Replayed"] == "true"

    # A new attempt (new key) goes through: the switch declined one charge only.
    assert _charge(client, customer, pm, key="auto-topup-2").status == "succeeded"


@pytest.mark.parametrize(
    ("magic", "code", "decline_code"),
    [
        ("pm_card_chargeDeclined", "card_declined", "generic_decline"),
        ("pm_card_chargeDeclinedInsufficientFunds", "card_declined", "insufficient_funds"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card", "expired_card"),
        ("pm_card_authenticationRequired", "authentication_required", "authentication_required"),
    ],
)
def test_magic_test_cards_decline(
    client: stripe.StripeClient, magic: str, code: str, decline_code: str
) -> None:
    cus = client.v1.customers.create(params={"email": "magic@example.com"})
    with pytest.raises(stripe.CardError) as info:
        _charge(client, cus.id, magic)
    assert info.value.code == code
    assert info.value.error is not None
    assert info.value.error.decline_code == decline_code


def test_payment_method_of_another_customer_is_refused(
    client: stripe.StripeClient, saved_card: tuple[str, str]
) -> None:
    _, pm = saved_card
    other = client.v1.customers.create(params={"email": "other@example.com"})
    with pytest.raises(stripe.InvalidRequestError):
        _charge(client, other.id, pm)


def test_refunds_send_charge_refunded(
    client: stripe.StripeClient, receiver: Receiver, saved_card: tuple[str, str]
) -> None:
    customer, pm = saved_card
    intent = _charge(client, customer, pm)
    partial = client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 500})
    assert partial.id.startswith("re_")
    assert (partial.status, partial.amount, partial.charge) == (
        "succeeded",
        500,
        intent.latest_charge,
    )
    first = receiver.wait_for("charge.refunded")[0]
    event = stripe.Webhook.construct_event(first.body, first.signature, WEBHOOK_SECRET)
    assert event.data.object["amount_refunded"] == 500
    assert event.data.object["refunded"] is False
    assert event.data.previous_attributes is not None
    receiver.wait_for("refund.created")

    with pytest.raises(stripe.InvalidRequestError) as too_much:
        client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 1600})
    assert too_much.value.code == "amount_too_large"

    rest = client.v1.refunds.create(params={"payment_intent": intent.id})
    assert rest.amount == 1500
    second = receiver.wait_for("charge.refunded", count=2)[1].event["data"]["object"]
    assert (second["amount_refunded"], second["refunded"]) == (2000, True)

    with pytest.raises(stripe.InvalidRequestError) as done:
        client.v1.refunds.create(params={"payment_intent": intent.id})
    assert done.value.code == "charge_already_refunded"
    listed = client.v1.refunds.list(params={"payment_intent": intent.id})
    assert [r.id for r in listed.data] == [rest.id, partial.id]
