"""Customers, payment methods, products, prices and events (``/v1/...``)."""

from __future__ import annotations

import copy
import secrets
from decimal import Decimal

from . import objects
from .errors import StripeError, invalid, missing
from .formdata import (
    Params,
    as_list,
    check_params,
    get_bool,
    get_decimal,
    get_dict,
    get_int,
    get_metadata,
    get_str,
    merge_metadata,
    need_str,
)
from .objects import Obj
from .routing import Ctx, route
from .state import State, paginate

CUSTOMER_FIELDS = {"email", "name", "description", "phone", "metadata", "invoice_settings"}
CURRENCY_EXPONENTS = {"jpy": 0, "krw": 0, "bif": 0, "clp": 0, "vnd": 0, "xof": 0, "xaf": 0}


def currency_param(params: Params, key: str = "currency", *, prefix: str = "") -> str:
    """A required three-letter currency, lower-cased."""
    value = need_str(params, key, prefix=prefix).lower()
    if len(value) != 3 or not value.isalpha():
        name = f"{prefix}[{key}]" if prefix else key
        raise invalid(name, f"Invalid currency: {value}", "parameter_invalid_string")
    return value


# --- customers --------------------------------------------------------------------------


def _customer_values(state: State, params: Params, obj: Obj) -> Obj:
    """Apply create/update params to a customer; returns the previous values changed."""
    previous: Obj = {}
    for key in ("email", "name", "description", "phone"):
        if key in params:
            value = get_str(params, key, max_length=512)
            if obj[key] != value:
                previous[key] = obj[key]
                obj[key] = value
    if "metadata" in params:
        raw = params["metadata"]
        new = {} if raw == "" else merge_metadata(obj["metadata"], get_metadata(params))
        if new != obj["metadata"]:
            previous["metadata"] = obj["metadata"]
            obj["metadata"] = new
    if "invoice_settings" in params:
        settings = get_dict(params, "invoice_settings")
        check_params(
            settings, {"default_payment_method", "footer", "custom_fields"}, "invoice_settings"
        )
        if "default_payment_method" in settings:
            pm_id = get_str(settings, "default_payment_method", prefix="invoice_settings")
            if pm_id is not None:
                method = state.get(
                    "payment_method",
                    pm_id,
                    param="invoice_settings[default_payment_method]",
                    label="PaymentMethod",
                )
                if method["customer"] != obj["id"]:
                    raise invalid(
                        "invoice_settings[default_payment_method]",
                        f"The customer does not have a payment method with the ID {pm_id}. "
                        "The payment method must be attached to the customer.",
                        "resource_missing",
                    )
            old = obj["invoice_settings"]["default_payment_method"]
            if old != pm_id:
                previous["invoice_settings"] = copy.deepcopy(obj["invoice_settings"])
                obj["invoice_settings"]["default_payment_method"] = pm_id
        if "footer" in settings:
            obj["invoice_settings"]["footer"] = get_str(settings, "footer")
    return previous


def new_customer(state: State, params: Params | None = None, email: str | None = None) -> Obj:
    """Create and store a customer (``customer.created``)."""
    obj = objects.customer(objects.new_id("cus_", 14), state.now(), secrets.token_hex(4).upper())
    obj["email"] = email
    if params:
        _customer_values(state, params, obj)
    state.put(obj)
    state.emit("customer.created", obj)
    return obj


@route("POST", "/v1/customers")
def customer_create(ctx: Ctx) -> Obj:
    """``POST /v1/customers``."""
    check_params(ctx.params, CUSTOMER_FIELDS)
    return new_customer(ctx.state, ctx.params)


@route("GET", "/v1/customers/{id}")
def customer_retrieve(ctx: Ctx) -> Obj:
    """``GET /v1/customers/{id}``."""
    return ctx.state.get("customer", ctx.args["id"])


@route("POST", "/v1/customers/{id}")
def customer_update(ctx: Ctx) -> Obj:
    """``POST /v1/customers/{id}``: email, name, description, phone, metadata, invoice_settings."""
    check_params(ctx.params, CUSTOMER_FIELDS)
    obj = ctx.state.get("customer", ctx.args["id"])
    previous = _customer_values(ctx.state, ctx.params, obj)
    if previous:
        ctx.state.emit("customer.updated", obj, previous)
    return obj


@route("GET", "/v1/customers")
def customer_list(ctx: Ctx) -> Obj:
    """``GET /v1/customers`` (``email`` filter)."""
    check_params(ctx.params, {"email", "limit", "starting_after", "ending_before"})
    email = get_str(ctx.params, "email")
    items = ctx.state.all("customer", lambda c: email is None or c["email"] == email)
    return paginate(items, ctx.params, "/v1/customers")


