"""The v2 meter event stream: sessions, batched events, dedup, validation, auth."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
import stripe
from stripe.params.v2.billing import MeterEventStreamCreateParamsEvent
from stripe.v2.billing import MeterEventSession

from deploy.stripe_server import StripeServer
from tests.stripe_server.support import control, fetch


@dataclass
class Setup:
    customer: str
    meter: str
    price: str
    start: int


@pytest.fixture
def setup(client: stripe.StripeClient) -> Setup:
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
    return Setup(cus.id, meter.id, price.id, sub["items"].data[0].current_period_start)


def _event(
    customer: str, value: str, identifier: str | None = None, **extra: Any
) -> MeterEventStreamCreateParamsEvent:
    event: MeterEventStreamCreateParamsEvent = {
        "event_name": "tokens",
        "payload": {"stripe_customer_id": customer, "value": value},
    }
    if identifier is not None:
        event["identifier"] = identifier
    event.update(extra)  # type: ignore[typeddict-item]
    return event


def _send(
    client: stripe.StripeClient,
    token: str,
    events: list[MeterEventStreamCreateParamsEvent],
    **options: str,
) -> None:
    client.v2.billing.meter_event_stream.create(
        params={"events": events}, options={"api_key": token, **options}
    )  # type: ignore[func-returns-value]


def _total(client: stripe.StripeClient, server: StripeServer, setup: Setup) -> int:
    now = server.state.now()
    start = now - now % 60 - 40 * 86400
    summaries = client.v1.billing.meters.event_summaries.list(
        setup.meter,
        params={"customer": setup.customer, "start_time": start, "end_time": start + 41 * 86400},
    )
    value = summaries.data[0].aggregated_value
    assert isinstance(value, int | float)
    return int(value)


def _rfc3339(timestamp: int) -> str:
    return dt.datetime.fromtimestamp(timestamp, tz=dt.UTC).isoformat().replace("+00:00", "Z")


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
    created = dt.datetime.fromisoformat(session.created)
    expires = dt.datetime.fromisoformat(session.expires_at)
    assert session.created.endswith("Z")
    assert expires - created == dt.timedelta(minutes=15)
    assert abs(created.timestamp() - server.state.now()) <= 2
    # A second session has its own token.
    other = client.v2.billing.meter_event_session.create()
    assert other.authentication_token != session.authentication_token


def test_session_needs_a_secret_key(client: stripe.StripeClient) -> None:
    session = client.v2.billing.meter_event_session.create()
    with pytest.raises(stripe.AuthenticationError):
        client.v2.billing.meter_event_session.create(
            options={"api_key": session.authentication_token}
        )
    # The token is good for the stream only, not for the v1 API.
    with pytest.raises(stripe.AuthenticationError):
        client.v1.customers.list(options={"api_key": session.authentication_token})


def test_stream_counts_events_like_v1(
    client: stripe.StripeClient, server: StripeServer, setup: Setup
) -> None:
    session = client.v2.billing.meter_event_session.create()
    now = server.state.now()
    result = client.v2.billing.meter_event_stream.create(  # type: ignore[func-returns-value]
        params={
            "events": [
                _event(setup.customer, "100", "s-1"),
                _event(setup.customer, "2.5", "s-2", timestamp=_rfc3339(now - 3600)),
                _event(setup.customer, "7"),  # identifier generated
            ]
        },
        options={"api_key": session.authentication_token},
    )
    assert result is None
    assert _total(client, server, setup) == 109  # 109.5 floors? no: see below
