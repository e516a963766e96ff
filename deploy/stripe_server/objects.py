"""Stripe objects in their current shapes, built from Stripe's published fixtures.

``fixtures3.json`` (beside this file; Stripe's ``openapi/fixtures3.json``, MIT, licence in
``LICENSE-stripe-openapi``) holds one example object per resource. Every builder here
starts from a deep copy of that example — so the set of fields is exactly the current
API's — and then sets what the request decided, resetting the example's placeholder
values (random numbers, "obj_123" sub-objects) to what a fresh test-mode object has.
:func:`_set` refuses top-level fields the example lacks, so shapes cannot drift.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import json
import secrets
import string
from decimal import Decimal
from pathlib import Path
from typing import Any

Obj = dict[str, Any]

FIXTURES_PATH = Path(__file__).with_name("fixtures3.json")
_ALPHABET = string.ascii_letters + string.digits


@functools.cache
def _resources() -> dict[str, Any]:
    with FIXTURES_PATH.open(encoding="utf-8") as handle:
        data = json.load(handle)
    resources = data["resources"]
    if not isinstance(resources, dict):
        raise TypeError(f"{FIXTURES_PATH} has no resources object")
    return resources


def template(name: str) -> Obj:
    """A deep copy of the fixture object for resource ``name`` (``"checkout.session"``)."""
    value = _resources()[name]
    if not isinstance(value, dict):
        raise TypeError(f"fixture {name!r} is not an object")
    return copy.deepcopy(value)


def template_keys(name: str) -> set[str]:
    """The top-level field names of resource ``name`` in the current API."""
    return set(_resources()[name])


def new_id(prefix: str, length: int = 24) -> str:
    """A random id with Stripe's prefix (``cus_``, ``cs_test_``...)."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def _set(obj: Obj, **values: Any) -> Obj:
    for key, value in values.items():
        if key not in obj:
            raise KeyError(f"{obj.get('object')} has no field {key!r}")
        obj[key] = value
    return obj


def empty_address() -> Obj:
    """An address with every line unset."""
    return {
        "city": None,
        "country": None,
        "line1": None,
        "line2": None,
        "postal_code": None,
        "state": None,
    }


def list_object(data: list[Obj], url: str, *, has_more: bool = False) -> Obj:
    """A Stripe list (``{"object": "list", "data": [...]}``)."""
    return {"object": "list", "data": data, "has_more": has_more, "url": url}


def decimal_text(value: Decimal) -> str:
    """A decimal as Stripe writes it: no exponent, no trailing zeros."""
    text = format(value.normalize(), "f")
    return text if text != "-0" else "0"


def number(value: Decimal) -> int | float:
    """A decimal as a JSON number: an int when whole."""
    return int(value) if value == value.to_integral_value() else float(value)


# --- core -------------------------------------------------------------------------------


def customer(object_id: str, created: int, invoice_prefix: str) -> Obj:
    """A new customer."""
    obj = template("customer")
    return _set(
        obj,
        id=object_id,
        created=created,
        address=None,
        currency=None,
        discount=None,
        email=None,
        invoice_prefix=invoice_prefix,
        invoice_settings={
            "custom_fields": None,
            "default_payment_method": None,
            "footer": None,
            "rendering_options": None,
        },
        metadata={},
        next_invoice_sequence=1,
        shipping=None,
        livemode=False,
    )


def product(object_id: str, created: int, name: str) -> Obj:
    """A new product."""
    obj = template("product")
    return _set(
        obj,
        id=object_id,
        created=created,
        updated=created,
        name=name,
        description=None,
        default_price=None,
        images=[],
        marketing_features=[],
        metadata={},
        package_dimensions=None,
        livemode=False,
        type="service",
    )


def price(object_id: str, created: int, product_id: str, currency: str) -> Obj:
    """A new price; the caller sets amounts and ``recurring``."""
    obj = template("price")
    return _set(
        obj,
        id=object_id,
        created=created,
        product=product_id,
        currency=currency,
        custom_unit_amount=None,
        metadata={},
        recurring=None,
        transform_quantity=None,
        type="one_time",
        livemode=False,
    )


