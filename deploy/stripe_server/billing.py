"""Usage billing: meters, meter events, summaries, subscriptions, credit grants, invoices.

Decisions (see the package docstring for the full list):

* A meter event whose ``identifier`` was already accepted in the last 24 hours (server
  clock) is rejected like Stripe's v1 API does — ``400 invalid_request_error``, message
  ``An event already exists with identifier <id>.``, no ``code``, header
  ``Stripe-Should-Retry: false`` — and is not counted again.
* An invoice line's amount is ``quantity × unit_amount_decimal`` (exact decimal cents)
  rounded once, half up, to a whole cent.
* Credit grants are applied when an invoice is finalized, to metered lines in their
  scope, in Stripe's order (priority, soonest expiry, promotional before paid, oldest);
  the part used is debited from the grant, so it is never applied again.
"""

from __future__ import annotations

import calendar
import contextlib
import copy
import datetime as dt
import hashlib
import logging
import re
import secrets
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from . import objects
from .core import unit_amount
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
    need_int,
    need_str,
)
from .objects import Obj
from .payments import charge_with, new_intent
from .routing import Ctx, route
from .state import (
    METER_SESSION_LIFETIME,
    MeterEventRecord,
    MeterEventSession,
    State,
    paginate,
)

log = logging.getLogger("deploy.stripe_server")

LIVE_SUBSCRIPTION = ("active", "past_due", "trialing", "unpaid")


def round_cents(value: Decimal) -> int:
    """Exact minor units rounded half up (away from zero on exact halves) to an integer."""
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def add_interval(timestamp: int, interval: str, count: int = 1) -> int:
    """``timestamp`` plus ``count`` intervals in UTC (months clamp to the month's end)."""
    moment = dt.datetime.fromtimestamp(timestamp, tz=dt.UTC)
    if interval == "day":
        return timestamp + 86400 * count
    if interval == "week":
        return timestamp + 7 * 86400 * count
    months = count * (12 if interval == "year" else 1)
    total = moment.month - 1 + months
    year, month = moment.year + total // 12, total % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return int(moment.replace(year=year, month=month, day=day).timestamp())


# --- meters -----------------------------------------------------------------------------


@route("POST", "/v1/billing/meters")
def meter_create(ctx: Ctx) -> Obj:
    """``POST /v1/billing/meters``."""
    state, params = ctx.state, ctx.params
    check_params(
        params,
        {"display_name", "event_name", "default_aggregation", "customer_mapping"}
        | {"value_settings", "event_time_window"},
    )
    display_name = need_str(params, "display_name", max_length=250)
    event_name = need_str(params, "event_name", max_length=100)
    aggregation = get_dict(params, "default_aggregation", required=True)
    check_params(aggregation, {"formula"}, "default_aggregation")
    formula = need_str(
        aggregation, "formula", prefix="default_aggregation", choices=("sum", "count", "last")
    )
    mapping = get_dict(params, "customer_mapping")
    check_params(mapping, {"event_payload_key", "type"}, "customer_mapping")
    customer_key = "stripe_customer_id"
    if mapping:
        customer_key = need_str(mapping, "event_payload_key", prefix="customer_mapping")
        need_str(mapping, "type", prefix="customer_mapping", choices=("by_id",))
    values = get_dict(params, "value_settings")
    check_params(values, {"event_payload_key"}, "value_settings")
    value_key = "value"
    if values:
        value_key = need_str(values, "event_payload_key", prefix="value_settings")
    window = get_str(params, "event_time_window", choices=("day", "hour"))
    if state.all("billing.meter", lambda m: m["event_name"] == event_name):
        raise invalid(
            "event_name",
            f"A meter with event_name '{event_name}' already exists.",
        )
    meter = objects.meter(objects.new_id("mtr_test_61", 28), state.now())
    meter.update(
        display_name=display_name,
        event_name=event_name,
        default_aggregation={"formula": formula},
        customer_mapping={"event_payload_key": customer_key, "type": "by_id"},
        value_settings={"event_payload_key": value_key},
        event_time_window=window,
    )
    return state.put(meter)


@route("GET", "/v1/billing/meters")
def meter_list(ctx: Ctx) -> Obj:
    """``GET /v1/billing/meters`` (``status`` filter)."""
    check_params(ctx.params, {"status", "limit", "starting_after", "ending_before"})
    status = get_str(ctx.params, "status", choices=("active", "inactive"))
    items = ctx.state.all("billing.meter", lambda m: status is None or m["status"] == status)
    return paginate(items, ctx.params, "/v1/billing/meters")


@route("GET", "/v1/billing/meters/{id}")
def meter_retrieve(ctx: Ctx) -> Obj:
    """``GET /v1/billing/meters/{id}``."""
    return ctx.state.get("billing.meter", ctx.args["id"], label="billing.meter")


@route("POST", "/v1/billing/meters/{id}/deactivate")
def meter_deactivate(ctx: Ctx) -> Obj:
    """``POST /v1/billing/meters/{id}/deactivate``."""
    check_params(ctx.params, set())
    meter = ctx.state.get("billing.meter", ctx.args["id"], label="billing.meter")
    meter.update(status="inactive", updated=ctx.state.now())
    meter["status_transitions"]["deactivated_at"] = ctx.state.now()
    return meter


@route("POST", "/v1/billing/meters/{id}/reactivate")
def meter_reactivate(ctx: Ctx) -> Obj:
    """``POST /v1/billing/meters/{id}/reactivate``."""
    check_params(ctx.params, set())
    meter = ctx.state.get("billing.meter", ctx.args["id"], label="billing.meter")
    meter.update(status="active", updated=ctx.state.now())
    return meter


