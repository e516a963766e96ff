"""The v2 meter event stream through the official client: sessions, batches, dedup, errors."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
import stripe
from stripe.params.v2.billing import MeterEventStreamCreateParamsEvent
from stripe.v2.billing import MeterEventSession

from deploy.stripe_server import StripeServer
from tests.stripe_server.support import control, fetch

Event = MeterEventStreamCreateParamsEvent


@dataclass
class Setup:
    customer: str
    meter: str
    start: int


@pytest.fixture
def setup(client: stripe.StripeClient) -> Setup:
    """A customer subscribed to a metered price on meter ``tokens`` (sum, 0.01¢ a unit)."""
    cus = client.v1.customers.create(params={"email": "stream@example.com"})
    meter = client.v1.billing.meters.create(
        params={
            "display_name": "Tokens",
            "event_name": "tokens",
            "default_aggregation": {"formula": "sum"},
        }
    )
    price = client.v1.prices.create(
        params={
            "currency": "usd",
            "unit_amount_decimal": Decimal("0.01"),
            "product_data": {"name": "Tokens"},
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
        }
    )
    sub = client.v1.subscriptions.create(
        params={"customer": cus.id, "items": [{"price": price.id}]}
    )
    return Setup(cus.id, meter.id, sub["items"].data[0].current_period_start)


def _event(customer: str, value: str, identifier: str | None = None, **extra: str) -> Event:
    event: Event = {
        "event_name": "tokens",
        "payload": {"stripe_customer_id": customer, "value": value},
    }
    if identifier is not None:
        event["identifier"] = identifier
    if "timestamp" in extra:
        event["timestamp"] = extra["timestamp"]
    return event


def _send(
    client: stripe.StripeClient,
    token: str,
    events: list[Any],
    idempotency_key: str | None = None,
) -> None:
    """``client.v2.billing.meter_event_stream.create`` with the session token as api_key."""
    options: stripe.RequestOptions = {"api_key": token}
    if idempotency_key is not None:
        options["idempotency_key"] = idempotency_key
    client.v2.billing.meter_event_stream.create(params={"events": events}, options=options)


def _error_body(err: stripe.StripeError) -> dict[str, Any]:
    """The ``error`` object of an error answer."""
    assert isinstance(err.json_body, dict)
    error = err.json_body["error"]
    assert isinstance(error, dict)
    return error


def _token(client: stripe.StripeClient) -> str:
    return client.v2.billing.meter_event_session.create().authentication_token


def _total(client: stripe.StripeClient, server: StripeServer, setup: Setup) -> Decimal:
    """The meter's usage for the customer over the last 40 days (one summary window)."""
    now = server.state.now()
    start = now - now % 60 - 40 * 86400
    summaries = client.v1.billing.meters.event_summaries.list(
        setup.meter,
        params={"customer": setup.customer, "start_time": start, "end_time": start + 41 * 86400},
    )
    assert len(summaries.data) == 1
    return Decimal(str(summaries.data[0].aggregated_value))


def _accepted(server: StripeServer) -> int:
    status, _headers, body = fetch("GET", server.url + "/_test/meter_events")
    assert status == 200
    return len(json.loads(body)["data"])