# --- payment methods --------------------------------------------------------------------

TEST_PAYMENT_METHODS: dict[str, tuple[str, str | None, str]] = {
    # magic id: (last4, decline code or None, brand)
    "pm_card_visa": ("4242", None, "visa"),
    "pm_card_mastercard": ("4444", None, "mastercard"),
    "pm_card_chargeDeclined": ("0002", "generic_decline", "visa"),
    "pm_card_chargeCustomerFail": ("0341", "generic_decline", "visa"),
    "pm_card_chargeDeclinedInsufficientFunds": ("9995", "insufficient_funds", "visa"),
    "pm_card_chargeDeclinedExpiredCard": ("0069", "expired_card", "visa"),
    "pm_card_authenticationRequired": ("3155", "authentication_required", "visa"),
}
"""Stripe's test-mode payment method ids: using one creates a fresh ``pm_`` from it."""


def new_payment_method(
    state: State, kind: str = "card", *, last4: str = "4242", decline: str | None = None
) -> Obj:
    """Create and store a payment method; ``decline`` makes every charge on it fail."""
    method = objects.payment_method(objects.new_id("pm_"), state.now(), kind, last4)
    return state.put(method, decline=decline)


def resolve_payment_method(state: State, pm_id: str, param: str = "payment_method") -> Obj:
    """A stored payment method, or a new one made from a magic test id."""
    if pm_id in TEST_PAYMENT_METHODS:
        last4, decline, brand = TEST_PAYMENT_METHODS[pm_id]
        method = new_payment_method(state, last4=last4, decline=decline)
        method["card"]["brand"] = brand
        method["card"]["display_brand"] = brand
        method["card"]["networks"] = {"available": [brand], "preferred": None}
        return method
    return state.get("payment_method", pm_id, param=param, label="PaymentMethod")


def attach(state: State, method: Obj, customer_id: str) -> None:
    """Attach a payment method to a customer (``payment_method.attached``)."""
    method["customer"] = customer_id
    state.emit("payment_method.attached", method)


@route("GET", "/v1/payment_methods/{id}")
def payment_method_retrieve(ctx: Ctx) -> Obj:
    """``GET /v1/payment_methods/{id}``."""
    return ctx.state.get("payment_method", ctx.args["id"], label="PaymentMethod")


@route("POST", "/v1/payment_methods/{id}/attach")
def payment_method_attach(ctx: Ctx) -> Obj:
    """``POST /v1/payment_methods/{id}/attach`` (``customer``); magic ids make a new one."""
    check_params(ctx.params, {"customer"})
    customer_id = need_str(ctx.params, "customer")
    ctx.state.get("customer", customer_id, param="customer")
    if ctx.args["id"] == "pm_card_chargeDeclined":
        # Stripe checks a card when it is attached: this one fails there already
        # (pm_card_chargeCustomerFail attaches, and fails when charged).
        raise StripeError(
            402,
            "Your card was declined.",
            type="card_error",
            code="card_declined",
            extra={"decline_code": "generic_decline"},
            store=True,
        )
    method = resolve_payment_method(ctx.state, ctx.args["id"], param="id")
    if method["customer"] not in (None, customer_id):
        raise invalid(
            None,
            "The payment method you provided has already been attached to a customer.",
            "payment_method_unexpected_state",
        )
    attach(ctx.state, method, customer_id)
    return method


@route("POST", "/v1/payment_methods/{id}/detach")
def payment_method_detach(ctx: Ctx) -> Obj:
    """``POST /v1/payment_methods/{id}/detach``."""
    check_params(ctx.params, set())
    method = ctx.state.get("payment_method", ctx.args["id"], label="PaymentMethod")
    if method["customer"] is None:
        raise invalid(
            None,
            "The payment method you provided is not attached to a customer so detachment "
            "is impossible.",
            "payment_method_unexpected_state",
        )
    customer = ctx.state.get("customer", method["customer"])
    if customer["invoice_settings"]["default_payment_method"] == method["id"]:
        customer["invoice_settings"]["default_payment_method"] = None
    method["customer"] = None
    ctx.state.emit("payment_method.detached", method, {"customer": customer["id"]})
    return method


@route("GET", "/v1/customers/{id}/payment_methods")
def customer_payment_methods(ctx: Ctx) -> Obj:
    """``GET /v1/customers/{id}/payment_methods``."""
    check_params(ctx.params, {"type", "limit", "starting_after", "ending_before"})
    customer_id = ctx.state.get("customer", ctx.args["id"])["id"]
    kind = get_str(ctx.params, "type")
    items = ctx.state.all(
        "payment_method",
        lambda m: m["customer"] == customer_id and (kind is None or m["type"] == kind),
    )
    return paginate(items, ctx.params, f"/v1/customers/{customer_id}/payment_methods")