EVENT_MAX_AGE = 35 * 86400
"""How old a meter event's ``timestamp`` may be (Stripe: 35 days)."""

EVENT_MAX_AHEAD = 300
"""How far in the future a meter event's ``timestamp`` may be (Stripe: 5 minutes)."""


@route("POST", "/v1/billing/meter_events")
def meter_event_create(ctx: Ctx) -> Obj:
    """``POST /v1/billing/meter_events``: validated at once, counted once per identifier."""
    state, params = ctx.state, ctx.params
    check_params(params, {"event_name", "payload", "identifier", "timestamp"})
    event_name = need_str(params, "event_name", max_length=100)
    payload = get_dict(params, "payload", required=True)
    meters = state.all(
        "billing.meter", lambda m: m["event_name"] == event_name and m["status"] == "active"
    )
    if not meters:
        raise invalid("event_name", f"No active meter was found for event_name '{event_name}'.")
    meter = meters[0]
    customer_key = meter["customer_mapping"]["event_payload_key"]
    value_key = meter["value_settings"]["event_payload_key"]
    customer_id = need_str(payload, customer_key, prefix="payload")
    state.get("customer", customer_id, param=f"payload[{customer_key}]")
    value = get_decimal(payload, value_key, required=True, prefix="payload")
    if value is None:
        raise missing(f"payload[{value_key}]")
    if value < 0:
        raise invalid(f"payload[{value_key}]", "The meter event value must not be negative.")
    now = state.now()
    timestamp = get_int(params, "timestamp")
    timestamp = now if timestamp is None else timestamp
    if timestamp < now - EVENT_MAX_AGE:
        raise invalid("timestamp", "Timestamp must be no more than 35 days in the past.")
    if timestamp > now + EVENT_MAX_AHEAD:
        raise invalid("timestamp", "Timestamp must be no more than 5 minutes in the future.")
    identifier = get_str(params, "identifier", max_length=100) or objects.new_id("", 32)
    clean = {str(k): str(v) for k, v in payload.items()}
    if not state.record_meter_event(
        MeterEventRecord(event_name, clean, timestamp, identifier, now)
    ):
        raise StripeError(
            400,
            f"An event already exists with identifier {identifier}.",
            headers={"Stripe-Should-Retry": "false"},
        )
    return objects.meter_event(now, event_name, identifier, clean, timestamp)


# --- v2 meter event stream ------------------------------------------------------------

STREAM_MAX_EVENTS = 100
"""Events per ``POST /v2/billing/meter_event_stream`` (Stripe: "up to 100")."""

_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})"
)


@route("POST", "/v2/billing/meter_event_session")
def meter_event_session_create(ctx: Ctx) -> Obj:
    """``POST /v2/billing/meter_event_session``: a token for the stream, valid 15 minutes."""
    state = ctx.state
    _v2_known(ctx.params, set(), "")
    now = state.now()
    session = MeterEventSession(
        objects.new_id("mes_test_61", 28),
        secrets.token_urlsafe(36),
        now,
        now + METER_SESSION_LIFETIME,
    )
    state.new_meter_session(session)
    return objects.meter_event_session(
        session.id, session.authentication_token, session.created, session.expires_at
    )


@route("POST", "/v2/billing/meter_event_stream", kind="meter_stream")
def meter_event_stream_create(ctx: Ctx) -> Obj:
    """``POST /v2/billing/meter_event_stream``: 1 to 100 events, answered with ``{}``.

    The HTTP layer has checked the session token. Every event is validated before any
    is kept, so a bad event rejects the whole batch (400 naming ``events[i].field``);
    then each is counted like a v1 meter event, except that an ``identifier`` seen in
    the last 24 hours is skipped silently (Stripe's stream is asynchronous and reports
    duplicates later, never in the answer).
    """
    state, params = ctx.state, ctx.params
    _v2_known(params, {"events"}, "")
    events = params.get("events")
    if events is None:
        raise StripeError(
            400, "Missing required param: events.", code="parameter_missing", param="events"
        )
    if not isinstance(events, list) or not 1 <= len(events) <= STREAM_MAX_EVENTS:
        raise StripeError(
            400,
            f"Invalid events: must be an array of 1 to {STREAM_MAX_EVENTS} meter events "
            f"({len(events) if isinstance(events, list) else type(events).__name__} given).",
            code="parameter_invalid",
            param="events",
        )
    now = state.now()
    meters = {meter["event_name"]: meter for meter in state.all("billing.meter")}
    records = [
        _stream_event(state, meters, entry, f"events[{index}]", now)
        for index, entry in enumerate(events)
    ]
    skipped = sum(not state.record_meter_event(record) for record in records)
    if skipped:
        log.info(
            "meter_event_stream: %d of %d events skipped (identifier already used)",
            skipped,
            len(records),
        )
    return {}


def _v2_known(params: Params, allowed: set[str], where: str) -> None:
    for key in params:
        if key not in allowed:
            name = f"{where}.{key}" if where else key
            raise StripeError(
                400, f"Received unknown parameter: {name}", code="parameter_unknown", param=name
            )


def _v2_string(obj: Params, key: str, where: str, *, required: bool) -> str | None:
    name = f"{where}.{key}"
    value = obj.get(key)
    if value is None:
        if required:
            raise StripeError(
                400, f"Missing required param: {name}.", code="parameter_missing", param=name
            )
        return None
    if not isinstance(value, str) or not value or len(value) > 100:
        raise StripeError(
            400,
            f"Invalid {name}: must be a non-empty string of at most 100 characters.",
            code="parameter_invalid",
            param=name,
        )
    return value


