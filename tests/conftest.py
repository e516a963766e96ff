import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from rest_framework.test import APIClient

from billing import ahead, ledger, statements
from billing.models import LedgerEntry
from config.redis_client import redis_client
from marketplace import catalog, keycache
from marketplace.models import ApiKey, Membership, Tenant, User
from tests.factories import MembershipFactory, api_key_make
from workers import liveness, routing

# logscan: the session fails if a secret appears in any log line (see tests/logscan.py).
pytest_plugins = ["tests.logscan", "pytester"]


@pytest.fixture(autouse=True)
def _process_caches_cleared() -> Iterator[None]:
    """Per-process caches must not carry rows from one test's database into the next."""
    catalog.cache_clear()
    routing.reset()
    keycache._entries.clear()
    ahead.clear()
    yield
    # Pooled connections would keep the test database from being dropped.
    statements.reset()


# Tests whose Celery workers and beat (real processes) write the real site-health key.
_SHARED_HEALTH_DIRS = ("integration", "browser")


@pytest.fixture(autouse=True)
def _health_key_private(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Every other test gets site-health and worker-heartbeat keys of its own.

    The integration and browser fixtures keep Celery beat running for the rest of the
    session, and its health check rewrites the shared key every 2 s (delete, then
    write what *its* database shows); a unit test that wrote health there could lose
    it between writing and reading. Their site workers beat into the shared
    heartbeat key, which would make those sites live for unit tests.
    """
    if request.node.path.parent.name in _SHARED_HEALTH_DIRS:
        yield
        return
    key = f"test-health:{uuid.uuid4().hex}"
    monkeypatch.setattr(routing, "HEALTH_KEY", key)
    monkeypatch.setattr(liveness, "KEY", f"{key}:workers")
    yield
    redis_client().delete(key, f"{key}:workers")


@dataclass
class TenantWorld:
    """A tenant with an owner, a key and an API client authenticated with it."""

    tenant: Tenant
    owner: User
    membership: Membership
    key: ApiKey
    token: str
    api: APIClient


def _world() -> TenantWorld:
    membership = MembershipFactory.create()
    ledger.entry_book(
        tenant_id=membership.tenant.pk,
        kind=LedgerEntry.Kind.GRANT,
        source="test-grant",
        amount_micros=100_000_000,
    )
    key, token = api_key_make(membership.tenant)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return TenantWorld(
        tenant=membership.tenant,
        owner=membership.user,
        membership=membership,
        key=key,
        token=token,
        api=api,
    )


@pytest.fixture
def world(db: None) -> TenantWorld:
    return _world()


@pytest.fixture
def other_world(db: None) -> TenantWorld:
    """A second, unrelated tenant: must never see anything of ``world``'s."""
    return _world()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Let every database test use the ``holds`` alias too.

    It mirrors ``default`` in tests (the same connection), but pytest-django only
    allows aliases a test names.
    """
    for item in items:
        marker = item.get_closest_marker("django_db")
        if marker is not None and "databases" not in marker.kwargs:
            item.add_marker(
                pytest.mark.django_db(*marker.args, **{**marker.kwargs, "databases": "__all__"}),
                append=False,
            )
