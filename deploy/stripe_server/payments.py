"""Checkout Sessions, PaymentIntents, charges and refunds (``/v1/...``).

Card outcomes are decided by the payment method: Stripe's magic test ids
(``pm_card_visa``, ``pm_card_chargeDeclined``, ``pm_card_chargeDeclinedInsufficientFunds``,
``pm_card_authenticationRequired``...) or a switch set with
``POST /_test/customers/{id}/decline_next``, which makes that customer's next charge(s)
decline whatever the method.
"""

from __future__ import annotations

import copy
from typing import Any

from . import objects
from .core import (
    attach,
    create_product,
    currency_param,
    new_customer,
    new_payment_method,
    resolve_payment_method,
    set_amounts,
)
from .errors import StripeError, invalid, missing
from .formdata import (
    Params,
    as_list,
    check_params,
    get_bool,
    get_dict,
    get_int,
    get_metadata,
    get_str,
    merge_metadata,
    need_int,
    need_str,
)
from .objects import Obj
from .routing import Ctx, route
from .state import State, paginate

MINIMUM_CHARGE = {"usd": 50, "eur": 50, "gbp": 30, "cad": 50, "aud": 50, "chf": 50}

DECLINES: dict[str, tuple[str, str]] = {
    # decline code: (error code, message)
    "generic_decline": ("card_declined", "Your card was declined."),
    "insufficient_funds": ("card_declined", "Your card has insufficient funds."),
    "lost_card": ("card_declined", "Your card was declined."),
    "stolen_card": ("card_declined", "Your card was declined."),
    "do_not_honor": ("card_declined", "Your card was declined."),
    "expired_card": ("expired_card", "Your card has expired."),
    "incorrect_cvc": ("incorrect_cvc", "Your card's security code is incorrect."),
    "processing_error": (
        "processing_error",
        "An error occurred while processing your card. Try again in a little bit.",
    ),
    "authentication_required": (
        "authentication_required",
        "Your card was declined. This transaction requires authentication.",
    ),
}


def receipt_url(state: State, charge_id: str) -> str:
    """The receipt page this server serves for a charge."""
    return f"{state.public_url}/receipts/{charge_id}"


def check_minimum(amount: int, currency: str, param: str) -> None:
    """Stripe's minimum charge amount (``amount_too_small``)."""
    minimum = MINIMUM_CHARGE.get(currency)
    if minimum is not None and amount < minimum:
        raise invalid(
            param,
            f"Amount must be at least {minimum} {currency} minor units.",
            "amount_too_small",
        )


# --- charging ---------------------------------------------------------------------------


def _decline_code(state: State, method: Obj, customer_id: str | None) -> str | None:
    if customer_id is not None:
        queue = state.decline_next.get(customer_id)
        if queue:
            return queue.pop(0)
    decline = state.hidden(method["id"]).get("decline")
    return decline if isinstance(decline, str) else None


def succeed(state: State, intent: Obj, method: Obj, *, pending: bool = False) -> Obj:
    """Charge ``method`` for ``intent``: ``succeeded``, or ``processing`` (bank debit)."""
    status = "pending" if pending else "succeeded"
    ch = objects.charge(
        objects.new_id("ch_"),
        state.now(),
        intent,
        method,
        status,
        "",
    )
    ch["receipt_url"] = receipt_url(state, ch["id"])
    state.put(ch)
    intent.update(
        payment_method=method["id"],
        latest_charge=ch["id"],
        last_payment_error=None,
        payment_method_types=[method["type"]],
    )
    if pending:
        intent["status"] = "processing"
        state.emit("charge.pending", ch)
        state.emit("payment_intent.processing", intent)
    else:
        intent.update(status="succeeded", amount_received=intent["amount"])
        state.emit("charge.succeeded", ch)
        state.emit("payment_intent.succeeded", intent)
    return ch