def plan_from_price(price_obj: Obj) -> Obj:
    """The legacy ``plan`` mirror of a recurring price (as on subscription items)."""
    obj = template("plan")
    recurring = price_obj.get("recurring") or {}
    return _set(
        obj,
        id=price_obj["id"],
        active=price_obj["active"],
        amount=price_obj["unit_amount"],
        amount_decimal=price_obj["unit_amount_decimal"],
        billing_scheme=price_obj["billing_scheme"],
        created=price_obj["created"],
        currency=price_obj["currency"],
        interval=recurring.get("interval"),
        interval_count=recurring.get("interval_count"),
        livemode=False,
        metadata=price_obj["metadata"],
        meter=recurring.get("meter"),
        nickname=price_obj["nickname"],
        product=price_obj["product"],
        tiers_mode=None,
        transform_usage=None,
        trial_period_days=None,
        usage_type=recurring.get("usage_type"),
    )


def payment_method(object_id: str, created: int, kind: str, last4: str) -> Obj:
    """A test payment method: a Visa card, or a SEPA debit account (``kind="sepa_debit"``)."""
    obj = template("payment_method")
    _set(
        obj,
        id=object_id,
        created=created,
        billing_details={
            "address": empty_address(),
            "email": None,
            "name": None,
            "phone": None,
            "tax_id": None,
        },
        customer=None,
        metadata={},
        livemode=False,
        type=kind,
    )
    if kind == "card":
        card = obj["card"]
        card.update(
            last4=last4,
            fingerprint=new_id("", 16),
            generated_from=None,
            wallet=None,
            exp_year=2034,
            exp_month=12,
        )
    else:
        del obj["card"]
        obj[kind] = {
            "bank_code": "37040044",
            "branch_code": "",
            "country": "DE",
            "fingerprint": new_id("", 16),
            "generated_from": {"charge": None, "setup_attempt": None},
            "last4": last4,
        }
    return obj


def event(
    object_id: str,
    created: int,
    type_: str,
    data_object: Obj,
    api_version: str,
    request: Obj,
    previous_attributes: Obj | None = None,
) -> Obj:
    """An event whose ``data.object`` is a snapshot of the object at this moment."""
    obj = template("event")
    data: Obj = {"object": copy.deepcopy(data_object)}
    if previous_attributes is not None:
        data["previous_attributes"] = previous_attributes
    return _set(
        obj,
        id=object_id,
        created=created,
        type=type_,
        data=data,
        api_version=api_version,
        livemode=False,
        pending_webhooks=0,
        request=request,
    )


# --- billing ----------------------------------------------------------------------------


def meter(object_id: str, created: int) -> Obj:
    """A new billing meter; the caller sets names and settings."""
    obj = template("billing.meter")
    return _set(
        obj,
        id=object_id,
        created=created,
        updated=created,
        livemode=False,
        status="active",
        status_transitions={"deactivated_at": None},
        event_time_window=None,
    )


def meter_event(
    created: int, event_name: str, identifier: str, payload: dict[str, str], timestamp: int
) -> Obj:
    """A billing meter event, as the create call answers it."""
    obj = template("billing.meter_event")
    return _set(
        obj,
        created=created,
        event_name=event_name,
        identifier=identifier,
        livemode=False,
        payload=payload,
        timestamp=timestamp,
    )