def _rfc3339(timestamp: int) -> str:
    moment = dt.datetime.fromtimestamp(timestamp, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def test_base_addresses_point_meter_events_here(server: StripeServer) -> None:
    assert server.base_addresses["meter_events"] == server.url
    assert server.base_addresses["api"] == server.url


def test_session_shape_and_lifetime(client: stripe.StripeClient, server: StripeServer) -> None:
    session = client.v2.billing.meter_event_session.create()
    assert isinstance(session, MeterEventSession)
    assert set(session.to_dict()) == set(MeterEventSession.__annotations__) - {"OBJECT_NAME"}
    assert session.object == "v2.billing.meter_event_session"
    assert session.id.startswith("mes_")
    assert session.livemode is False
    assert session.authentication_token
    assert not session.authentication_token.startswith("sk_")
    assert session.created.endswith(".000Z")
    created = dt.datetime.fromisoformat(session.created)
    expires = dt.datetime.fromisoformat(session.expires_at)
    assert expires - created == dt.timedelta(minutes=15)
    assert abs(created.timestamp() - server.state.now()) <= 2
    assert client.v2.billing.meter_event_session.create().authentication_token != (
        session.authentication_token
    )


def test_session_needs_a_secret_key(client: stripe.StripeClient) -> None:
    token = _token(client)
    with pytest.raises(stripe.AuthenticationError):
        client.v2.billing.meter_event_session.create(options={"api_key": token})
    # The token is good for the stream only, not for the rest of the API.
    with pytest.raises(stripe.AuthenticationError):
        client.v1.customers.list(options={"api_key": token})


def test_stream_counts_events_like_v1(
    client: stripe.StripeClient, server: StripeServer, setup: Setup
) -> None:
    token = _token(client)
    now = server.state.now()
    result = client.v2.billing.meter_event_stream.create(  # type: ignore[func-returns-value]
        params={
            "events": [
                _event(setup.customer, "100", "s-1"),
                _event(setup.customer, "2.5", "s-2", timestamp=_rfc3339(now - 3600)),
                _event(setup.customer, "7"),  # no identifier: one is generated
            ]
        },
        options={"api_key": token},
    )
    assert result is None
    assert _total(client, server, setup) == Decimal("109.5")
    # The event with a timestamp lands in its own hour.
    hour = now - now % 3600 - 3600
    earlier = client.v1.billing.meters.event_summaries.list(
        setup.meter,
        params={"customer": setup.customer, "start_time": hour, "end_time": hour + 3600},
    )
    assert Decimal(str(earlier.data[0].aggregated_value)) == Decimal("2.5")
    _status, _headers, body = fetch("GET", server.url + "/_test/meter_events")
    accepted = json.loads(body)["data"]
    assert [e["identifier"] for e in accepted[:2]] == ["s-1", "s-2"]
    assert accepted[1]["timestamp"] == now - 3600
    assert len(accepted[2]["identifier"]) == 32


def test_duplicate_identifiers_are_skipped_not_errors(
    client: stripe.StripeClient, server: StripeServer, setup: Setup
) -> None:
    token = _token(client)
    _send(client, token, [_event(setup.customer, "10", "d-1"), _event(setup.customer, "5", "d-2")])
    # Repeats in a later batch and inside one batch are skipped silently.
    _send(
        client,
        token,
        [
            _event(setup.customer, "10", "d-1"),
            _event(setup.customer, "1", "d-3"),
            _event(setup.customer, "1", "d-3"),
        ],
    )
    assert _total(client, server, setup) == 16
    assert _accepted(server) == 3
    # One identifier space with v1: a v1 event's identifier is taken for the stream...
    client.v1.billing.meter_events.create(
        params={
            "event_name": "tokens",
            "payload": {"stripe_customer_id": setup.customer, "value": "100"},
            "identifier": "v1-1",
        }
    )
    _send(client, token, [_event(setup.customer, "100", "v1-1")])
    assert _total(client, server, setup) == 116
    # ...and a stream identifier is a duplicate for v1 (its synchronous 400).
    with pytest.raises(stripe.InvalidRequestError, match="already exists with identifier d-2"):
        client.v1.billing.meter_events.create(
            params={
                "event_name": "tokens",
                "payload": {"stripe_customer_id": setup.customer, "value": "5"},
                "identifier": "d-2",
            }
        )
    # After 24 hours the identifier counts again, as at Stripe.
    control(server, "/_test/clock", advance=24 * 3600 + 60)
    _send(client, _token(client), [_event(setup.customer, "4", "d-1")])
    assert _total(client, server, setup) == 120


def test_idempotency_key_replays_a_batch(
    client: stripe.StripeClient, server: StripeServer, setup: Setup
) -> None:
    token = _token(client)
    batch = [_event(setup.customer, "3"), _event(setup.customer, "4")]  # no identifiers
    _send(client, token, batch, idempotency_key="batch-1")
    _send(client, token, batch, idempotency_key="batch-1")  # a retry: not counted again
    assert _total(client, server, setup) == 7
    with pytest.raises(stripe.IdempotencyError):
        _send(client, token, batch[:1], idempotency_key="batch-1")


DROP = object()
"""Marks a field to leave out."""


def _ev(**fields: Any) -> Callable[[str, int], dict[str, Any]]:
    """A builder of an event for ``(customer, now)``: a valid one with ``fields`` changed.

    ``customer`` / ``value`` set the payload's entries; a ``timestamp`` given as a small
    int is seconds from now (sent as RFC 3339); :data:`DROP` leaves a field out.
    """

    def build(customer: str, now: int) -> dict[str, Any]:
        payload = {"stripe_customer_id": fields.pop("customer", customer), "value": "1"}
        payload["value"] = fields.pop("value", "1")
        event: dict[str, Any] = {"event_name": "tokens", "identifier": "bad", "payload": payload}
        event.update(fields)
        timestamp = event.get("timestamp")
        if isinstance(timestamp, int) and abs(timestamp) < 10**8:
            event["timestamp"] = _rfc3339(now + timestamp)
        for key in [k for k, v in event.items() if v is DROP]:
            del event[key]
        for key in [k for k, v in payload.items() if v is DROP]:
            del payload[key]
        return event

    return build


# (a builder of the bad event, the field the 400 names, the error code)
INVALID: list[tuple[Callable[[str, int], dict[str, Any]], str, str]] = [
    (_ev(event_name="unknown"), "event_name", "no_meter"),
    (_ev(event_name=DROP), "event_name", "parameter_missing"),
    (_ev(event_name=7), "event_name", "parameter_invalid"),
    (_ev(payload=DROP), "payload", "parameter_missing"),
    (_ev(payload=["x"]), "payload", "parameter_invalid"),
    (_ev(customer=DROP), "payload.stripe_customer_id", "meter_event_no_customer_defined"),
    (_ev(customer="cus_nobody"), "payload.stripe_customer_id", "meter_event_customer_not_found"),
    (_ev(value="-1"), "payload.value", "meter_event_invalid_value"),
    (_ev(value="lots"), "payload.value", "meter_event_invalid_value"),
    (_ev(value=DROP), "payload.value", "meter_event_invalid_value"),
    (_ev(value=5), "payload.value", "parameter_invalid"),
    (_ev(value="0.0000000000001"), "payload.value", "meter_event_value_too_many_digits"),
    (_ev(timestamp="yesterday"), "timestamp", "parameter_invalid"),
    (_ev(timestamp="2024-13-01T00:00:00Z"), "timestamp", "parameter_invalid"),
    # What stripe-python sends for a datetime: unix seconds, not RFC 3339.
    (_ev(timestamp=1717243200), "timestamp", "parameter_invalid"),
    (_ev(timestamp=-36 * 86400), "timestamp", "timestamp_too_far_in_past"),
    (_ev(timestamp=600), "timestamp", "timestamp_in_future"),
    (_ev(identifier=""), "identifier", "parameter_invalid"),
    (_ev(identifier="x" * 101), "identifier", "parameter_invalid"),
    (_ev(dimensions={}), "dimensions", "parameter_unknown"),
]


@pytest.mark.parametrize(("build", "field", "code"), INVALID)
def test_an_invalid_event_rejects_the_whole_batch(
    client: stripe.StripeClient,
    server: StripeServer,
    setup: Setup,
    build: Callable[[str, int], dict[str, Any]],
    field: str,
    code: str,
) -> None:
    token = _token(client)
    good = [_event(setup.customer, "1", "ok-1"), _event(setup.customer, "1", "ok-2")]
    bad = build(setup.customer, server.state.now())
    with pytest.raises(stripe.InvalidRequestError) as caught:
        _send(client, token, [*good, bad])
    error = caught.value
    assert (error.http_status, error.param, error.code) == (400, f"events[2].{field}", code)
    assert f"events[2].{field}" in error.user_message
    assert set(_error_body(error)) == {"type", "code", "message", "param"}
    assert _error_body(error)["type"] == "invalid_request_error"
    assert _accepted(server) == 0
    # Nothing was half-recorded: the good events alone are all counted.
    _send(client, token, good)
    assert _total(client, server, setup) == 2


def test_inactive_meter_is_rejected(
    client: stripe.StripeClient, server: StripeServer, setup: Setup
) -> None:
    client.v1.billing.meters.deactivate(setup.meter)
    with pytest.raises(stripe.InvalidRequestError) as caught:
        _send(client, _token(client), [_event(setup.customer, "1")])
    assert caught.value.code == "archived_meter"


@pytest.mark.parametrize("count", [0, 101])
def test_batch_size_is_1_to_100(
    client: stripe.StripeClient, server: StripeServer, setup: Setup, count: int
) -> None:
    token = _token(client)
    events = [_event(setup.customer, "1", f"n-{i}") for i in range(count)]
    with pytest.raises(stripe.InvalidRequestError) as caught:
        _send(client, token, events)
    assert caught.value.param == "events"
    assert _accepted(server) == 0
    _send(client, token, events[:100] or [_event(setup.customer, "1")])
    assert _accepted(server) == (100 if count else 1)


def test_missing_or_unknown_params(client: stripe.StripeClient, setup: Setup) -> None:
    token = _token(client)
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v2.billing.meter_event_stream.create(
            params={},  # type: ignore[typeddict-item]
            options={"api_key": token},
        )
    assert (missing.value.param, missing.value.code) == ("events", "parameter_missing")
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        client.v2.billing.meter_event_stream.create(
            params={"events": [_event(setup.customer, "1")], "extra": 1},  # type: ignore[typeddict-unknown-key]
            options={"api_key": token},
        )
    assert unknown.value.code == "parameter_unknown"


def test_bad_tokens_are_401(
    client: stripe.StripeClient, server: StripeServer, setup: Setup
) -> None:
    events = [_event(setup.customer, "1")]
    for token in ("not-a-session-token", "sk_test_a_secret_key_is_not_a_session"):
        with pytest.raises(stripe.AuthenticationError) as caught:
            _send(client, token, events)
        assert caught.value.http_status == 401
        assert _error_body(caught.value)["code"] == "unauthorized"
    # No Authorization at all (the library always sends one; a raw request does not).
    status, _headers, body = fetch("POST", server.url + "/v2/billing/meter_event_stream", None)
    assert status == 401
    assert json.loads(body)["error"]["code"] == "unauthorized"


def test_expired_session(client: stripe.StripeClient, server: StripeServer, setup: Setup) -> None:
    session = client.v2.billing.meter_event_session.create()
    control(server, "/_test/clock", advance=14 * 60)
    _send(client, session.authentication_token, [_event(setup.customer, "1", "e-1")])
    control(server, "/_test/clock", advance=60)
    with pytest.raises(stripe.TemporarySessionExpiredError) as caught:
        _send(client, session.authentication_token, [_event(setup.customer, "1", "e-2")])
    error = caught.value
    assert (error.http_status, error.code) == (401, "billing_meter_event_session_expired")
    assert _error_body(error)["type"] == "temporary_session_expired"
    assert session.id in error.user_message
    # What a sender does: make a new session and resend.
    _send(client, _token(client), [_event(setup.customer, "1", "e-2")])
    assert _accepted(server) == 2


def test_period_close_counts_stream_events(
    client: stripe.StripeClient, server: StripeServer, setup: Setup
) -> None:
    token = _token(client)
    now = server.state.now()
    for batch in range(3):
        _send(
            client,
            token,
            [_event(setup.customer, "1000", f"p-{batch}-{i}") for i in range(100)],
        )
    _send(client, token, [_event(setup.customer, "1000", "p-0-0")])  # a resend: skipped
    result = control(
        server, "/_test/billing/close_period", customer=setup.customer, period_end=now + 60
    )
    line = result["data"][0]["lines"]["data"][0]
    assert line["quantity"] == 300_000
    assert line["amount"] == 3000  # 300,000 × 0.01¢


def test_v2_errors_have_the_v2_shape(server: StripeServer) -> None:
    status, _headers, body = fetch("POST", server.url + "/v2/billing/nothing", None)
    assert status == 404
    error = json.loads(body)["error"]
    assert set(error) == {"type", "code", "message"}
    assert "doc_url" not in error


def test_routes_are_listed(server: StripeServer) -> None:
    _status, _headers, body = fetch("GET", server.url + "/_test/routes")
    routes = {(r["method"], r["path"]): r["kind"] for r in json.loads(body)["data"]}
    assert routes[("POST", "/v2/billing/meter_event_session")] == "api"
    assert routes[("POST", "/v2/billing/meter_event_stream")] == "meter_stream"