def settle_charge(state: State, intent: Obj, succeeded: bool) -> Obj:
    """Finish a pending (bank debit) charge: it succeeds or fails."""
    ch = state.get("charge", intent["latest_charge"])
    if succeeded:
        ch.update(
            status="succeeded",
            paid=True,
            captured=True,
            amount_captured=ch["amount"],
            balance_transaction=objects.new_id("txn_"),
        )
        intent.update(status="succeeded", amount_received=intent["amount"])
        state.emit("charge.succeeded", ch)
        state.emit("payment_intent.succeeded", intent)
    else:
        ch.update(
            status="failed",
            failure_code="insufficient_funds",
            failure_message="The account has insufficient funds to cover this payment.",
        )
        ch["outcome"].update(
            network_status="declined_by_network",
            reason="insufficient_funds",
            seller_message="The bank returned the decline code `insufficient_funds`.",
            type="issuer_declined",
        )
        intent.update(
            status="requires_payment_method",
            payment_method=None,
            last_payment_error={
                "charge": ch["id"],
                "code": "insufficient_funds",
                "message": ch["failure_message"],
                "type": "card_error",
            },
        )
        state.emit("charge.failed", ch)
        state.emit("payment_intent.payment_failed", intent)
    return ch


def fail(state: State, intent: Obj, method: Obj, decline_code: str) -> StripeError:
    """Decline ``method`` for ``intent``; returns the 402 ``card_error`` to answer."""
    code, message = DECLINES.get(decline_code, ("card_declined", "Your card was declined."))
    charge_id: str | None = None
    if decline_code != "authentication_required":
        ch = objects.charge(objects.new_id("ch_"), state.now(), intent, method, "failed", "")
        ch["receipt_url"] = None
        ch.update(failure_code=code, failure_message=message)
        ch["outcome"].update(
            network_decline_code=None,
            network_status="declined_by_network",
            reason=decline_code,
            risk_level="normal",
            seller_message="The bank did not return any further details with this decline.",
            type="issuer_declined",
        )
        state.put(ch)
        charge_id = ch["id"]
    error: Obj = {
        "charge": charge_id,
        "code": code,
        "decline_code": decline_code,
        "doc_url": f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}",
        "message": message,
        "payment_method": copy.deepcopy(method),
        "type": "card_error",
    }
    intent.update(
        status="requires_payment_method",
        payment_method=None,
        latest_charge=charge_id or intent["latest_charge"],
        last_payment_error=error,
    )
    if charge_id is not None:
        state.emit("charge.failed", state.objects[charge_id])
    state.emit("payment_intent.payment_failed", intent)
    extra: dict[str, Any] = {
        "decline_code": decline_code,
        "payment_intent": copy.deepcopy(intent),
        "payment_method": copy.deepcopy(method),
        "request_log_url": None,
    }
    if charge_id is not None:
        extra["charge"] = charge_id
    return StripeError(402, message, type="card_error", code=code, extra=extra, store=True)


def charge_with(state: State, intent: Obj, method: Obj) -> StripeError | None:
    """Try to charge ``method`` for ``intent``: None on success, else the card error."""
    decline = _decline_code(state, method, intent["customer"])
    if decline is not None:
        return fail(state, intent, method, decline)
    succeed(state, intent, method)
    return None


def new_intent(
    state: State,
    amount: int,
    currency: str,
    customer_id: str | None,
    metadata: dict[str, str] | None = None,
    description: str | None = None,
) -> Obj:
    """Create and store a payment intent (``payment_intent.created``)."""
    intent = objects.payment_intent(objects.new_id("pi_"), state.now(), amount, currency)
    intent.update(customer=customer_id, metadata=metadata or {}, description=description)
    state.put(intent)
    state.emit("payment_intent.created", intent)
    return intent


# --- payment intents --------------------------------------------------------------------

INTENT_FIELDS = {
    "amount",
    "currency",
    "customer",
    "payment_method",
    "off_session",
    "confirm",
    "metadata",
    "description",
    "payment_method_types",
    "automatic_payment_methods",
    "setup_future_usage",
    "receipt_email",
    "statement_descriptor",
    "statement_descriptor_suffix",
    "capture_method",
    "error_on_requires_action",
    "return_url",
    "confirmation_method",
    "payment_method_options",
}


