"""Test-only controls under ``/_test/`` (no auth; form or JSON bodies; JSON answers)."""

from __future__ import annotations

from typing import Any

from . import objects
from .billing import close_period, pay_invoice
from .errors import StripeError, invalid
from .formdata import as_list, get_bool, get_int, get_str, need_int, need_str
from .objects import Obj
from .payments import DECLINES, complete_session, get_session, settle_session
from .routing import ROUTES, Ctx, route


@route("GET", "/_test/health", kind="test")
def health(ctx: Ctx) -> Obj:
    """``GET /_test/health``: the server is up."""
    return {"ok": True, "now": ctx.state.now()}


@route("POST", "/_test/reset", kind="test")
def reset(ctx: Ctx) -> Obj:
    """``POST /_test/reset``: forget all objects, events and saved responses."""
    ctx.state.reset()
    return {"reset": True}


def _config(ctx: Ctx) -> Obj:
    state = ctx.state
    return {
        "webhook_url": state.dispatcher.url,
        "webhook_secret": state.dispatcher.secret,
        "enabled_events": list(state.options.enabled_events),
        "api_version": state.options.api_version,
        "set_default_payment_method_on_checkout": (
            state.options.set_default_payment_method_on_checkout
        ),
        "public_url": state.public_url,
    }


@route("GET", "/_test/config", kind="test")
def config_get(ctx: Ctx) -> Obj:
    """``GET /_test/config``."""
    return _config(ctx)


@route("POST", "/_test/config", kind="test")
def config_set(ctx: Ctx) -> Obj:
    """``POST /_test/config``: ``webhook_url``, ``webhook_secret``, ``enabled_events[]``...

    An empty ``webhook_url`` turns delivery off.
    """
    state, params = ctx.state, ctx.params
    if "webhook_url" in params:
        state.dispatcher.url = get_str(params, "webhook_url")
    if "webhook_secret" in params:
        secret = get_str(params, "webhook_secret")
        if secret is not None and not secret.startswith("whsec_"):
            raise invalid("webhook_secret", "A webhook secret starts with whsec_.")
        state.dispatcher.secret = secret
    if "enabled_events" in params:
        events = [str(e) for e in as_list(params["enabled_events"], "enabled_events")]
        state.options.enabled_events = events or ["*"]
    flag = get_bool(params, "set_default_payment_method_on_checkout")
    if flag is not None:
        state.options.set_default_payment_method_on_checkout = flag
    return _config(ctx)


@route("POST", "/_test/clock", kind="test")
def clock(ctx: Ctx) -> Obj:
    """``POST /_test/clock``: ``advance`` (seconds) or ``set`` (unix) the server clock."""
    state = ctx.state
    advance = get_int(ctx.params, "advance")
    moment = get_int(ctx.params, "set")
    if advance is not None:
        state.clock_offset += advance
    elif moment is not None:
        state.clock_offset += moment - state.now()
    return {"now": state.now(), "offset": state.clock_offset}


@route("GET", "/_test/events", kind="test")
def events(ctx: Ctx) -> Obj:
    """``GET /_test/events`` (``type`` filter): every event, oldest first."""
    kind = get_str(ctx.params, "type")
    items = [e for e in reversed(ctx.state.all("event")) if kind is None or e["type"] == kind]
    return objects.list_object(items, "/_test/events")


@route("POST", "/_test/events/{id}/resend", kind="test")
def resend(ctx: Ctx) -> Obj:
    """``POST /_test/events/{id}/resend``: deliver a recorded event again."""
    evt = ctx.state.resend(ctx.args["id"])
    return {"id": evt["id"], "type": evt["type"], "queued": True}


@route("GET", "/_test/webhooks", kind="test")
def deliveries(ctx: Ctx) -> Obj:
    """``GET /_test/webhooks``: the delivery log (one entry per attempt)."""
    return objects.list_object(ctx.state.dispatcher.attempts(), "/_test/webhooks")


@route("POST", "/_test/webhooks/wait", kind="test", locked=False)
def wait(ctx: Ctx) -> Obj:
    """``POST /_test/webhooks/wait`` (``timeout``): block until queued deliveries are done."""
    timeout = get_int(ctx.params, "timeout", minimum=0)
    idle = ctx.state.dispatcher.wait_idle(10 if timeout is None else timeout)
    return {"idle": idle}