# --- products and prices ----------------------------------------------------------------


def create_product(state: State, params: Params, prefix: str = "") -> Obj:
    """Create a product from ``name``/``description``/``metadata`` params."""
    check_params(params, {"name", "description", "metadata", "active", "id", "unit_label"}, prefix)
    name = need_str(params, "name", prefix=prefix)
    product_id = get_str(params, "id", prefix=prefix) or objects.new_id("prod_", 14)
    if product_id in state.objects:
        raise invalid("id", "Product already exists.", "resource_already_exists")
    obj = objects.product(product_id, state.now(), name)
    obj["description"] = get_str(params, "description", prefix=prefix)
    obj["unit_label"] = get_str(params, "unit_label", prefix=prefix)
    obj["metadata"] = merge_metadata({}, get_metadata(params, prefix=prefix))
    active = get_bool(params, "active", prefix=prefix)
    obj["active"] = True if active is None else active
    state.put(obj)
    state.emit("product.created", obj)
    return obj


@route("POST", "/v1/products")
def product_create(ctx: Ctx) -> Obj:
    """``POST /v1/products``."""
    return create_product(ctx.state, ctx.params)


@route("GET", "/v1/products/{id}")
def product_retrieve(ctx: Ctx) -> Obj:
    """``GET /v1/products/{id}``."""
    return ctx.state.get("product", ctx.args["id"])


@route("GET", "/v1/products")
def product_list(ctx: Ctx) -> Obj:
    """``GET /v1/products``."""
    check_params(ctx.params, {"active", "limit", "starting_after", "ending_before"})
    active = get_bool(ctx.params, "active")
    items = ctx.state.all("product", lambda p: active is None or p["active"] == active)
    return paginate(items, ctx.params, "/v1/products")


def set_amounts(price: Obj, params: Params, prefix: str = "") -> None:
    """``unit_amount`` (integer cents) or ``unit_amount_decimal`` (cents, 12 places)."""
    amount = get_int(params, "unit_amount", prefix=prefix, minimum=0)
    decimal = get_decimal(params, "unit_amount_decimal", prefix=prefix)
    if amount is not None and decimal is not None:
        raise invalid(
            f"{prefix}[unit_amount_decimal]" if prefix else "unit_amount_decimal",
            "You may only specify one of these parameters: unit_amount, unit_amount_decimal.",
        )
    if amount is None and decimal is None:
        raise missing(f"{prefix}[unit_amount]" if prefix else "unit_amount")
    if decimal is not None:
        if decimal < 0:
            raise invalid("unit_amount_decimal", "Invalid decimal: must be at least 0")
        price["unit_amount_decimal"] = objects.decimal_text(decimal)
        whole = decimal == decimal.to_integral_value()
        price["unit_amount"] = int(decimal) if whole else None
    elif amount is not None:
        price["unit_amount"] = amount
        price["unit_amount_decimal"] = str(amount)


PRICE_FIELDS = {
    "currency",
    "product",
    "product_data",
    "unit_amount",
    "unit_amount_decimal",
    "recurring",
    "billing_scheme",
    "nickname",
    "lookup_key",
    "transfer_lookup_key",
    "metadata",
    "active",
    "tax_behavior",
}


@route("POST", "/v1/prices")
def price_create(ctx: Ctx) -> Obj:
    """``POST /v1/prices``: per-unit prices, one-off or recurring (licensed or metered)."""
    state, params = ctx.state, ctx.params
    check_params(params, PRICE_FIELDS)
    currency = currency_param(params)
    product_id = get_str(params, "product")
    if product_id is not None:
        state.get("product", product_id, param="product")
    elif "product_data" in params:
        product_id = create_product(state, get_dict(params, "product_data"), "product_data")["id"]
    else:
        raise missing("product")
    scheme = get_str(params, "billing_scheme", choices=("per_unit", "tiered")) or "per_unit"
    if scheme != "per_unit":
        raise invalid("billing_scheme", "This test server supports only per_unit prices.")
    obj = objects.price(objects.new_id("price_"), state.now(), product_id, currency)
    set_amounts(obj, params)
    obj["billing_scheme"] = scheme
    obj["nickname"] = get_str(params, "nickname")
    obj["metadata"] = merge_metadata({}, get_metadata(params))
    obj["tax_behavior"] = (
        get_str(params, "tax_behavior", choices=("exclusive", "inclusive", "unspecified"))
        or "unspecified"
    )
    active = get_bool(params, "active")
    obj["active"] = True if active is None else active
    if "recurring" in params:
        obj["recurring"] = _recurring(state, get_dict(params, "recurring"))
        obj["type"] = "recurring"
    lookup_key = get_str(params, "lookup_key", max_length=200)
    if lookup_key is not None:
        holders = state.all("price", lambda p: p["lookup_key"] == lookup_key)
        if holders and not get_bool(params, "transfer_lookup_key"):
            raise invalid(
                "lookup_key",
                f"A price ({holders[0]['id']}) already uses that lookup key.",
                "lookup_key_already_exists",
            )
        for holder in holders:
            holder["lookup_key"] = None
        obj["lookup_key"] = lookup_key
    state.put(obj)
    state.emit("price.created", obj)
    return obj