def _method_for(state: State, intent: Obj, pm_id: str) -> Obj:
    method = resolve_payment_method(state, pm_id)
    owner = method["customer"]
    if owner is not None and intent["customer"] is None:
        raise invalid(
            "payment_method",
            "The provided PaymentMethod belongs to a Customer: pass that customer too.",
            "payment_method_unexpected_state",
        )
    if owner is not None and owner != intent["customer"]:
        raise invalid(
            "payment_method",
            f"The provided PaymentMethod {pm_id} belongs to a different Customer.",
            "payment_method_unexpected_state",
        )
    return method


def _off_session(params: Params) -> bool:
    raw = params.get("off_session")
    if raw in (None, "", "false"):
        return False
    if raw in ("true", "one_off", "recurring"):
        return True
    raise invalid("off_session", f"Invalid off_session: {raw}")


def _confirm(state: State, intent: Obj, method: Obj) -> None:
    error = charge_with(state, intent, method)
    if error is not None:
        raise error


@route("POST", "/v1/payment_intents")
def intent_create(ctx: Ctx) -> Obj:
    """``POST /v1/payment_intents``; with ``confirm=true`` it charges at once (402 on decline)."""
    state, params = ctx.state, ctx.params
    check_params(params, INTENT_FIELDS)
    amount = need_int(params, "amount", minimum=1)
    currency = currency_param(params)
    check_minimum(amount, currency, "amount")
    customer_id = get_str(params, "customer")
    if customer_id is not None:
        state.get("customer", customer_id, param="customer")
    confirm = bool(get_bool(params, "confirm"))
    off_session = _off_session(params)
    if off_session and not confirm:
        raise invalid("off_session", "off_session can only be used when confirm=true.")
    pm_id = get_str(params, "payment_method")
    intent = objects.payment_intent(objects.new_id("pi_"), state.now(), amount, currency)
    intent.update(
        customer=customer_id,
        metadata=merge_metadata({}, get_metadata(params)),
        description=get_str(params, "description"),
        receipt_email=get_str(params, "receipt_email"),
        setup_future_usage=get_str(
            params, "setup_future_usage", choices=("on_session", "off_session")
        ),
        capture_method=get_str(params, "capture_method", choices=("automatic",)) or "automatic",
    )
    if "automatic_payment_methods" in params:
        apm = get_dict(params, "automatic_payment_methods")
        intent["automatic_payment_methods"] = {
            "allow_redirects": get_str(apm, "allow_redirects") or "always",
            "enabled": bool(get_bool(apm, "enabled", prefix="automatic_payment_methods")),
        }
    method = _method_for(state, intent, pm_id) if pm_id is not None else None
    if confirm and method is None:
        raise invalid(
            "payment_method",
            "You cannot confirm this PaymentIntent because it's missing a payment method.",
            "payment_intent_unexpected_state",
        )
    state.put(intent)
    state.emit("payment_intent.created", intent)
    if method is not None:
        intent["payment_method"] = method["id"]
        intent["status"] = "requires_confirmation"
    if confirm and method is not None:
        _confirm(state, intent, method)
    return intent


@route("POST", "/v1/payment_intents/{id}/confirm")
def intent_confirm(ctx: Ctx) -> Obj:
    """``POST /v1/payment_intents/{id}/confirm`` (``payment_method``, ``off_session``)."""
    state, params = ctx.state, ctx.params
    check_params(
        params, {"payment_method", "off_session", "return_url", "error_on_requires_action"}
    )
    intent = state.get("payment_intent", ctx.args["id"], label="payment_intent")
    if intent["status"] not in ("requires_payment_method", "requires_confirmation"):
        raise invalid(
            None,
            f"This PaymentIntent's status is {intent['status']}, so it cannot be confirmed.",
            "payment_intent_unexpected_state",
        )
    _off_session(params)
    pm_id = get_str(params, "payment_method") or intent["payment_method"]
    if pm_id is None:
        raise missing("payment_method")
    _confirm(state, intent, _method_for(state, intent, pm_id))
    return intent


@route("GET", "/v1/payment_intents/{id}")
def intent_retrieve(ctx: Ctx) -> Obj:
    """``GET /v1/payment_intents/{id}``."""
    return ctx.state.get("payment_intent", ctx.args["id"], label="payment_intent")