def _v2_timestamp(value: Any, name: str) -> int:
    """An RFC 3339 time (``2024-06-01T12:00:00.000Z``) as unix seconds (fraction dropped)."""
    moment = None
    if isinstance(value, str) and _RFC3339.fullmatch(value):
        try:
            moment = dt.datetime.fromisoformat(value.upper())
        except ValueError:
            moment = None
    if moment is None:
        raise StripeError(
            400,
            f"Invalid {name}: must be an RFC 3339 time string like 2024-06-01T12:00:00.000Z "
            f"(got {value!r}).",
            code="parameter_invalid",
            param=name,
        )
    return int(moment.timestamp())


def _stream_event(
    state: State, meters: dict[str, Obj], entry: Any, where: str, now: int
) -> MeterEventRecord:
    """One stream event checked as Stripe's asynchronous validation would (its error
    codes), returned as the record to count."""
    if not isinstance(entry, dict):
        raise StripeError(
            400, f"Invalid {where}: must be an object.", code="parameter_invalid", param=where
        )
    _v2_known(entry, {"event_name", "identifier", "payload", "timestamp"}, where)
    event_name = _v2_string(entry, "event_name", where, required=True) or ""
    identifier = _v2_string(entry, "identifier", where, required=False)
    payload = entry.get("payload")
    name = f"{where}.payload"
    if payload is None:
        raise StripeError(
            400, f"Missing required param: {name}.", code="parameter_missing", param=name
        )
    if not isinstance(payload, dict):
        raise StripeError(
            400, f"Invalid {name}: must be an object.", code="parameter_invalid", param=name
        )
    for key, item in payload.items():
        if not isinstance(item, str):
            raise StripeError(
                400,
                f"Invalid {name}.{key}: payload values must be strings.",
                code="parameter_invalid",
                param=f"{name}.{key}",
            )
    meter = meters.get(event_name)
    if meter is None:
        raise StripeError(
            400,
            f"No meter was found for {where}.event_name '{event_name}'.",
            code="no_meter",
            param=f"{where}.event_name",
        )
    if meter["status"] != "active":
        raise StripeError(
            400,
            f"The meter for {where}.event_name '{event_name}' ({meter['id']}) is inactive.",
            code="archived_meter",
            param=f"{where}.event_name",
        )
    customer_key = meter["customer_mapping"]["event_payload_key"]
    customer_id = payload.get(customer_key)
    if not customer_id:
        raise StripeError(
            400,
            f"Missing {name}.{customer_key}: the meter maps customers by that key.",
            code="meter_event_no_customer_defined",
            param=f"{name}.{customer_key}",
        )
    found = state.objects.get(customer_id)
    if found is None or found.get("object") != "customer":
        raise StripeError(
            400,
            f"No such customer: '{customer_id}' ({name}.{customer_key}).",
            code="meter_event_customer_not_found",
            param=f"{name}.{customer_key}",
        )
    value_key = meter["value_settings"]["event_payload_key"]
    _v2_value(payload.get(value_key), f"{name}.{value_key}")
    timestamp = now
    if entry.get("timestamp") is not None:
        timestamp = _v2_timestamp(entry["timestamp"], f"{where}.timestamp")
    if timestamp < now - EVENT_MAX_AGE:
        raise StripeError(
            400,
            f"Invalid {where}.timestamp: must be no more than 35 days in the past.",
            code="timestamp_too_far_in_past",
            param=f"{where}.timestamp",
        )
    if timestamp > now + EVENT_MAX_AHEAD:
        raise StripeError(
            400,
            f"Invalid {where}.timestamp: must be no more than 5 minutes in the future.",
            code="timestamp_in_future",
            param=f"{where}.timestamp",
        )
    return MeterEventRecord(
        event_name, dict(payload), timestamp, identifier or objects.new_id("", 32), now
    )


def _v2_value(value: str | None, name: str) -> None:
    """A meter event value: a non-negative decimal string, at most 12 decimal places."""
    number = Decimal("nan")
    if value:
        with contextlib.suppress(InvalidOperation):
            number = Decimal(value)
    if not number.is_finite() or number < 0:
        raise StripeError(
            400,
            f"Invalid {name}: must be a non-negative decimal string (got {value!r}).",
            code="meter_event_invalid_value",
            param=name,
        )
    exponent = number.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > 12:
        raise StripeError(
            400,
            f"Invalid {name}: at most 12 decimal places.",
            code="meter_event_value_too_many_digits",
            param=name,
        )


