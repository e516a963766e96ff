"""Customers, auth, errors and idempotency — through the official stripe library."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import stripe

from deploy.stripe_server import StripeServer
from tests.stripe_server.support import Receiver


def test_customer_create_retrieve_update(client: stripe.StripeClient) -> None:
    created = client.v1.customers.create(
        params={"email": "owner@example.com", "name": "Acme", "metadata": {"tenant_id": "42"}}
    )
    assert created.id.startswith("cus_")
    assert created.object == "customer"
    assert created.livemode is False
    assert created.metadata is not None
    assert created.metadata.to_dict() == {"tenant_id": "42"}
    assert created.invoice_settings is not None
    assert created.invoice_settings.default_payment_method is None

    fetched = client.v1.customers.retrieve(created.id)
    assert fetched.email == "owner@example.com"

    updated = client.v1.customers.update(
        created.id, params={"email": "billing@example.com", "metadata": {"plan": "pro"}}
    )
    assert updated.email == "billing@example.com"
    assert updated.metadata is not None
    assert updated.metadata.to_dict() == {"tenant_id": "42", "plan": "pro"}

    cleared = client.v1.customers.update(created.id, params={"metadata": {"plan": ""}})
    assert cleared.metadata is not None
    assert cleared.metadata.to_dict() == {"tenant_id": "42"}


def test_customer_events_are_recorded(
    client: stripe.StripeClient, receiver: Receiver, server: StripeServer
) -> None:
    cus = client.v1.customers.create(params={"email": "a@example.com"})
    client.v1.customers.update(cus.id, params={"name": "Renamed"})
    updated = receiver.wait_for("customer.updated")[0].event
    assert updated["data"]["object"]["name"] == "Renamed"
    assert updated["data"]["previous_attributes"] == {"name": None}
    assert updated["request"]["id"].startswith("req_")
    assert updated["request"]["idempotency_key"]

    events = client.v1.events.list(params={"type": "customer.created"})
    assert [e.data.object.id for e in events.data] == [cus.id]
    again = client.v1.events.retrieve(events.data[0].id)
    assert again.type == "customer.created"


def test_missing_object_is_resource_missing(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.customers.retrieve("cus_doesnotexist")
    assert info.value.http_status == 404
    assert info.value.code == "resource_missing"
    assert info.value.param == "id"


def test_unknown_and_missing_params_are_rejected(client: stripe.StripeClient) -> None:
    typo: Any = {"emial": "typo@example.com"}
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.customers.create(params=typo)
    assert info.value.code == "parameter_unknown"
    assert info.value.param == "emial"

    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.products.create(params={})  # type: ignore[typeddict-item]
    assert missing.value.code == "parameter_missing"
    assert missing.value.param == "name"


@pytest.mark.parametrize("key", ["sk_live_123", "pk_test_123", "sk_test_"])
def test_only_test_secret_keys_are_accepted(server: StripeServer, key: str) -> None:
    bad = stripe.StripeClient(key, base_addresses={"api": server.url})
    with pytest.raises(stripe.AuthenticationError) as info:
        bad.v1.customers.create(params={"email": "x@example.com"})
    assert info.value.http_status == 401


def test_idempotent_replay_returns_the_same_object(
    client: stripe.StripeClient, server: StripeServer
) -> None:
    params: stripe.params.CustomerCreateParams = {"email": "same@example.com"}
    first = client.v1.customers.create(params=params, options={"idempotency_key": "cus-key-1"})
    second = client.v1.customers.create(params=params, options={"idempotency_key": "cus-key-1"})
    assert second.id == first.id
    assert first.last_response is not None
    assert second.last_response is not None
    assert "Idempotent-Replayed" not in first.last_response.headers
    assert second.last_response.headers["Idempotent-Replayed"] == "true"
    assert second.last_response.headers["Idempotency-Key"] == "cus-key-1"
    with server.state.lock:
        assert len(server.state.all("customer")) == 1


def test_idempotency_key_with_other_params_is_an_idempotency_error(
    client: stripe.StripeClient,
) -> None:
    client.v1.customers.create(
        params={"email": "one@example.com"}, options={"idempotency_key": "cus-key-2"}
    )
    with pytest.raises(stripe.IdempotencyError) as info:
        client.v1.customers.create(
            params={"email": "two@example.com"}, options={"idempotency_key": "cus-key-2"}
        )
    assert info.value.http_status == 400
    assert info.value.error is not None
    assert info.value.error.type == "idempotency_error"


def test_failed_validation_does_not_burn_the_idempotency_key(
    client: stripe.StripeClient,
) -> None:
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.prices.create(
            params={"currency": "usd", "unit_amount": 100, "product": "prod_missing"},
            options={"idempotency_key": "price-key"},
        )
    product = client.v1.products.create(params={"name": "Credits"})
    price = client.v1.prices.create(
        params={"currency": "usd", "unit_amount": 100, "product": product.id},
        options={"idempotency_key": "price-key-2"},
    )
    assert price.id.startswith("price_")
    assert price.unit_amount == 100
    assert price.unit_amount_decimal == Decimal(100)  # the library parses decimal strings


def test_prices_with_decimal_amounts_and_lookup_keys(client: stripe.StripeClient) -> None:
    product = client.v1.products.create(params={"name": "Embeddings"})
    price = client.v1.prices.create(
        params={
            "currency": "usd",
            "unit_amount_decimal": Decimal("0.000125"),
            "product": product.id,
            "lookup_key": "embeddings-v1",
        }
    )
    assert price.unit_amount is None
    assert price.unit_amount_decimal == Decimal("0.000125")
    assert price.type == "one_time"
    found = client.v1.prices.list(params={"lookup_keys": ["embeddings-v1"]})
    assert [p.id for p in found.data] == [price.id]
    assert client.v1.prices.retrieve(price.id).product == product.id
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.prices.create(
            params={
                "currency": "usd",
                "unit_amount": 1,
                "product": product.id,
                "lookup_key": "embeddings-v1",
            }
        )


def test_lists_paginate_newest_first(client: stripe.StripeClient) -> None:
    ids = [client.v1.customers.create(params={"name": f"c{i}"}).id for i in range(5)]
    page = client.v1.customers.list(params={"limit": 2})
    assert [c.id for c in page.data] == ids[::-1][:2]
    assert page.has_more is True
    every = [c.id for c in page.auto_paging_iter()]
    assert every == ids[::-1]


def test_expand_replaces_ids_with_objects(client: stripe.StripeClient) -> None:
    product = client.v1.products.create(params={"name": "Tokens"})
    price = client.v1.prices.create(
        params={"currency": "usd", "unit_amount": 5, "product": product.id}
    )
    expanded = client.v1.prices.retrieve(price.id, params={"expand": ["product"]})
    assert expanded.product.name == "Tokens"  # type: ignore[union-attr]