@route("GET", "/v1/payment_intents")
def intent_list(ctx: Ctx) -> Obj:
    """``GET /v1/payment_intents`` (``customer`` filter)."""
    check_params(ctx.params, {"customer", "limit", "starting_after", "ending_before"})
    customer_id = get_str(ctx.params, "customer")
    items = ctx.state.all(
        "payment_intent", lambda p: customer_id is None or p["customer"] == customer_id
    )
    return paginate(items, ctx.params, "/v1/payment_intents")


@route("GET", "/v1/charges/{id}")
def charge_retrieve(ctx: Ctx) -> Obj:
    """``GET /v1/charges/{id}``."""
    return ctx.state.get("charge", ctx.args["id"])


# --- refunds ----------------------------------------------------------------------------


@route("POST", "/v1/refunds")
def refund_create(ctx: Ctx) -> Obj:
    """``POST /v1/refunds`` (``payment_intent`` or ``charge``; ``amount`` defaults to the rest)."""
    state, params = ctx.state, ctx.params
    check_params(params, {"payment_intent", "charge", "amount", "reason", "metadata"})
    pi_id = get_str(params, "payment_intent")
    charge_id = get_str(params, "charge")
    if pi_id is None and charge_id is None:
        raise missing("payment_intent")
    if pi_id is not None:
        intent = state.get("payment_intent", pi_id, param="payment_intent", label="payment_intent")
        if intent["status"] != "succeeded" or intent["latest_charge"] is None:
            raise invalid(
                "payment_intent",
                f"This PaymentIntent ({pi_id}) does not have a successful charge to refund.",
                "charge_not_refundable",
            )
        if charge_id is not None and charge_id != intent["latest_charge"]:
            raise invalid("charge", "The charge does not belong to the PaymentIntent.")
        charge_id = intent["latest_charge"]
    if charge_id is None:
        raise missing("charge")
    ch = state.get("charge", charge_id, param="charge")
    if ch["status"] != "succeeded":
        raise invalid("charge", f"Charge {charge_id} has not succeeded.", "charge_not_refundable")
    remaining = ch["amount"] - ch["amount_refunded"]
    if remaining <= 0:
        raise invalid(
            "charge", f"Charge {charge_id} has already been refunded.", "charge_already_refunded"
        )
    amount = get_int(params, "amount", minimum=1)
    if amount is None:
        amount = remaining
    if amount > remaining:
        raise invalid(
            "amount",
            f"Refund amount ({amount}) is greater than unrefunded amount on charge ({remaining})",
            "amount_too_large",
        )
    refund = objects.refund(objects.new_id("re_"), state.now(), ch, amount)
    refund["reason"] = get_str(
        params, "reason", choices=("duplicate", "fraudulent", "requested_by_customer")
    )
    refund["metadata"] = merge_metadata({}, get_metadata(params))
    state.put(refund)
    previous = {"amount_refunded": ch["amount_refunded"], "refunded": ch["refunded"]}
    ch["amount_refunded"] += amount
    ch["refunded"] = ch["amount_refunded"] == ch["amount"]
    ch["refunds"]["data"].insert(0, copy.deepcopy(refund))
    state.emit("refund.created", refund)
    state.emit("charge.refunded", ch, previous)
    return refund


@route("GET", "/v1/refunds/{id}")
def refund_retrieve(ctx: Ctx) -> Obj:
    """``GET /v1/refunds/{id}``."""
    return ctx.state.get("refund", ctx.args["id"])


@route("GET", "/v1/refunds")
def refund_list(ctx: Ctx) -> Obj:
    """``GET /v1/refunds`` (``payment_intent``/``charge`` filters)."""
    check_params(
        ctx.params, {"payment_intent", "charge", "limit", "starting_after", "ending_before"}
    )
    pi_id = get_str(ctx.params, "payment_intent")
    charge_id = get_str(ctx.params, "charge")
    items = ctx.state.all(
        "refund",
        lambda r: (
            (pi_id is None or r["payment_intent"] == pi_id)
            and (charge_id is None or r["charge"] == charge_id)
        ),
    )
    return paginate(items, ctx.params, "/v1/refunds")