def _recurring(state: State, raw: Params) -> Obj:
    check_params(
        raw, {"interval", "interval_count", "usage_type", "meter", "trial_period_days"}, "recurring"
    )
    interval = need_str(
        raw, "interval", prefix="recurring", choices=("day", "week", "month", "year")
    )
    count = get_int(raw, "interval_count", prefix="recurring", minimum=1) or 1
    usage_type = (
        get_str(raw, "usage_type", prefix="recurring", choices=("licensed", "metered"))
        or "licensed"
    )
    meter_id = get_str(raw, "meter", prefix="recurring")
    if usage_type == "metered":
        if meter_id is None:
            raise invalid(
                "recurring[meter]",
                "Metered prices must be backed by a meter: set recurring[meter].",
                "parameter_missing",
            )
        meter = state.get("billing.meter", meter_id, param="recurring[meter]", label="meter")
        if meter["status"] != "active":
            raise invalid("recurring[meter]", f"The meter {meter_id} is not active.")
    elif meter_id is not None:
        raise invalid("recurring[meter]", "A meter can only be set on metered prices.")
    return {
        "interval": interval,
        "interval_count": count,
        "meter": meter_id,
        "trial_period_days": get_int(raw, "trial_period_days", prefix="recurring"),
        "usage_type": usage_type,
    }


@route("GET", "/v1/prices/{id}")
def price_retrieve(ctx: Ctx) -> Obj:
    """``GET /v1/prices/{id}``."""
    return ctx.state.get("price", ctx.args["id"])


@route("GET", "/v1/prices")
def price_list(ctx: Ctx) -> Obj:
    """``GET /v1/prices`` (``product``, ``active``, ``lookup_keys[]``, ``type`` filters)."""
    check_params(
        ctx.params,
        {"product", "active", "lookup_keys", "type", "currency", "limit"}
        | {"starting_after", "ending_before"},
    )
    product_id = get_str(ctx.params, "product")
    active = get_bool(ctx.params, "active")
    kind = get_str(ctx.params, "type")
    keys = {str(k) for k in as_list(ctx.params.get("lookup_keys"), "lookup_keys")}

    def keep(p: Obj) -> bool:
        return (
            (product_id is None or p["product"] == product_id)
            and (active is None or p["active"] == active)
            and (kind is None or p["type"] == kind)
            and (not keys or p["lookup_key"] in keys)
        )

    return paginate(ctx.state.all("price", keep), ctx.params, "/v1/prices")


def unit_amount(price: Obj) -> Decimal:
    """A price's exact per-unit amount in the currency's minor unit."""
    return Decimal(price["unit_amount_decimal"])


# --- events -----------------------------------------------------------------------------


@route("GET", "/v1/events/{id}")
def event_retrieve(ctx: Ctx) -> Obj:
    """``GET /v1/events/{id}``."""
    return ctx.state.get("event", ctx.args["id"])


@route("GET", "/v1/events")
def event_list(ctx: Ctx) -> Obj:
    """``GET /v1/events`` (``type``, ``types[]``, ``created[gte]`` filters), newest first."""
    check_params(
        ctx.params, {"type", "types", "created", "limit", "starting_after", "ending_before"}
    )
    kind = get_str(ctx.params, "type")
    kinds = {str(k) for k in as_list(ctx.params.get("types"), "types")}
    created = get_dict(ctx.params, "created")
    gte = get_int(created, "gte", prefix="created")

    def keep(e: Obj) -> bool:
        if kind is not None and not _type_matches(kind, e["type"]):
            return False
        if kinds and e["type"] not in kinds:
            return False
        return gte is None or e["created"] >= gte

    return paginate(ctx.state.all("event", keep), ctx.params, "/v1/events")


def _type_matches(pattern: str, value: str) -> bool:
    if pattern.endswith(".*"):
        return value.startswith(pattern[:-1])
    return pattern == value


def amount_text(amount: int, currency: str) -> str:
    """``12.50 USD`` — a minor-unit amount for people."""
    exponent = CURRENCY_EXPONENTS.get(currency.lower(), 2)
    value = Decimal(amount).scaleb(-exponent)
    return f"{value:,.{exponent}f} {currency.upper()}"
