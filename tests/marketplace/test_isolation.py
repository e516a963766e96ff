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
            elif isinstance(pattern, URLPattern) and text.startswith(("v1/", "v2/")):
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


def _me(first: TenantWorld, second: TenantWorld) -> None:
    body = second.api.get("/v1/me").json()
    assert body["tenant"]["id"] == second.tenant.pk
    assert first.tenant.name not in str(body)
    assert first.key.public_id not in str(body)


ENDPOINTS: dict[str, Check] = {
    "v1/health": _public("/v1/health"),
    "v1/health/live": _public("/v1/health/live"),
    "v1/me": _me,
}


def test_matrix_covers_every_api_endpoint():
    assert _api_routes() == set(ENDPOINTS)


@pytest.mark.parametrize("route", sorted(ENDPOINTS))
def test_second_tenant_sees_nothing_of_the_first(route, world, other_world):
    ENDPOINTS[route](world, other_world)