# --- checkout sessions ------------------------------------------------------------------

SESSION_FIELDS = {
    "mode",
    "customer",
    "customer_email",
    "customer_creation",
    "line_items",
    "success_url",
    "cancel_url",
    "client_reference_id",
    "metadata",
    "payment_intent_data",
    "expires_at",
    "currency",
    "payment_method_types",
    "locale",
    "submit_type",
    "ui_mode",
    "allow_promotion_codes",
    "billing_address_collection",
    "invoice_creation",
}


def _line_item(state: State, raw: Any, index: int) -> Obj:
    prefix = f"line_items[{index}]"
    if not isinstance(raw, dict):
        raise invalid(prefix, f"Invalid object: {prefix}")
    check_params(raw, {"price", "price_data", "quantity", "adjustable_quantity"}, prefix)
    quantity = get_int(raw, "quantity", prefix=prefix, minimum=1)
    if quantity is None:
        raise missing(f"{prefix}[quantity]")
    price_id = get_str(raw, "price", prefix=prefix)
    if price_id is not None:
        price = state.get("price", price_id, param=f"{prefix}[price]")
        if price["type"] != "one_time":
            raise invalid(
                f"{prefix}[price]",
                "You must specify a one-time price in payment mode; recurring prices need "
                "subscription mode.",
            )
        if not price["active"]:
            raise invalid(f"{prefix}[price]", f"The price {price_id} is not active.")
    else:
        data = get_dict(raw, "price_data", prefix=prefix)
        if not data:
            raise missing(f"{prefix}[price]")
        data_prefix = f"{prefix}[price_data]"
        check_params(
            data,
            {"currency", "unit_amount", "unit_amount_decimal", "product", "product_data"}
            | {"tax_behavior"},
            data_prefix,
        )
        currency = currency_param(data, prefix=data_prefix)
        product_id = get_str(data, "product", prefix=data_prefix)
        if product_id is not None:
            state.get("product", product_id, param=f"{data_prefix}[product]")
        elif "product_data" in data:
            product_data = get_dict(data, "product_data", prefix=data_prefix)
            product_id = create_product(state, product_data, f"{data_prefix}[product_data]")["id"]
        else:
            raise missing(f"{data_prefix}[product]")
        price = objects.price(objects.new_id("price_"), state.now(), product_id, currency)
        set_amounts(price, data, data_prefix)
        price["active"] = False
        state.put(price)
    if price["unit_amount"] is None:
        raise invalid(
            f"{prefix}[price]",
            "Checkout in payment mode needs whole-unit prices (unit_amount).",
        )
    product = state.objects.get(price["product"], {})
    return objects.checkout_item(
        objects.new_id("li_"), price, quantity, str(product.get("name", ""))
    )


