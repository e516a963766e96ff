"""Tenant isolation matrix: every API endpoint, called by a second tenant, sees nothing.

``ENDPOINTS`` must name every route under /v1/ and /v2/. A new endpoint without an
entry fails ``test_matrix_covers_every_api_endpoint``, so it cannot ship unchecked.
Each entry is a function that, given the first tenant's world (whose data exists)
and the second tenant's API client, makes the call and asserts that nothing of the
first tenant's leaks.
"""

from collections.abc import Callable

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from billing import ledger
from marketplace.models import CatalogModel, Job
from tests.conftest import TenantWorld

pytestmark = pytest.mark.django_db

Check = Callable[[TenantWorld, TenantWorld], None]


def _api_routes() -> set[str]:
    routes: set[str] = set()

    def walk(patterns: list, prefix: str) -> None:
        for pattern in patterns:
            text = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, text)
            elif isinstance(pattern, URLPattern) and (
                text.startswith(("v1/", "v2/")) or text == "v2"
            ):
                routes.add(text)

    walk(get_resolver().url_patterns, "")
    return routes


def _public(path: str) -> Check:
    """Endpoints without tenant data: the answer must not mention the first tenant."""

    def check(first: TenantWorld, second: TenantWorld) -> None:
        body = second.api.get(path).content.decode()
        assert first.tenant.name not in body
        assert first.key.public_id not in body

    return check


def _private_model(first: TenantWorld) -> CatalogModel:
    """A model listed for the first tenant only, with a job of the first tenant's on it."""
    model = CatalogModel.objects.create(
        slug="private-model",
        name="Private",
        price_micros=1,
        visibility=CatalogModel.Visibility.LISTED_TENANTS,
        inputs=[{"name": "INPUT0", "datatype": "FP32", "shape": [-1, -1]}],
        outputs=[{"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, -1]}],
        max_batch_size=8,
    )
    model.listed_tenants.add(first.tenant)
    Job.objects.create(
        tenant=first.tenant,
        public_id="job_first_tenant",
        model=model,
        request_hash="x",
        request={"inputs": []},
    )
    return model


def _hidden(method: str, path: str, body: object = None) -> Check:
    """The second tenant gets 404 and nothing of the first tenant's in the answer."""

    def check(first: TenantWorld, second: TenantWorld) -> None:
        _private_model(first)
        if method == "GET":
            response = second.api.get(path)
        else:
            response = second.api.post(path, body, format="json")
        assert response.status_code == 404, (path, response.content)
        text = response.content.decode()
        assert "Private" not in text
        assert "job_first_tenant" not in text.replace(path, "")
        assert Job.objects.get(public_id="job_first_tenant").status == Job.Status.QUEUED
        # Positive control: the first tenant does reach the object.
        own = first.api.get(path) if method == "GET" else first.api.post(path, body, format="json")
        assert own.status_code != 404, (path, own.content)

    return check


def _listing(path: str, key: str) -> Check:
    """The second tenant's list holds none of the first tenant's rows."""

    def check(first: TenantWorld, second: TenantWorld) -> None:
        _private_model(first)
        assert first.api.get(path).status_code == 200
        response = second.api.get(path)
        assert response.status_code == 200
        assert "private-model" not in str(response.json()[key])
        assert "job_first_tenant" not in response.content.decode()

    return check


INFER_BODY = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 1], "data": [1]}]}


def _me(first: TenantWorld, second: TenantWorld) -> None:
    body = second.api.get("/v1/me").json()
    assert body["tenant"]["id"] == second.tenant.pk
    assert first.tenant.name not in str(body)
    assert first.key.public_id not in str(body)


def _first_tenant_spends(first: TenantWorld) -> None:
    """Usage of the first tenant's, charged through the real reserve/settle path."""
    for index, cost in enumerate((1_234_567, 7_654_321)):
        hold = ledger.credit_reserve(
            tenant_id=first.tenant.pk,
            amount_micros=cost,
            source=f"req_isolation_{index}",
            ttl_seconds=60,
            api_key_id=first.key.pk,
        )
        ledger.credit_settle(
            hold=hold,
            cost_micros=cost,
            units=3,
            model_slug="private-model",
            source=f"req_isolation_{index}",
        )
    ledger.credit_reserve(
        tenant_id=first.tenant.pk, amount_micros=500_000, source="req_open", ttl_seconds=60
    )


def _balance(first: TenantWorld, second: TenantWorld) -> None:
    _first_tenant_spends(first)
    own = first.api.get("/v1/balance").json()
    assert own["balance_micros"] == 100_000_000 - 8_888_888
    assert own["reserved_micros"] == 500_000
    assert second.api.get("/v1/balance").json() == {
        "balance_micros": 100_000_000,
        "reserved_micros": 0,
        "available_micros": 100_000_000,
        "currency": "usd",
    }


def _usage(first: TenantWorld, second: TenantWorld) -> None:
    _first_tenant_spends(first)
    for group_by in ("model", "day", "key"):
        own = first.api.get("/v1/usage", {"group_by": group_by}).json()
        assert own["total_cost_micros"] == 8_888_888
        response = second.api.get("/v1/usage", {"group_by": group_by})
        assert response.status_code == 200
        body = response.json()
        assert body["data"] == []
        assert body["total_cost_micros"] == 0
        assert "private-model" not in response.content.decode()
        assert first.key.public_id not in response.content.decode()


ENDPOINTS: dict[str, Check] = {
    "v1/health": _public("/v1/health"),
    "v1/health/live": _public("/v1/health/live"),
    "v1/me": _me,
    "v1/balance": _balance,
    "v1/usage": _usage,
    "v1/models": _listing("/v1/models", "data"),
    "v1/models/<slug:model>": _hidden("GET", "/v1/models/private-model"),
    "v1/embeddings": _hidden("POST", "/v1/embeddings", {"model": "private-model", "input": "x"}),
    "v1/jobs": _listing("/v1/jobs", "results"),
    "v1/jobs/<str:job_id>": _hidden("GET", "/v1/jobs/job_first_tenant"),
    "v1/jobs/<str:job_id>/cancel": _hidden("POST", "/v1/jobs/job_first_tenant/cancel"),
    "v2": _public("/v2"),
    "v2/health/live": _public("/v2/health/live"),
    "v2/health/ready": _public("/v2/health/ready"),
    "v2/models/<slug:model>": _hidden("GET", "/v2/models/private-model"),
    "v2/models/<slug:model>/versions/<str:version>": _hidden(
        "GET", "/v2/models/private-model/versions/1"
    ),
    "v2/models/<slug:model>/ready": _hidden("GET", "/v2/models/private-model/ready"),
    "v2/models/<slug:model>/versions/<str:version>/ready": _hidden(
        "GET", "/v2/models/private-model/versions/1/ready"
    ),
    "v2/models/<slug:model>/infer": _hidden("POST", "/v2/models/private-model/infer", INFER_BODY),
    "v2/models/<slug:model>/versions/<str:version>/infer": _hidden(
        "POST", "/v2/models/private-model/versions/1/infer", INFER_BODY
    ),
}


def test_matrix_covers_every_api_endpoint():
    assert _api_routes() == set(ENDPOINTS)


@pytest.mark.parametrize("route", sorted(ENDPOINTS))
def test_second_tenant_sees_nothing_of_the_first(route, world, other_world):
    ENDPOINTS[route](world, other_world)
