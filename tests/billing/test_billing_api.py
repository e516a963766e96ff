"""``GET /v1/balance`` and ``GET /v1/usage``: numbers, grouping, validation, isolation."""

from datetime import UTC, datetime, timedelta

import pytest
from rest_framework.test import APIClient

from billing import ledger, selectors
from billing.models import LedgerEntry
from tests.factories import api_key_make

pytestmark = pytest.mark.django_db


def _usage(world, *, cost: int, model: str = "echo", units: int = 1, key=None, at=None) -> None:
    """A charged call through the real reserve/settle path, optionally moved in time."""
    source = f"req_{LedgerEntry.objects.count()}_{cost}"
    hold = ledger.credit_reserve(
        tenant_id=world.tenant.pk,
        amount_micros=cost,
        source=source,
        ttl_seconds=60,
        api_key_id=(key or world.key).pk,
    )
    ledger.credit_settle(hold=hold, cost_micros=cost, units=units, model_slug=model, source=source)
    if at is not None:
        LedgerEntry.objects.filter(source=source).update(created_at=at)


def test_balance_reports_balance_reserved_and_available(world):
    _usage(world, cost=250_000)
    ledger.credit_reserve(
        tenant_id=world.tenant.pk, amount_micros=1_000_000, source="open", ttl_seconds=60
    )
    response = world.api.get("/v1/balance")
    assert response.status_code == 200
    assert response.json() == {
        "balance_micros": 99_750_000,
        "reserved_micros": 1_000_000,
        "available_micros": 98_750_000,
        "currency": "usd",
    }


def test_balance_requires_a_key(world):
    response = APIClient().get("/v1/balance")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_api_key"


def test_usage_defaults_to_this_month_grouped_by_model(world):
    _usage(world, cost=100, model="echo", units=2)
    _usage(world, cost=300, model="echo", units=3)
    _usage(world, cost=1_000, model="minilm", units=9)
    _usage(world, cost=77, at=selectors.month_start_utc() - timedelta(seconds=1))
    body = world.api.get("/v1/usage").json()
    assert body["group_by"] == "model"
    assert body["start"] == selectors.month_start_utc().isoformat().replace("+00:00", "Z")
    assert body["data"] == [
        {"group": "minilm", "units": 9, "calls": 1, "cost_micros": 1_000},
        {"group": "echo", "units": 5, "calls": 2, "cost_micros": 400},
    ]
    assert body["total_cost_micros"] == 1_400


def test_usage_by_day_over_an_explicit_half_open_period(world):
    _usage(world, cost=5, at=datetime(2026, 1, 31, 23, 59, tzinfo=UTC))
    _usage(world, cost=7, at=datetime(2026, 2, 1, tzinfo=UTC))
    _usage(world, cost=11, at=datetime(2026, 2, 2, 8, tzinfo=UTC))
    _usage(world, cost=13, at=datetime(2026, 2, 3, tzinfo=UTC))
    body = world.api.get(
        "/v1/usage", {"start": "2026-02-01", "end": "2026-02-03", "group_by": "day"}
    ).json()
    assert body["start"] == "2026-02-01T00:00:00Z"
    assert body["end"] == "2026-02-03T00:00:00Z"
    assert body["data"] == [
        {"group": "2026-02-01", "units": 1, "calls": 1, "cost_micros": 7},
        {"group": "2026-02-02", "units": 1, "calls": 1, "cost_micros": 11},
    ]
    assert body["total_cost_micros"] == 18


def test_usage_with_only_end_covers_the_month_before_it(world):
    _usage(world, cost=7, at=datetime(2026, 1, 31, 12, tzinfo=UTC))
    _usage(world, cost=9, at=datetime(2026, 2, 1, tzinfo=UTC))
    body = world.api.get("/v1/usage", {"end": "2026-02-01"}).json()
    assert body["start"] == "2026-01-01T00:00:00Z"
    assert body["total_cost_micros"] == 7


def test_usage_by_key_names_the_keys_by_public_id(world):
    second_key, _ = api_key_make(world.tenant, name="batch worker")
    _usage(world, cost=10)
    _usage(world, cost=30, key=second_key)
    data = world.api.get("/v1/usage", {"group_by": "key"}).json()["data"]
    assert data == [
        {
            "group": second_key.public_id,
            "name": "batch worker",
            "units": 1,
            "calls": 1,
            "cost_micros": 30,
        },
        {
            "group": world.key.public_id,
            "name": "test key",
            "units": 1,
            "calls": 1,
            "cost_micros": 10,
        },
    ]


def test_usage_by_key_never_names_another_tenants_key(world, other_world):
    """Even a usage row that points at a foreign key id shows no id or name of it."""
    account = ledger.account_open(tenant_id=world.tenant.pk)
    LedgerEntry.objects.create(
        account=account,
        tenant=world.tenant,
        kind=LedgerEntry.Kind.USAGE,
        source="forged",
        amount_micros=-5,
        model_slug="echo",
        api_key_id=other_world.key.pk,
        units=1,
    )
    response = world.api.get("/v1/usage", {"group_by": "key"})
    assert response.json()["data"] == [
        {"group": None, "name": None, "units": 1, "calls": 1, "cost_micros": 5}
    ]
    assert other_world.key.public_id not in response.content.decode()


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"start": "2026-13-01"}, "start"),
        ({"start": "yesterday"}, "start"),
        ({"end": "2026-02-30"}, "end"),
        ({"start": "2026-02-01", "end": "2026-02-01"}, "end"),
        ({"start": "2026-02-02", "end": "2026-02-01"}, "end"),
        ({"start": "2024-01-01", "end": "2025-01-02"}, "end"),
        ({"end": "0001-01-01"}, "end"),
        ({"group_by": "site"}, "group_by"),
    ],
)
def test_bad_usage_parameters_are_400_naming_the_field(world, params, field):
    response = world.api.get("/v1/usage", params)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["field"] == field
    assert error["code"] == "invalid_request"
    assert error["message"].startswith(f"{field}: ")


def test_a_366_day_period_is_allowed(world):
    response = world.api.get("/v1/usage", {"start": "2024-01-01", "end": "2025-01-01"})
    assert response.status_code == 200


def test_second_tenant_sees_none_of_the_first_tenants_usage_or_balance(world, other_world):
    _usage(world, cost=4_321, model="secret-model")
    first = world.api.get("/v1/usage", {"group_by": "key"}).json()
    assert first["total_cost_micros"] == 4_321
    for group_by in ("model", "day", "key"):
        body = other_world.api.get("/v1/usage", {"group_by": group_by}).json()
        assert body["data"] == []
        assert body["total_cost_micros"] == 0
    balance = other_world.api.get("/v1/balance").json()
    assert balance["balance_micros"] == 100_000_000
    assert world.api.get("/v1/balance").json()["balance_micros"] == 100_000_000 - 4_321


def test_schema_documents_balance_and_usage(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    assert "/v1/balance" in schema["paths"]
    usage = schema["paths"]["/v1/usage"]["get"]
    assert {p["name"] for p in usage["parameters"]} >= {"start", "end", "group_by"}