def rfc3339(timestamp: int) -> str:
    """A unix time as the v2 API writes times: ``2024-06-01T12:00:00.000Z`` (UTC)."""
    moment = dt.datetime.fromtimestamp(timestamp, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def meter_event_session(object_id: str, token: str, created: int, expires_at: int) -> Obj:
    """A v2 meter event session (not in the v1 fixtures; the fields are the API reference's
    ``v2.billing.meter_event_session``, times as RFC 3339 strings)."""
    return {
        "id": object_id,
        "object": "v2.billing.meter_event_session",
        "authentication_token": token,
        "created": rfc3339(created),
        "expires_at": rfc3339(expires_at),
        "livemode": False,
    }


def meter_event_summary(object_id: str, meter_id: str, start: int, end: int, value: Decimal) -> Obj:
    """An aggregated usage window of one meter for one customer."""
    obj = template("billing.meter_event_summary")
    return _set(
        obj,
        id=object_id,
        meter=meter_id,
        start_time=start,
        end_time=end,
        aggregated_value=number(value),
        livemode=False,
    )


def credit_grant(object_id: str, created: int, customer_id: str) -> Obj:
    """A new credit grant; the caller sets amount and applicability."""
    obj = template("billing.credit_grant")
    return _set(
        obj,
        id=object_id,
        created=created,
        updated=created,
        customer=customer_id,
        effective_at=created,
        expires_at=None,
        livemode=False,
        metadata={},
        name=None,
        test_clock=None,
        voided_at=None,
        customer_account=None,
        priority=50,
    )


def monetary(value: int, currency: str) -> Obj:
    """A billing-credits amount: ``{"monetary": {...}, "type": "monetary"}``."""
    return {"monetary": {"currency": currency, "value": value}, "type": "monetary"}


def credit_balance_transaction(
    object_id: str,
    created: int,
    grant_id: str,
    *,
    credit: Obj | None = None,
    debit: Obj | None = None,
) -> Obj:
    """One movement of a grant's balance: ``credit`` (granted) or ``debit`` (applied)."""
    obj = template("billing.credit_balance_transaction")
    return _set(
        obj,
        id=object_id,
        created=created,
        effective_at=created,
        credit_grant=grant_id,
        credit=credit,
        debit=debit,
        livemode=False,
        test_clock=None,
        type="credit" if credit is not None else "debit",
    )


def subscription(object_id: str, created: int, customer_id: str, currency: str) -> Obj:
    """A new active subscription; the caller fills ``items``."""
    obj = template("subscription")
    return _set(
        obj,
        id=object_id,
        created=created,
        customer=customer_id,
        currency=currency,
        billing_cycle_anchor=created,
        billing_cycle_anchor_config=None,
        cancel_at=None,
        canceled_at=None,
        cancel_at_period_end=False,
        cancellation_details={"comment": None, "feedback": None, "reason": None},
        collection_method="charge_automatically",
        days_until_due=None,
        default_payment_method=None,
        description=None,
        discounts=[],
        ended_at=None,
        invoice_settings={"account_tax_ids": None, "issuer": {"type": "self"}},
        items=None,
        latest_invoice=None,
        livemode=False,
        metadata={},
        next_pending_invoice_item_invoice=None,
        pause_collection=None,
        payment_settings={
            "payment_method_options": None,
            "payment_method_types": None,
            "save_default_payment_method": "off",
        },
        pending_invoice_item_interval=None,
        pending_setup_intent=None,
        pending_update=None,
        start_date=created,
        status="active",
        transfer_data=None,
        trial_end=None,
        trial_settings={"end_behavior": {"missing_payment_method": "create_invoice"}},
        trial_start=None,
        billing_thresholds=None,
        billing_mode={"type": "classic", "flexible": None},
        managed_payments=None,
        billing_schedules=[],
    )


def subscription_item(
    object_id: str,
    created: int,
    subscription_id: str,
    price_obj: Obj,
    quantity: int | None,
    period: tuple[int, int],
) -> Obj:
    """A subscription item with its price (and legacy plan) embedded."""
    obj = template("subscription_item")
    return _set(
        obj,
        id=object_id,
        created=created,
        subscription=subscription_id,
        discounts=[],
        metadata={},
        price=copy.deepcopy(price_obj),
        plan=plan_from_price(price_obj),
        quantity=quantity,
        tax_rates=[],
        current_period_start=period[0],
        current_period_end=period[1],
        billing_thresholds=None,
    )


def invoice(object_id: str, created: int, customer_obj: Obj, currency: str) -> Obj:
    """A new draft invoice for a customer; the caller adds lines and totals."""
    obj = template("invoice")
    return _set(
        obj,
        id=object_id,
        created=created,
        account_name="Cango (Stripe test server)",
        amount_due=0,
        amount_paid=0,
        amount_remaining=0,
        amount_overpaid=0,
        attempt_count=0,
        attempted=False,
        auto_advance=True,
        automatic_tax={
            "enabled": False,
            "liability": None,
            "status": None,
            "disabled_reason": None,
            "provider": None,
        },
        billing_reason="subscription_cycle",
        currency=currency,
        customer=customer_obj["id"],
        customer_address=customer_obj["address"],
        customer_email=customer_obj["email"],
        customer_name=customer_obj["name"],
        customer_phone=customer_obj["phone"],
        customer_shipping=None,
        customer_tax_ids=[],
        description=None,
        discounts=[],
        due_date=None,
        effective_at=None,
        ending_balance=None,
        from_invoice=None,
        hosted_invoice_url=None,
        invoice_pdf=None,
        last_finalization_error=None,
        lines=list_object([], f"/v1/invoices/{object_id}/lines"),
        livemode=False,
        metadata={},
        next_payment_attempt=None,
        number=None,
        parent=None,
        payment_settings={
            "default_mandate": None,
            "payment_method_options": None,
            "payment_method_types": None,
        },
        post_payment_credit_notes_amount=0,
        pre_payment_credit_notes_amount=0,
        rendering=None,
        shipping_cost=None,
        shipping_details=None,
        starting_balance=0,
        status="draft",
        status_transitions={
            "finalized_at": None,
            "marked_uncollectible_at": None,
            "paid_at": None,
            "voided_at": None,
        },
        subscription=None,
        subtotal=0,
        subtotal_excluding_tax=0,
        total=0,
        total_discount_amounts=[],
        total_excluding_tax=0,
        total_pretax_credit_amounts=[],
        total_taxes=[],
        webhooks_delivered_at=None,
        automatically_finalizes_at=None,
        customer_account=None,
    )


def invoice_line(
    object_id: str,
    invoice_id: str,
    *,
    amount: int,
    currency: str,
    description: str,
    period: tuple[int, int],
    quantity: Decimal,
    price_obj: Obj,
    subscription_id: str,
    subscription_item_id: str,
) -> Obj:
    """An invoice line for one subscription item's usage in a period."""
    obj = template("line_item")
    whole = quantity == quantity.to_integral_value()
    return _set(
        obj,
        id=object_id,
        invoice=invoice_id,
        amount=amount,
        currency=currency,
        description=description,
        discount_amounts=[],
        discountable=True,
        discounts=[],
        livemode=False,
        metadata={},
        period={"start": period[0], "end": period[1]},
        quantity=int(quantity) if whole else None,
        quantity_decimal=decimal_text(quantity),
        subscription=subscription_id,
        pretax_credit_amounts=[],
        taxes=[],
        parent={
            "invoice_item_details": None,
            "subscription_item_details": {
                "invoice_item": None,
                "proration": False,
                "proration_details": {"credited_items": None},
                "subscription": subscription_id,
                "subscription_item": subscription_item_id,
            },
            "type": "subscription_item_details",
        },
        pricing={
            "price_details": {"price": price_obj["id"], "product": price_obj["product"]},
            "type": "price_details",
            "unit_amount_decimal": price_obj["unit_amount_decimal"],
        },
        subtotal=amount,
    )


# --- payments ---------------------------------------------------------------------------


def checkout_session(object_id: str, created: int, url: str) -> Obj:
    """A new open Checkout Session (payment mode); the caller sets amounts and URLs."""
    obj = template("checkout.session")
    return _set(
        obj,
        id=object_id,
        created=created,
        expires_at=created + 24 * 3600,
        url=url,
        after_expiration=None,
        allow_promotion_codes=None,
        automatic_tax={"enabled": False, "liability": None, "status": None, "provider": None},
        billing_address_collection=None,
        cancel_url=None,
        client_reference_id=None,
        client_secret=None,
        consent=None,
        consent_collection=None,
        custom_fields=[],
        custom_text={
            "after_submit": None,
            "shipping_address": None,
            "submit": None,
            "terms_of_service_acceptance": None,
        },
        customer=None,
        customer_creation=None,
        customer_details=None,
        customer_email=None,
        invoice=None,
        invoice_creation={
            "enabled": False,
            "invoice_data": {
                "account_tax_ids": None,
                "custom_fields": None,
                "description": None,
                "footer": None,
                "issuer": None,
                "metadata": {},
                "rendering_options": None,
            },
        },
        livemode=False,
        locale=None,
        metadata={},
        mode="payment",
        payment_intent=None,
        payment_link=None,
        payment_method_collection="if_required",
        payment_method_configuration_details=None,
        payment_method_options={},
        payment_method_types=["card"],
        payment_status="unpaid",
        phone_number_collection={"enabled": False},
        recovered_from=None,
        saved_payment_method_options=None,
        setup_intent=None,
        shipping_address_collection=None,
        shipping_cost=None,
        shipping_options=[],
        status="open",
        submit_type=None,
        subscription=None,
        success_url=None,
        total_details={"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        ui_mode="hosted",
        adaptive_pricing={"enabled": False},
        discounts=[],
        collected_information=None,
        permissions=None,
        wallet_options=None,
        origin_context=None,
        currency_conversion=None,
        customer_account=None,
        integration_identifier=None,
        managed_payments=None,
    )


def checkout_item(object_id: str, price_obj: Obj, quantity: int, description: str) -> Obj:
    """A Checkout Session line item."""
    obj = template("item")
    amount = (price_obj["unit_amount"] or 0) * quantity
    return _set(
        obj,
        id=object_id,
        amount_discount=0,
        amount_subtotal=amount,
        amount_tax=0,
        amount_total=amount,
        currency=price_obj["currency"],
        description=description,
        price=copy.deepcopy(price_obj),
        quantity=quantity,
        metadata={},
        adjustable_quantity=None,
    )


def payment_intent(object_id: str, created: int, amount: int, currency: str) -> Obj:
    """A new payment intent awaiting a payment method."""
    obj = template("payment_intent")
    return _set(
        obj,
        id=object_id,
        created=created,
        amount=amount,
        currency=currency,
        amount_capturable=0,
        amount_details={"tip": {}},
        amount_received=0,
        automatic_payment_methods=None,
        canceled_at=None,
        client_secret=f"{object_id}_secret_{new_id('', 25)}",
        confirmation_method="automatic",
        customer=None,
        description=None,
        last_payment_error=None,
        latest_charge=None,
        livemode=False,
        metadata={},
        next_action=None,
        payment_method=None,
        payment_method_configuration_details=None,
        payment_method_options={},
        payment_method_types=["card"],
        processing=None,
        setup_future_usage=None,
        shipping=None,
        status="requires_payment_method",
        transfer_data=None,
        excluded_payment_method_types=None,
        customer_account=None,
        managed_payments=None,
    )


def charge(
    object_id: str,
    created: int,
    intent: Obj,
    method: Obj,
    status: str,
    receipt_url: str,
) -> Obj:
    """A charge of a payment intent with a payment method (``succeeded``/``pending``/``failed``)."""
    obj = template("charge")
    amount = intent["amount"]
    succeeded = status == "succeeded"
    details: Obj = {"type": method["type"]}
    if method["type"] == "card":
        card = template("charge")["payment_method_details"]["card"]
        card.update(
            amount_authorized=amount if succeeded else None,
            brand=method["card"]["brand"],
            last4=method["card"]["last4"],
            fingerprint=method["card"]["fingerprint"],
            exp_month=method["card"]["exp_month"],
            exp_year=method["card"]["exp_year"],
            installments=None,
            wallet=None,
            overcapture={"maximum_amount_capturable": amount, "status": "unavailable"},
            network_transaction_id=new_id("", 15) if succeeded else None,
        )
        details["card"] = card
    else:
        details[method["type"]] = {
            key: method[method["type"]][key]
            for key in ("bank_code", "branch_code", "country", "fingerprint", "last4")
        } | {"mandate": None}
    return _set(
        obj,
        id=object_id,
        created=created,
        amount=amount,
        amount_captured=amount if succeeded else 0,
        amount_refunded=0,
        balance_transaction=new_id("txn_") if succeeded else None,
        billing_details=copy.deepcopy(method["billing_details"]),
        captured=succeeded,
        currency=intent["currency"],
        customer=intent["customer"],
        description=intent["description"],
        disputed=False,
        failure_code=None,
        failure_message=None,
        livemode=False,
        metadata=copy.deepcopy(intent["metadata"]),
        outcome={
            "advice_code": None,
            "network_advice_code": None,
            "network_decline_code": None,
            "network_status": "approved_by_network",
            "reason": None,
            "risk_level": "normal",
            "risk_score": 20,
            "seller_message": "Payment complete.",
            "type": "authorized",
        },
        paid=succeeded,
        payment_intent=intent["id"],
        payment_method=method["id"],
        payment_method_details=details,
        receipt_url=receipt_url,
        refunded=False,
        refunds=list_object([], f"/v1/charges/{object_id}/refunds"),
        shipping=None,
        status=status,
        transfer_data=None,
        source=None,
    )


def refund(object_id: str, created: int, charge_obj: Obj, amount: int) -> Obj:
    """A succeeded refund of (part of) a charge."""
    obj = template("refund")
    destination: Obj = {"type": charge_obj["payment_method_details"]["type"]}
    if destination["type"] == "card":
        destination["card"] = {
            "reference": None,
            "reference_status": "pending",
            "reference_type": "acquirer_reference_number",
            "type": "refund",
        }
    else:
        destination[destination["type"]] = {}
    return _set(
        obj,
        id=object_id,
        created=created,
        amount=amount,
        balance_transaction=new_id("txn_"),
        charge=charge_obj["id"],
        currency=charge_obj["currency"],
        destination_details=destination,
        metadata={},
        payment_intent=charge_obj["payment_intent"],
        reason=None,
        status="succeeded",
        customer=charge_obj["customer"],
        payment_method=charge_obj["payment_method"],
    )