@route("POST", "/v1/checkout/sessions")
def session_create(ctx: Ctx) -> Obj:
    """``POST /v1/checkout/sessions`` (``mode=payment``); its ``url`` is this server's page."""
    state, params = ctx.state, ctx.params
    check_params(params, SESSION_FIELDS)
    mode = need_str(params, "mode", choices=("payment", "setup", "subscription"))
    if mode != "payment":
        raise invalid("mode", "This test server supports only mode=payment.")
    customer_id = get_str(params, "customer")
    customer_email = get_str(params, "customer_email")
    if customer_id is not None:
        state.get("customer", customer_id, param="customer")
        if customer_email is not None:
            raise invalid(
                "customer_email",
                "You may only specify one of these parameters: customer, customer_email.",
            )
    creation = get_str(params, "customer_creation", choices=("always", "if_required"))
    if creation is not None and customer_id is not None:
        raise invalid(
            "customer_creation", "customer_creation can only be used when customer is not set."
        )
    raw_items = as_list(params.get("line_items"), "line_items")
    if not raw_items:
        raise missing("line_items")
    items = [_line_item(state, raw, index) for index, raw in enumerate(raw_items)]
    currencies = {item["currency"] for item in items}
    if len(currencies) != 1:
        raise invalid("line_items", "All line items must use the same currency.")
    currency = currencies.pop()
    total = sum(item["amount_total"] for item in items)
    check_minimum(total, currency, "line_items")
    pi_data = get_dict(params, "payment_intent_data")
    check_params(
        pi_data,
        {"setup_future_usage", "metadata", "description", "capture_method", "receipt_email"}
        | {"statement_descriptor", "statement_descriptor_suffix"},
        "payment_intent_data",
    )
    setup_future_usage = get_str(
        pi_data,
        "setup_future_usage",
        prefix="payment_intent_data",
        choices=("on_session", "off_session"),
    )
    session_id = objects.new_id("cs_test_", 58)
    session = objects.checkout_session(
        session_id, state.now(), f"{state.public_url}/checkout/{session_id}"
    )
    expires_at = get_int(params, "expires_at")
    if expires_at is not None:
        if not state.now() + 1800 <= expires_at <= state.now() + 24 * 3600:
            raise invalid(
                "expires_at", "expires_at must be between 30 minutes and 24 hours from now."
            )
        session["expires_at"] = expires_at
    session.update(
        amount_subtotal=total,
        amount_total=total,
        cancel_url=get_str(params, "cancel_url"),
        client_reference_id=get_str(params, "client_reference_id", max_length=200),
        currency=currency,
        customer=customer_id,
        customer_creation=None if customer_id is not None else (creation or "if_required"),
        customer_email=customer_email,
        locale=get_str(params, "locale"),
        metadata=merge_metadata({}, get_metadata(params)),
        submit_type=get_str(params, "submit_type"),
        success_url=get_str(params, "success_url"),
    )
    if setup_future_usage is not None:
        session["payment_method_options"] = {"card": {"setup_future_usage": setup_future_usage}}
    state.put(
        session,
        line_items=items,
        setup_future_usage=setup_future_usage,
        pi_metadata=merge_metadata({}, get_metadata(pi_data, prefix="payment_intent_data")),
        pi_description=get_str(pi_data, "description", prefix="payment_intent_data"),
    )
    return session


def get_session(state: State, session_id: str, param: str | None = None) -> Obj:
    """A session, expired first if its ``expires_at`` has passed."""
    session = state.get("checkout.session", session_id, param=param, label="checkout.session")
    if session["status"] == "open" and state.now() >= session["expires_at"]:
        expire_session(state, session)
    return session


def expire_session(state: State, session: Obj) -> None:
    """Expire an open session (``checkout.session.expired``)."""
    session["status"] = "expired"
    session["url"] = None
    state.emit("checkout.session.expired", session)


@route("GET", "/v1/checkout/sessions/{id}")
def session_retrieve(ctx: Ctx) -> Obj:
    """``GET /v1/checkout/sessions/{id}``."""
    return get_session(ctx.state, ctx.args["id"])


@route("GET", "/v1/checkout/sessions")
def session_list(ctx: Ctx) -> Obj:
    """``GET /v1/checkout/sessions`` (``customer``, ``payment_intent``, ``status`` filters)."""
    check_params(
        ctx.params,
        {"customer", "payment_intent", "status", "limit", "starting_after", "ending_before"},
    )
    customer_id = get_str(ctx.params, "customer")
    pi_id = get_str(ctx.params, "payment_intent")
    status = get_str(ctx.params, "status", choices=("open", "complete", "expired"))
    items = ctx.state.all(
        "checkout.session",
        lambda s: (
            (customer_id is None or s["customer"] == customer_id)
            and (pi_id is None or s["payment_intent"] == pi_id)
            and (status is None or s["status"] == status)
        ),
    )
    return paginate(items, ctx.params, "/v1/checkout/sessions")


@route("GET", "/v1/checkout/sessions/{id}/line_items")
def session_line_items(ctx: Ctx) -> Obj:
    """``GET /v1/checkout/sessions/{id}/line_items``."""
    check_params(ctx.params, {"limit", "starting_after", "ending_before"})
    session = get_session(ctx.state, ctx.args["id"])
    items = ctx.state.hidden(session["id"]).get("line_items", [])
    return paginate(items, ctx.params, f"/v1/checkout/sessions/{session['id']}/line_items")