@route("GET", "/_test/meter_events", kind="test")
def meter_events(ctx: Ctx) -> Obj:
    """``GET /_test/meter_events`` (``event_name``, ``customer``): accepted meter events."""
    name = get_str(ctx.params, "event_name")
    customer = get_str(ctx.params, "customer")
    items = [
        objects.meter_event(r.created, r.event_name, r.identifier, r.payload, r.timestamp)
        for r in ctx.state.meter_events
        if (name is None or r.event_name == name)
        and (customer is None or customer in r.payload.values())
    ]
    return objects.list_object(items, "/_test/meter_events")


@route("POST", "/_test/checkout/{id}/complete", kind="test")
def checkout_complete(ctx: Ctx) -> Obj:
    """``POST /_test/checkout/{id}/complete`` (``outcome=paid|delayed|declined``).

    The same as the hosted page's buttons; a decline answers 402 ``card_error``.
    """
    session = get_session(ctx.state, ctx.args["id"])
    outcome = get_str(ctx.params, "outcome") or "paid"
    error = complete_session(ctx.state, session, outcome)
    if error is not None:
        raise StripeError(
            402,
            error,
            type="card_error",
            code="card_declined",
            extra={"decline_code": "generic_decline"},
        )
    return session


@route("POST", "/_test/checkout/{id}/settle", kind="test")
def checkout_settle(ctx: Ctx) -> Obj:
    """``POST /_test/checkout/{id}/settle`` (``outcome=succeeded|failed``): a delayed payment."""
    session = get_session(ctx.state, ctx.args["id"])
    outcome = get_str(ctx.params, "outcome", choices=("succeeded", "failed")) or "succeeded"
    settle_session(ctx.state, session, outcome == "succeeded")
    return session


@route("POST", "/_test/customers/{id}/decline_next", kind="test")
def decline_next(ctx: Ctx) -> Obj:
    """``POST /_test/customers/{id}/decline_next`` (``decline_code``, ``count``).

    The customer's next ``count`` charges (off-session payments, invoice payments,
    checkout) are declined with ``decline_code`` (default ``generic_decline``).
    """
    customer = ctx.state.get("customer", ctx.args["id"])
    code = get_str(ctx.params, "decline_code") or "generic_decline"
    if code not in DECLINES:
        raise invalid("decline_code", f"decline_code must be one of {', '.join(DECLINES)}")
    count = get_int(ctx.params, "count", minimum=0)
    queue = ctx.state.decline_next.setdefault(customer["id"], [])
    queue.extend([code] * (1 if count is None else count))
    return {"customer": customer["id"], "decline_next": list(queue)}


@route("POST", "/_test/billing/close_period", kind="test")
def billing_close_period(ctx: Ctx) -> Obj:
    """``POST /_test/billing/close_period``: invoice a customer's usage up to ``period_end``.

    Params: ``customer``, ``period_end`` (unix), optional ``period_start``,
    ``subscription``, and ``pay=true`` to charge the default payment method at once.
    Answers a list of the invoices made (one per live subscription).
    """
    params = ctx.params
    invoices = close_period(
        ctx.state,
        need_str(params, "customer"),
        need_int(params, "period_end", minimum=0),
        get_int(params, "period_start", minimum=0),
        get_str(params, "subscription"),
        bool(get_bool(params, "pay")),
    )
    return objects.list_object(invoices, "/_test/billing/close_period")


@route("POST", "/_test/invoices/{id}/pay", kind="test")
def invoice_pay(ctx: Ctx) -> Obj:
    """``POST /_test/invoices/{id}/pay``: charge an open invoice now (402 when declined)."""
    invoice = ctx.state.get("invoice", ctx.args["id"])
    error = pay_invoice(ctx.state, invoice, get_str(ctx.params, "payment_method"))
    if error is not None:
        raise error
    return invoice


def describe() -> list[dict[str, Any]]:
    """Every route, for ``GET /_test/routes``."""
    return [{"method": r.method, "path": r.template, "kind": r.kind} for r in ROUTES]


@route("GET", "/_test/routes", kind="test")
def routes(ctx: Ctx) -> Obj:
    """``GET /_test/routes``: the endpoints this server implements."""
    return objects.list_object(describe(), "/_test/routes")