def _window_edges(start: int, end: int, window: str | None) -> list[tuple[int, int]]:
    if window is None:
        return [(start, end)]
    step = 86400 if window == "day" else 3600
    edges = []
    low = start
    while low < end:
        high = min(end, (low // step + 1) * step)
        edges.append((low, high))
        low = high
    return edges


@route("GET", "/v1/billing/meters/{id}/event_summaries")
def meter_event_summaries(ctx: Ctx) -> Obj:
    """``GET /v1/billing/meters/{id}/event_summaries``: usage of one customer, newest first."""
    state, params = ctx.state, ctx.params
    check_params(
        params,
        {"customer", "start_time", "end_time", "value_grouping_window", "limit"}
        | {"starting_after", "ending_before"},
    )
    meter = state.get("billing.meter", ctx.args["id"], label="billing.meter")
    customer_id = need_str(params, "customer")
    state.get("customer", customer_id, param="customer")
    start = need_int(params, "start_time", minimum=0)
    end = need_int(params, "end_time", minimum=0)
    for name, value in (("start_time", start), ("end_time", end)):
        if value % 60:
            raise invalid(name, f"{name} must be aligned with minute boundaries.")
    if start >= end:
        raise invalid("end_time", "end_time must be after start_time.")
    window = get_str(params, "value_grouping_window", choices=("day", "hour"))
    summaries = []
    for low, high in reversed(_window_edges(start, end, window)):
        digest = hashlib.sha256(f"{meter['id']}|{customer_id}|{low}|{high}".encode()).hexdigest()
        summaries.append(
            objects.meter_event_summary(
                f"mtrusg_{digest[:24]}",
                meter["id"],
                low,
                high,
                state.usage(meter, customer_id, low, high),
            )
        )
    return paginate(summaries, params, f"/v1/billing/meters/{meter['id']}/event_summaries")


# --- credit grants ----------------------------------------------------------------------


def _scope(state: State, raw: Params) -> Obj:
    config = get_dict(raw, "applicability_config", required=True)
    check_params(config, {"scope"}, "applicability_config")
    scope = get_dict(config, "scope", required=True, prefix="applicability_config")
    prefix = "applicability_config[scope]"
    check_params(scope, {"price_type", "prices"}, prefix)
    price_type = get_str(scope, "price_type", prefix=prefix, choices=("metered",))
    prices = as_list(scope.get("prices"), f"{prefix}[prices]")
    if (price_type is None) == (not prices):
        raise invalid(prefix, "Specify exactly one of price_type or prices in the scope.")
    if price_type is not None:
        return {"price_type": price_type}
    ids = []
    for index, entry in enumerate(prices):
        entry_prefix = f"{prefix}[prices][{index}]"
        if not isinstance(entry, dict):
            raise invalid(entry_prefix, f"Invalid object: {entry_prefix}")
        price_id = need_str(entry, "id", prefix=entry_prefix)
        price = state.get("price", price_id, param=f"{entry_prefix}[id]")
        if (price["recurring"] or {}).get("usage_type") != "metered":
            raise invalid(f"{entry_prefix}[id]", "Credit grants apply only to metered prices.")
        ids.append({"id": price_id})
    return {"prices": ids}


@route("POST", "/v1/billing/credit_grants")
def credit_grant_create(ctx: Ctx) -> Obj:
    """``POST /v1/billing/credit_grants`` (monetary amounts, metered scope)."""
    state, params = ctx.state, ctx.params
    check_params(
        params,
        {"customer", "amount", "applicability_config", "category", "effective_at"}
        | {"expires_at", "metadata", "name", "priority"},
    )
    customer_id = need_str(params, "customer")
    state.get("customer", customer_id, param="customer")
    amount = get_dict(params, "amount", required=True)
    check_params(amount, {"type", "monetary"}, "amount")
    need_str(amount, "type", prefix="amount", choices=("monetary",))
    money = get_dict(amount, "monetary", required=True, prefix="amount")
    check_params(money, {"currency", "value"}, "amount[monetary]")
    currency = need_str(money, "currency", prefix="amount[monetary]").lower()
    value = need_int(money, "value", prefix="amount[monetary]", minimum=1)
    scope = _scope(state, params)
    now = state.now()
    effective_at = get_int(params, "effective_at") or now
    expires_at = get_int(params, "expires_at")
    if expires_at is not None and expires_at <= effective_at:
        raise invalid("expires_at", "expires_at must be after effective_at.")
    priority = get_int(params, "priority", minimum=0)
    if priority is not None and priority > 100:
        raise invalid("priority", "priority must be between 0 and 100.")
    grant = objects.credit_grant(objects.new_id("credgr_test_61", 28), now, customer_id)
    grant.update(
        amount=objects.monetary(value, currency),
        applicability_config={"scope": scope},
        category=get_str(params, "category", choices=("paid", "promotional")) or "paid",
        effective_at=effective_at,
        expires_at=expires_at,
        metadata=merge_metadata({}, get_metadata(params)),
        name=get_str(params, "name", max_length=100),
        priority=50 if priority is None else priority,
    )
    state.put(grant, remaining=value)
    state.put(
        objects.credit_balance_transaction(
            objects.new_id("cbtxn_test_61", 28),
            now,
            grant["id"],
            credit={
                "amount": objects.monetary(value, currency),
                "credits_application_invoice_voided": None,
                "type": "credits_granted",
            },
        ),
        customer=customer_id,
    )
    state.emit("billing.credit_grant.created", grant)
    return grant


@route("GET", "/v1/billing/credit_grants")
def credit_grant_list(ctx: Ctx) -> Obj:
    """``GET /v1/billing/credit_grants`` (``customer`` filter)."""
    check_params(ctx.params, {"customer", "limit", "starting_after", "ending_before"})
    customer_id = get_str(ctx.params, "customer")
    items = ctx.state.all(
        "billing.credit_grant", lambda g: customer_id is None or g["customer"] == customer_id
    )
    return paginate(items, ctx.params, "/v1/billing/credit_grants")


@route("GET", "/v1/billing/credit_grants/{id}")
def credit_grant_retrieve(ctx: Ctx) -> Obj:
    """``GET /v1/billing/credit_grants/{id}``."""
    return ctx.state.get("billing.credit_grant", ctx.args["id"], label="billing.credit_grant")


@route("POST", "/v1/billing/credit_grants/{id}/void")
def credit_grant_void(ctx: Ctx) -> Obj:
    """``POST /v1/billing/credit_grants/{id}/void``: its unused balance no longer applies."""
    check_params(ctx.params, set())
    grant = ctx.state.get("billing.credit_grant", ctx.args["id"], label="billing.credit_grant")
    if grant["voided_at"] is None:
        grant.update(voided_at=ctx.state.now(), updated=ctx.state.now())
        ctx.state.emit("billing.credit_grant.updated", grant)
    return grant


@route("POST", "/v1/billing/credit_grants/{id}/expire")
def credit_grant_expire(ctx: Ctx) -> Obj:
    """``POST /v1/billing/credit_grants/{id}/expire``: it stops applying now."""
    check_params(ctx.params, set())
    grant = ctx.state.get("billing.credit_grant", ctx.args["id"], label="billing.credit_grant")
    grant.update(expires_at=ctx.state.now(), updated=ctx.state.now())
    ctx.state.emit("billing.credit_grant.updated", grant)
    return grant


def _grant_live(state: State, grant: Obj, at: int) -> bool:
    return (
        grant["voided_at"] is None
        and grant["effective_at"] <= at
        and (grant["expires_at"] is None or grant["expires_at"] > at)
    )


def _grant_covers(grant: Obj, price: Obj) -> bool:
    if (price.get("recurring") or {}).get("usage_type") != "metered":
        return False
    scope = grant["applicability_config"]["scope"]
    if scope.get("price_type") == "metered":
        return True
    return any(entry["id"] == price["id"] for entry in scope.get("prices") or [])


@route("GET", "/v1/billing/credit_balance_summary")
def credit_balance_summary(ctx: Ctx) -> Obj:
    """``GET /v1/billing/credit_balance_summary`` (``customer``, ``filter``)."""
    state, params = ctx.state, ctx.params
    check_params(params, {"customer", "filter"})
    customer_id = need_str(params, "customer")
    state.get("customer", customer_id, param="customer")
    flt = get_dict(params, "filter", required=True)
    check_params(flt, {"type", "applicability_scope", "credit_grant"}, "filter")
    kind = need_str(flt, "type", prefix="filter", choices=("applicability_scope", "credit_grant"))
    grant_id = get_str(flt, "credit_grant", prefix="filter") if kind == "credit_grant" else None
    now = state.now()
    totals: dict[str, int] = {}
    for grant in state.all("billing.credit_grant", lambda g: g["customer"] == customer_id):
        if grant_id is not None and grant["id"] != grant_id:
            continue
        if not _grant_live(state, grant, now):
            continue
        currency = grant["amount"]["monetary"]["currency"]
        totals[currency] = totals.get(currency, 0) + int(state.hidden(grant["id"])["remaining"])
    summary = objects.template("billing.credit_balance_summary")
    summary.update(
        customer=customer_id,
        livemode=False,
        customer_account=None,
        balances=[
            {
                "available_balance": objects.monetary(value, currency),
                "ledger_balance": objects.monetary(value, currency),
            }
            for currency, value in sorted(totals.items())
        ],
    )
    return summary


@route("GET", "/v1/billing/credit_balance_transactions")
def credit_balance_transactions(ctx: Ctx) -> Obj:
    """``GET /v1/billing/credit_balance_transactions`` (``customer``, ``credit_grant``)."""
    state, params = ctx.state, ctx.params
    check_params(params, {"customer", "credit_grant", "limit", "starting_after", "ending_before"})
    customer_id = need_str(params, "customer")
    grant_id = get_str(params, "credit_grant")
    items = state.all(
        "billing.credit_balance_transaction",
        lambda t: (
            state.hidden(t["id"]).get("customer") == customer_id
            and (grant_id is None or t["credit_grant"] == grant_id)
        ),
    )
    return paginate(items, params, "/v1/billing/credit_balance_transactions")


# --- subscriptions ----------------------------------------------------------------------


def _item_for(state: State, sub: Obj, raw: Any, prefix: str, period: tuple[int, int]) -> Obj:
    def name(key: str) -> str:
        return f"{prefix}[{key}]" if prefix else key

    if not isinstance(raw, dict):
        raise invalid(prefix, f"Invalid object: {prefix}")
    check_params(raw, {"price", "quantity", "metadata"}, prefix)
    price_id = need_str(raw, "price", prefix=prefix)
    price = state.get("price", price_id, param=name("price"))
    if price["type"] != "recurring":
        raise invalid(name("price"), f"The price specified ({price_id}) is not a recurring price.")
    if not price["active"]:
        raise invalid(name("price"), f"The price specified ({price_id}) is inactive.")
    if price["currency"] != sub["currency"]:
        raise invalid(name("price"), "All prices on a subscription must share one currency.")
    metered = price["recurring"]["usage_type"] == "metered"
    quantity = get_int(raw, "quantity", prefix=prefix, minimum=0)
    if metered and quantity is not None:
        raise invalid(
            name("quantity"),
            "Quantity should not be specified where usage_type is `metered`. "
            f"Remove quantity from `{prefix or 'the item'}`.",
        )
    item = objects.subscription_item(
        objects.new_id("si_", 14),
        state.now(),
        sub["id"],
        price,
        None if metered else (1 if quantity is None else quantity),
        period,
    )
    item["metadata"] = merge_metadata({}, get_metadata(raw, prefix=prefix))
    return item


def _items_list(sub: Obj, items: list[Obj]) -> Obj:
    listing = objects.list_object(items, f"/v1/subscription_items?subscription={sub['id']}")
    listing["total_count"] = len(items)
    return listing


@route("POST", "/v1/subscriptions")
def subscription_create(ctx: Ctx) -> Obj:
    """``POST /v1/subscriptions``: starts ``active``; usage is billed at period close."""
    state, params = ctx.state, ctx.params
    check_params(
        params,
        {"customer", "items", "metadata", "collection_method", "default_payment_method"}
        | {"payment_behavior", "billing_cycle_anchor", "days_until_due", "description"}
        | {"off_session", "proration_behavior", "currency", "cancel_at_period_end"},
    )
    customer_id = need_str(params, "customer")
    customer = state.get("customer", customer_id, param="customer")
    raw_items = as_list(params.get("items"), "items")
    if not raw_items:
        raise missing("items")
    first = raw_items[0].get("price") if isinstance(raw_items[0], dict) else None
    first_price = state.objects.get(first) if isinstance(first, str) else None
    currency = get_str(params, "currency") or (first_price or {}).get("currency") or "usd"
    now = state.now()
    sub = objects.subscription(objects.new_id("sub_"), now, customer_id, currency)
    anchor = get_int(params, "billing_cycle_anchor") or now
    sub["billing_cycle_anchor"] = anchor
    items: list[Obj] = []
    for index, raw in enumerate(raw_items):
        prefix = f"items[{index}]"
        price_id = raw.get("price") if isinstance(raw, dict) else None
        price = state.objects.get(price_id) if isinstance(price_id, str) else None
        recurring = (price or {}).get("recurring") or {}
        period_end = add_interval(
            anchor, recurring.get("interval", "month"), recurring.get("interval_count", 1)
        )
        item = _item_for(state, sub, raw, prefix, (now, period_end))
        if any(existing["price"]["id"] == item["price"]["id"] for existing in items):
            raise invalid(
                f"{prefix}[price]",
                f"Cannot add multiple subscription items with the same price: {price_id}",
            )
        items.append(item)
    pm_id = get_str(params, "default_payment_method")
    if pm_id is not None:
        method = state.get(
            "payment_method", pm_id, param="default_payment_method", label="PaymentMethod"
        )
        if method["customer"] != customer_id:
            raise invalid(
                "default_payment_method",
                "The payment method must be attached to the subscription's customer.",
            )
    sub.update(
        items=_items_list(sub, items),
        metadata=merge_metadata({}, get_metadata(params)),
        collection_method=get_str(
            params, "collection_method", choices=("charge_automatically", "send_invoice")
        )
        or "charge_automatically",
        days_until_due=get_int(params, "days_until_due"),
        default_payment_method=pm_id,
        description=get_str(params, "description"),
        cancel_at_period_end=bool(get_bool(params, "cancel_at_period_end")),
    )
    for item in items:
        state.put(item)
    state.put(sub)
    if customer["currency"] is None:
        customer["currency"] = currency
    state.emit("customer.subscription.created", sub)
    return sub


@route("GET", "/v1/subscriptions/{id}")
def subscription_retrieve(ctx: Ctx) -> Obj:
    """``GET /v1/subscriptions/{id}``."""
    return ctx.state.get("subscription", ctx.args["id"])


@route("GET", "/v1/subscriptions")
def subscription_list(ctx: Ctx) -> Obj:
    """``GET /v1/subscriptions`` (``customer``, ``price``, ``status``; canceled only if asked)."""
    check_params(
        ctx.params, {"customer", "price", "status", "limit", "starting_after", "ending_before"}
    )
    customer_id = get_str(ctx.params, "customer")
    price_id = get_str(ctx.params, "price")
    status = get_str(ctx.params, "status")

    def keep(s: Obj) -> bool:
        if customer_id is not None and s["customer"] != customer_id:
            return False
        if price_id is not None and all(i["price"]["id"] != price_id for i in s["items"]["data"]):
            return False
        if status in (None, ""):
            return s["status"] != "canceled"
        return status == "all" or s["status"] == status

    return paginate(ctx.state.all("subscription", keep), ctx.params, "/v1/subscriptions")


@route("DELETE", "/v1/subscriptions/{id}")
def subscription_cancel(ctx: Ctx) -> Obj:
    """``DELETE /v1/subscriptions/{id}``: canceled at once (no final usage invoice here)."""
    check_params(ctx.params, {"invoice_now", "prorate", "cancellation_details"})
    sub = ctx.state.get("subscription", ctx.args["id"])
    if sub["status"] == "canceled":
        raise invalid(None, f"No such subscription: '{sub['id']}' is already canceled.")
    now = ctx.state.now()
    sub.update(status="canceled", canceled_at=now, ended_at=now)
    sub["cancellation_details"]["reason"] = "cancellation_requested"
    ctx.state.emit("customer.subscription.deleted", sub)
    return sub


@route("POST", "/v1/subscription_items")
def subscription_item_create(ctx: Ctx) -> Obj:
    """``POST /v1/subscription_items``: add a price to a subscription."""
    state, params = ctx.state, ctx.params
    check_params(
        params,
        {"subscription", "price", "quantity", "metadata", "proration_behavior"}
        | {"payment_behavior"},
    )
    sub_id = need_str(params, "subscription")
    sub = state.get("subscription", sub_id, param="subscription")
    if sub["status"] == "canceled":
        raise invalid("subscription", "You cannot add items to a canceled subscription.")
    current = sub["items"]["data"]
    period = (
        (current[0]["current_period_start"], current[0]["current_period_end"])
        if current
        else (state.now(), add_interval(state.now(), "month"))
    )
    fields = {k: v for k, v in params.items() if k in ("price", "quantity", "metadata")}
    item = _item_for(state, sub, fields, "", period)
    if any(existing["price"]["id"] == item["price"]["id"] for existing in current):
        raise invalid(
            "price",
            f"Cannot add multiple subscription items with the same price: {item['price']['id']}",
        )
    previous = {"items": copy.deepcopy(sub["items"])}
    state.put(item)
    sub["items"] = _items_list(sub, [*current, item])
    state.emit("customer.subscription.updated", sub, previous)
    return item


@route("GET", "/v1/subscription_items")
def subscription_item_list(ctx: Ctx) -> Obj:
    """``GET /v1/subscription_items?subscription=...``."""
    check_params(ctx.params, {"subscription", "limit", "starting_after", "ending_before"})
    sub = ctx.state.get("subscription", need_str(ctx.params, "subscription"), param="subscription")
    return paginate(
        list(reversed(sub["items"]["data"])),
        ctx.params,
        f"/v1/subscription_items?subscription={sub['id']}",
    )


@route("GET", "/v1/subscription_items/{id}")
def subscription_item_retrieve(ctx: Ctx) -> Obj:
    """``GET /v1/subscription_items/{id}``."""
    item = ctx.state.get("subscription_item", ctx.args["id"])
    sub = ctx.state.get("subscription", item["subscription"])
    for current in sub["items"]["data"]:
        if current["id"] == item["id"]:
            return current
    return item


# --- invoices ---------------------------------------------------------------------------


def _unit_text(price: Obj) -> str:
    unit = unit_amount(price)
    return f"{objects.decimal_text(unit)} {price['currency']} minor units"


def _apply_credits(state: State, invoice: Obj, lines: list[Obj], prices: list[Obj]) -> None:
    """Apply the customer's credit grants to metered lines (debiting the grants)."""
    now = state.now()
    grants = [
        g
        for g in state.all("billing.credit_grant", lambda g: g["customer"] == invoice["customer"])
        if _grant_live(state, g, now)
        and g["amount"]["monetary"]["currency"] == invoice["currency"]
        and state.hidden(g["id"])["remaining"] > 0
    ]
    grants.sort(
        key=lambda g: (
            g["priority"],
            g["expires_at"] if g["expires_at"] is not None else float("inf"),
            0 if g["category"] == "promotional" else 1,
            g["created"],
        )
    )
    for line, price in zip(lines, prices, strict=True):
        owed = line["amount"]
        for grant in grants:
            if owed <= 0:
                break
            extra = state.hidden(grant["id"])
            if extra["remaining"] <= 0 or not _grant_covers(grant, price):
                continue
            take = min(owed, int(extra["remaining"]))
            extra["remaining"] -= take
            owed -= take
            txn = objects.credit_balance_transaction(
                objects.new_id("cbtxn_test_61", 28),
                now,
                grant["id"],
                debit={
                    "amount": objects.monetary(take, invoice["currency"]),
                    "credits_applied": {"invoice": invoice["id"], "invoice_line_item": line["id"]},
                    "type": "credits_applied",
                },
            )
            state.put(txn, customer=invoice["customer"])
            line["pretax_credit_amounts"].append(
                {
                    "amount": take,
                    "credit_balance_transaction": txn["id"],
                    "discount": None,
                    "type": "credit_balance_transaction",
                }
            )


def build_invoice(state: State, sub: Obj, start: int, end: int) -> Obj:
    """Invoice a subscription's usage in ``[start, end)``, finalize it, apply credits."""
    customer = state.get("customer", sub["customer"])
    now = state.now()
    invoice = objects.invoice(objects.new_id("in_"), now, customer, sub["currency"])
    invoice.update(
        subscription=sub["id"],
        parent={
            "quote_details": None,
            "subscription_details": {
                "metadata": copy.deepcopy(sub["metadata"]),
                "subscription": sub["id"],
            },
            "type": "subscription_details",
        },
        period_start=start,
        period_end=end,
        collection_method=sub["collection_method"],
        default_payment_method=sub["default_payment_method"],
    )
    lines: list[Obj] = []
    prices: list[Obj] = []
    for item in sub["items"]["data"]:
        price = state.objects.get(item["price"]["id"], item["price"])
        recurring = price["recurring"] or {}
        if recurring.get("usage_type") == "metered":
            meter = state.get("billing.meter", recurring["meter"])
            quantity = state.usage(meter, customer["id"], start, end)
        else:
            quantity = Decimal(item["quantity"] or 0)
        amount = round_cents(quantity * unit_amount(price))
        product = state.objects.get(price["product"], {})
        lines.append(
            objects.invoice_line(
                objects.new_id("il_"),
                invoice["id"],
                amount=amount,
                currency=invoice["currency"],
                description=(
                    f"{objects.decimal_text(quantity)} × {product.get('name', price['id'])} "
                    f"(at {_unit_text(price)} / unit)"
                ),
                period=(start, end),
                quantity=quantity,
                price_obj=price,
                subscription_id=sub["id"],
                subscription_item_id=item["id"],
            )
        )
        prices.append(price)
    subtotal = sum(line["amount"] for line in lines)
    invoice["lines"]["data"] = lines
    invoice["lines"]["total_count"] = len(lines)
    invoice.update(subtotal=subtotal, subtotal_excluding_tax=subtotal)
    _set_totals(invoice)
    state.put(invoice)
    state.emit("invoice.created", invoice)
    # Finalize: credits, number, hosted pages.
    _apply_credits(state, invoice, lines, prices)
    _set_totals(invoice)
    sequence = customer["next_invoice_sequence"]
    customer["next_invoice_sequence"] = sequence + 1
    invoice.update(
        number=f"{customer['invoice_prefix']}-{sequence:04d}",
        status="open",
        effective_at=now,
        ending_balance=0,
        hosted_invoice_url=f"{state.public_url}/invoices/{invoice['id']}",
        invoice_pdf=f"{state.public_url}/invoices/{invoice['id']}/pdf",
        webhooks_delivered_at=now,
        next_payment_attempt=now + 3600 if invoice["amount_due"] else None,
    )
    invoice["status_transitions"]["finalized_at"] = now
    state.emit("invoice.finalized", invoice)
    if invoice["amount_due"] == 0:
        _mark_paid(state, invoice)
    sub["latest_invoice"] = invoice["id"]
    return invoice


def _set_totals(invoice: Obj) -> None:
    credits = [
        entry for line in invoice["lines"]["data"] for entry in line["pretax_credit_amounts"]
    ]
    credited = sum(entry["amount"] for entry in credits)
    total = invoice["subtotal"] - credited
    invoice.update(
        total_pretax_credit_amounts=copy.deepcopy(credits),
        total=total,
        total_excluding_tax=total,
        amount_due=total,
        amount_remaining=total - invoice["amount_paid"],
    )


def _mark_paid(state: State, invoice: Obj) -> None:
    now = state.now()
    invoice.update(
        status="paid",
        amount_paid=invoice["amount_due"],
        amount_remaining=0,
        next_payment_attempt=None,
    )
    invoice["status_transitions"]["paid_at"] = now
    state.emit("invoice.paid", invoice)
    if invoice["amount_paid"]:
        state.emit("invoice.payment_succeeded", invoice)


def pay_invoice(state: State, invoice: Obj, pm_id: str | None = None) -> StripeError | None:
    """Charge an open invoice to a payment method (or the default); None when paid."""
    if invoice["status"] != "open":
        raise invalid(None, f"Invoice is {invoice['status']}; only open invoices can be paid.")
    customer = state.get("customer", invoice["customer"])
    pm_id = (
        pm_id
        or invoice["default_payment_method"]
        or customer["invoice_settings"]["default_payment_method"]
    )
    if pm_id is None:
        raise invalid(
            None,
            "This customer has no attached payment source or default payment method.",
        )
    method = state.get("payment_method", pm_id, param="payment_method", label="PaymentMethod")
    intent = new_intent(
        state,
        invoice["amount_due"],
        invoice["currency"],
        customer["id"],
        description=f"Invoice {invoice['number']}",
    )
    invoice.update(attempted=True, attempt_count=invoice["attempt_count"] + 1)
    error = charge_with(state, intent, method)
    if error is not None:
        invoice["next_payment_attempt"] = state.now() + 3 * 86400
        state.emit("invoice.payment_failed", invoice)
        return error
    _mark_paid(state, invoice)
    return None


def close_period(
    state: State,
    customer_id: str,
    period_end: int,
    period_start: int | None = None,
    subscription_id: str | None = None,
    pay: bool = False,
) -> list[Obj]:
    """Invoice each live subscription of a customer for ``[start, period_end)``.

    ``period_start`` defaults to each subscription's current period start. Afterwards
    the subscription's period moves on to start at ``period_end``. With ``pay``, an
    invoice with an amount due is charged to the default payment method at once.
    """
    state.get("customer", customer_id, param="customer")
    if subscription_id is not None:
        sub = state.get("subscription", subscription_id, param="subscription")
        if sub["customer"] != customer_id:
            raise invalid("subscription", "The subscription belongs to another customer.")
        subs = [sub]
    else:
        subs = list(
            reversed(
                state.all(
                    "subscription",
                    lambda s: s["customer"] == customer_id and s["status"] in LIVE_SUBSCRIPTION,
                )
            )
        )
    if not subs:
        raise invalid("customer", f"The customer {customer_id} has no live subscription.")
    invoices = []
    for sub in subs:
        items = sub["items"]["data"]
        start = (
            period_start
            if period_start is not None
            else min((i["current_period_start"] for i in items), default=sub["created"])
        )
        if period_end <= start:
            raise invalid("period_end", "period_end must be after the period start.")
        invoice = build_invoice(state, sub, start, period_end)
        for item in items:
            recurring = item["price"]["recurring"] or {}
            item["current_period_start"] = period_end
            item["current_period_end"] = add_interval(
                period_end, recurring.get("interval", "month"), recurring.get("interval_count", 1)
            )
        if pay and invoice["status"] == "open":
            pay_invoice(state, invoice)
        invoices.append(invoice)
    return invoices


@route("GET", "/v1/invoices")
def invoice_list(ctx: Ctx) -> Obj:
    """``GET /v1/invoices`` (``customer``, ``subscription``, ``status`` filters)."""
    check_params(
        ctx.params,
        {"customer", "subscription", "status", "limit", "starting_after", "ending_before"},
    )
    customer_id = get_str(ctx.params, "customer")
    sub_id = get_str(ctx.params, "subscription")
    status = get_str(
        ctx.params, "status", choices=("draft", "open", "paid", "uncollectible", "void")
    )
    items = ctx.state.all(
        "invoice",
        lambda i: (
            (customer_id is None or i["customer"] == customer_id)
            and (sub_id is None or i["subscription"] == sub_id)
            and (status is None or i["status"] == status)
        ),
    )
    return paginate(items, ctx.params, "/v1/invoices")


@route("GET", "/v1/invoices/{id}")
def invoice_retrieve(ctx: Ctx) -> Obj:
    """``GET /v1/invoices/{id}``."""
    return ctx.state.get("invoice", ctx.args["id"])


@route("GET", "/v1/invoices/{id}/lines")
def invoice_lines(ctx: Ctx) -> Obj:
    """``GET /v1/invoices/{id}/lines``."""
    check_params(ctx.params, {"limit", "starting_after", "ending_before"})
    invoice = ctx.state.get("invoice", ctx.args["id"])
    return paginate(invoice["lines"]["data"], ctx.params, f"/v1/invoices/{invoice['id']}/lines")


@route("POST", "/v1/invoices/{id}/pay")
def invoice_pay(ctx: Ctx) -> Obj:
    """``POST /v1/invoices/{id}/pay`` (``payment_method`` optional): 402 when declined."""
    check_params(ctx.params, {"payment_method", "off_session"})
    invoice = ctx.state.get("invoice", ctx.args["id"])
    error = pay_invoice(ctx.state, invoice, get_str(ctx.params, "payment_method"))
    if error is not None:
        raise error
    return invoice


def invoice_summary(invoice: Obj) -> dict[str, Any]:
    """The numbers a page shows for an invoice."""
    return {
        "subtotal": invoice["subtotal"],
        "credits": sum(e["amount"] for e in invoice["total_pretax_credit_amounts"] or []),
        "total": invoice["total"],
        "amount_due": invoice["amount_due"],
    }