@route("POST", "/v1/checkout/sessions/{id}/expire")
def session_expire(ctx: Ctx) -> Obj:
    """``POST /v1/checkout/sessions/{id}/expire``."""
    check_params(ctx.params, set())
    session = get_session(ctx.state, ctx.args["id"])
    if session["status"] != "open":
        raise invalid(
            None,
            'Only Checkout Sessions with a status in ["open"] can be expired.',
        )
    expire_session(ctx.state, session)
    return session


OUTCOMES = ("paid", "delayed", "declined")


def complete_session(state: State, session: Obj, outcome: str) -> str | None:
    """Pay an open session as the hosted page would; returns a decline message or None.

    ``paid``: card payment succeeds, session ``complete``/``paid``.
    ``delayed``: a bank debit is started, session ``complete``/``unpaid`` until
    :func:`settle_session`. ``declined``: the card is declined, the session stays open.
    Saves the payment method on the customer when ``setup_future_usage`` was requested.
    """
    if outcome not in OUTCOMES:
        raise invalid("outcome", f"outcome must be one of {', '.join(OUTCOMES)}")
    if session["status"] != "open":
        raise invalid(
            None,
            f"This Checkout Session is no longer open (status: {session['status']}).",
            "checkout_session_not_open",
        )
    extra = state.hidden(session["id"])
    setup_future_usage = extra.get("setup_future_usage")
    customer_id = session["customer"]
    if customer_id is None and (
        session["customer_creation"] == "always" or setup_future_usage is not None
    ):
        customer_id = new_customer(state, email=session["customer_email"])["id"]
        session["customer"] = customer_id
    customer = state.objects.get(customer_id) if customer_id else None
    email = session["customer_email"] or (customer or {}).get("email") or "buyer@example.com"
    delayed = outcome == "delayed"
    method = new_payment_method(
        state,
        "sepa_debit" if delayed else "card",
        last4="3000" if delayed else ("0002" if outcome == "declined" else "4242"),
    )
    method["billing_details"]["email"] = email
    intent_id = session["payment_intent"]
    if intent_id is None:
        intent = new_intent(
            state,
            session["amount_total"],
            session["currency"],
            customer_id,
            dict(extra.get("pi_metadata") or {}),
            extra.get("pi_description"),
        )
        intent["setup_future_usage"] = setup_future_usage
        intent["payment_method_types"] = ["card", "sepa_debit"]
        session["payment_intent"] = intent["id"]
    else:
        intent = state.get("payment_intent", intent_id)
        intent["customer"] = customer_id
    if outcome == "declined":
        return fail(state, intent, method, "generic_decline").message
    succeed(state, intent, method, pending=delayed)
    if setup_future_usage is not None and customer is not None:
        attach(state, method, customer["id"])
        if state.options.set_default_payment_method_on_checkout:
            previous = copy.deepcopy(customer["invoice_settings"])
            customer["invoice_settings"]["default_payment_method"] = method["id"]
            state.emit("customer.updated", customer, {"invoice_settings": previous})
    session.update(
        status="complete",
        payment_status="unpaid" if delayed else "paid",
        url=None,
        customer_details={
            "address": {**objects.empty_address(), "country": "DE" if delayed else "US"},
            "email": email,
            "name": None,
            "phone": None,
            "tax_exempt": "none",
            "tax_ids": [],
            "business_name": None,
            "individual_name": None,
        },
    )
    state.emit("checkout.session.completed", session)
    return None


def settle_session(state: State, session: Obj, succeeded: bool) -> None:
    """Finish a delayed (bank debit) payment: ``checkout.session.async_payment_*``."""
    intent_id = session["payment_intent"]
    intent = state.get("payment_intent", intent_id) if intent_id else None
    if (
        session["status"] != "complete"
        or session["payment_status"] != "unpaid"
        or intent is None
        or intent["status"] != "processing"
    ):
        raise invalid(None, "This Checkout Session has no delayed payment waiting to settle.")
    settle_charge(state, intent, succeeded)
    if succeeded:
        session["payment_status"] = "paid"
        state.emit("checkout.session.async_payment_succeeded", session)
    else:
        state.emit("checkout.session.async_payment_failed", session)
