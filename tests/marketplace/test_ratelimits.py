"""API rate and in-flight limits, against the real Redis.

The limiter's arithmetic is tested through ``ratelimits.admit`` with short windows
and slot lifetimes; the API's behaviour (headers, 429 bodies, exemptions, tiers)
through the test client, which closes each response as a WSGI server does.
"""

import functools
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.test import Client
from rest_framework.test import APIClient

from config.redis_client import redis_client
from marketplace import keycache, ratelimits, services
from marketplace.models import AuditEvent, Tenant
from marketplace.ratelimits import LimitExceeded, Limits
from tests.factories import UserFactory, api_key_make
from tests.mfa import staff_force_login

NO_LIMITS = Limits(None, None, None, None)


@pytest.fixture(autouse=True)
def rl_prefix(settings) -> Iterator[str]:
    """Each test counts in its own Redis namespace, removed afterwards."""
    prefix = f"test-rl-{uuid.uuid4().hex[:10]}"
    settings.RATE_LIMIT_KEY_PREFIX = prefix
    yield prefix
    client = redis_client()
    names = list(client.scan_iter(match=f"{prefix}:*"))
    if names:
        client.delete(*names)


def _limits(**values: int) -> Limits:
    return Limits(
        key_per_minute=values.get("key_per_minute"),
        key_in_flight=values.get("key_in_flight"),
        tenant_per_minute=values.get("tenant_per_minute"),
        tenant_in_flight=values.get("tenant_in_flight"),
    )


def _refusal(admit: Any = ratelimits.admit, **kwargs: Any) -> LimitExceeded:
    with pytest.raises(LimitExceeded) as refused:
        admit(**kwargs)
    return refused.value


def _rate(admission: ratelimits.Admission) -> ratelimits.RateState:
    assert admission.rate is not None
    return admission.rate


# --- the limiter ------------------------------------------------------------------


def test_rate_admits_the_limit_then_refuses_with_the_wait():
    limits = _limits(key_per_minute=3)
    remaining = [
        _rate(ratelimits.admit(key_id=1, tenant_id=1, limits=limits)).remaining for _ in range(3)
    ]
    assert remaining == [2, 1, 0]
    refusal = _refusal(key_id=1, tenant_id=1, limits=limits)
    assert (refusal.kind, refusal.scope, refusal.code) == ("rate", "key", "rate_limited")
    assert 58 <= refusal.retry_after_seconds <= 60
    assert refusal.rate == ratelimits.RateState(3, 0, refusal.retry_after_seconds)


def test_rate_window_slides_one_admission_at_a_time():
    """Each admission leaves the window exactly ``window`` after it was made: no boundary burst."""
    limits = _limits(key_per_minute=2)
    admit = functools.partial(
        ratelimits.admit, key_id=1, tenant_id=1, limits=limits, window_ms=1000
    )
    started = time.monotonic()
    admit()
    time.sleep(0.5)
    second = _rate(admit())
    assert second.remaining == 0
    # The first admission leaves the window first: its reset, not the second's.
    assert second.reset_seconds == 1
    _refusal(admit)

    time.sleep(max(0.0, 1.15 - (time.monotonic() - started)))
    third = _rate(admit())  # the first left the window; the second has not
    assert third.remaining == 0
    refusal = _refusal(admit)
    assert refusal.retry_after_seconds == 1  # the second leaves ~0.35 s from now


def test_tenant_rate_counts_every_key_of_the_tenant():
    limits = _limits(key_per_minute=10, tenant_per_minute=3)
    ratelimits.admit(key_id=1, tenant_id=7, limits=limits)
    ratelimits.admit(key_id=1, tenant_id=7, limits=limits)
    admitted = _rate(ratelimits.admit(key_id=2, tenant_id=7, limits=limits))
    # The header reports the limit nearest exhaustion: the tenant's.
    assert admitted == ratelimits.RateState(3, 0, admitted.reset_seconds)
    refusal = _refusal(key_id=2, tenant_id=7, limits=limits)
    assert (refusal.kind, refusal.scope) == ("rate", "tenant")
    ratelimits.admit(key_id=3, tenant_id=8, limits=limits)  # another tenant is unaffected


def test_in_flight_refuses_until_a_slot_is_released(rl_prefix):
    limits = _limits(key_in_flight=2, key_per_minute=100)
    first = ratelimits.admit(key_id=1, tenant_id=1, limits=limits)
    ratelimits.admit(key_id=1, tenant_id=1, limits=limits)
    refusal = _refusal(key_id=1, tenant_id=1, limits=limits)
    assert (refusal.kind, refusal.scope, refusal.code) == (
        "in_flight",
        "key",
        "concurrency_limited",
    )
    assert refusal.retry_after_seconds == 1
    # A refused request consumed nothing: two admissions in the rate log, 98 left.
    assert redis_client().zcard(f"{rl_prefix}:key:1:rate") == 2
    assert refusal.rate is not None
    assert refusal.rate == ratelimits.RateState(100, 98, refusal.rate.reset_seconds)

    ratelimits.release(first)
    # The release rides on the next admission's script call, which it makes room for.
    ratelimits.admit(key_id=1, tenant_id=1, limits=limits)
    assert redis_client().zcard(f"{rl_prefix}:key:1:slots") == 2
    _refusal(key_id=1, tenant_id=1, limits=limits)


def test_a_release_with_no_request_after_it_is_sent_by_the_flusher(rl_prefix):
    limits = _limits(key_in_flight=1, tenant_in_flight=1)
    held = ratelimits.admit(key_id=5, tenant_id=5, limits=limits)
    ratelimits.release(held)
    slots = (f"{rl_prefix}:key:5:slots", f"{rl_prefix}:tenant:5:slots")
    deadline = time.monotonic() + 2
    while any(redis_client().zcard(name) for name in slots) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [redis_client().zcard(name) for name in slots] == [0, 0]


def test_a_failed_admission_loses_no_queued_release(rl_prefix, monkeypatch):
    """An admission that takes the queued releases and then meets a Redis error must
    queue them again, or their slots would stay taken until they expire."""
    limits = _limits(key_in_flight=1)
    held = ratelimits.admit(key_id=6, tenant_id=6, limits=limits)
    ratelimits.release(held)

    def broken() -> object:
        raise redis.ConnectionError("down")

    with monkeypatch.context() as patched:
        patched.setattr(ratelimits, "_acquire_script", broken)
        with pytest.raises(redis.ConnectionError):
            ratelimits.admit(key_id=7, tenant_id=7, limits=limits)
    deadline = time.monotonic() + 2
    while redis_client().zcard(f"{rl_prefix}:key:6:slots") and time.monotonic() < deadline:
        time.sleep(0.01)
    ratelimits.admit(key_id=6, tenant_id=6, limits=limits)


def test_tenant_in_flight_counts_every_key_of_the_tenant():
    limits = _limits(key_in_flight=5, tenant_in_flight=2)
    ratelimits.admit(key_id=1, tenant_id=3, limits=limits)
    ratelimits.admit(key_id=2, tenant_id=3, limits=limits)
    refusal = _refusal(key_id=4, tenant_id=3, limits=limits)
    assert (refusal.kind, refusal.scope) == ("in_flight", "tenant")


def test_a_leaked_slot_expires_by_itself():
    """A process that dies mid-request never releases; its slot must free itself."""
    limits = _limits(key_in_flight=1)
    ratelimits.admit(key_id=1, tenant_id=1, limits=limits, slot_ttl_ms=300)  # never released
    _refusal(key_id=1, tenant_id=1, limits=limits, slot_ttl_ms=300)
    time.sleep(0.4)
    ratelimits.admit(key_id=1, tenant_id=1, limits=limits, slot_ttl_ms=300)


def test_a_zero_limit_refuses_everything():
    refusal = _refusal(key_id=1, tenant_id=1, limits=_limits(key_per_minute=0))
    assert refusal.limit == 0
    assert "disabled" in refusal.message


def test_no_limits_costs_no_redis_call(monkeypatch):
    monkeypatch.setattr(ratelimits, "_acquire_script", None)  # would fail if called
    assert ratelimits.admit(key_id=1, tenant_id=1, limits=NO_LIMITS).rate is None


def test_no_limits_writes_nothing(rl_prefix):
    admission = ratelimits.admit(key_id=1, tenant_id=1, limits=NO_LIMITS)
    assert admission.rate is None
    assert admission.slot_keys == ()
    assert list(redis_client().scan_iter(match=f"{rl_prefix}:*")) == []


def test_redis_errors_propagate(monkeypatch):
    """The API maps Redis outages to 503 in one place; the limiter must not hide them."""
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    monkeypatch.setattr(
        ratelimits, "_acquire_script", lambda: dead.register_script(ratelimits._ACQUIRE_LUA)
    )
    with pytest.raises(redis.ConnectionError):
        ratelimits.admit(key_id=1, tenant_id=1, limits=_limits(key_per_minute=1))


def test_limits_come_from_the_tier_with_the_tenant_overrides(settings):
    settings.RATE_LIMIT_TIERS = {
        "free": {"key_per_minute": 5, "key_in_flight": 1, "tenant_per_minute": 9},
        "standard": {
            "key_per_minute": 50,
            "key_in_flight": 4,
            "tenant_per_minute": 90,
            "tenant_in_flight": 8,
        },
    }
    free = Tenant(tier="free", limit_key_in_flight=3)
    assert ratelimits.limits_for(free) == Limits(5, 3, 9, None)
    # A tier missing from the settings falls back to the standard tier's limits.
    assert ratelimits.limits_for(Tenant(tier="enterprise")) == Limits(50, 4, 90, 8)
    # A tier configured with no values has no limits (it does not fall back).
    settings.RATE_LIMIT_TIERS = {**settings.RATE_LIMIT_TIERS, "enterprise": {}}
    assert ratelimits.limits_for(Tenant(tier="enterprise")) == NO_LIMITS


# --- the API ----------------------------------------------------------------------


def _set_limits(tenant: Tenant, **limits: object) -> None:
    services.tenant_limits_set(tenant=tenant, actor=None, limits=limits)


@pytest.mark.django_db
def test_successful_responses_carry_the_rate_headers(world):
    _set_limits(world.tenant, limit_key_per_minute=5, limit_tenant_per_minute=50)
    first = world.api.get("/v1/me")
    second = world.api.get("/v1/balance")
    assert first.status_code == second.status_code == 200
    assert first.headers["RateLimit-Limit"] == "5"
    assert (first.headers["RateLimit-Remaining"], second.headers["RateLimit-Remaining"]) == (
        "4",
        "3",
    )
    assert 59 <= int(first.headers["RateLimit-Reset"]) <= 60
    assert "Retry-After" not in first.headers


@pytest.mark.django_db
def test_over_the_key_rate_is_429_in_the_error_format(world):
    _set_limits(world.tenant, limit_key_per_minute=2)
    assert [world.api.get("/v1/me").status_code for _ in range(2)] == [200, 200]
    response = world.api.get("/v1/me")
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["code"] == "rate_limited"
    assert error["limit"] == "key"
    assert "2 requests per minute" in error["message"]
    assert error["request_id"] == response.headers["X-Request-Id"]
    assert 58 <= int(response.headers["Retry-After"]) <= 60
    assert response.headers["RateLimit-Limit"] == "2"
    assert response.headers["RateLimit-Remaining"] == "0"
    assert response.headers["RateLimit-Reset"] == response.headers["Retry-After"]


@pytest.mark.django_db
def test_the_tenant_rate_is_shared_by_its_keys_and_not_by_other_tenants(world, other_world):
    _set_limits(world.tenant, limit_tenant_per_minute=2)
    _set_limits(other_world.tenant, limit_tenant_per_minute=2)
    _, token = api_key_make(world.tenant)
    second_key = APIClient()
    second_key.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert world.api.get("/v1/me").status_code == 200
    assert second_key.get("/v1/me").status_code == 200
    response = second_key.get("/v1/me")
    assert response.status_code == 429
    assert response.json()["error"]["limit"] == "tenant"
    assert other_world.api.get("/v1/me").status_code == 200


@pytest.mark.django_db
def test_over_the_in_flight_limit_is_429_concurrency_limited(world):
    _set_limits(world.tenant, limit_key_in_flight=1)
    held = ratelimits.admit(
        key_id=world.key.pk, tenant_id=world.tenant.pk, limits=ratelimits.limits_for(world.tenant)
    )
    response = world.api.get("/v1/me")
    assert response.status_code == 429
    error = response.json()["error"]
    assert (error["code"], error["limit"]) == ("concurrency_limited", "key")
    assert response.headers["Retry-After"] == "1"
    ratelimits.release(held)
    assert world.api.get("/v1/me").status_code == 200


@pytest.mark.django_db
def test_in_flight_slots_are_released_after_each_response(world, rl_prefix):
    _set_limits(world.tenant, limit_key_in_flight=1, limit_tenant_in_flight=1)
    statuses = [world.api.get("/v1/me").status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    ratelimits.releases_flush()
    assert redis_client().zcard(f"{rl_prefix}:key:{world.key.pk}:slots") == 0
    assert redis_client().zcard(f"{rl_prefix}:tenant:{world.tenant.pk}:slots") == 0


@pytest.mark.django_db
def test_an_error_response_releases_its_slot_too(world):
    _set_limits(world.tenant, limit_key_in_flight=1)
    assert world.api.get("/v1/models/no-such-model").status_code == 404
    assert world.api.get("/v1/me").status_code == 200


@pytest.mark.django_db
def test_health_and_schema_are_never_limited(world):
    _set_limits(world.tenant, limit_key_per_minute=0)
    assert world.api.get("/v1/me").status_code == 429
    for path in ("/v1/health/live", "/v1/health", "/v2/health/live", "/api/schema/"):
        response = world.api.get(path)
        assert response.status_code == 200, path
        assert "RateLimit-Limit" not in response.headers


@pytest.mark.django_db
def test_a_tier_change_is_audited_and_applies_at_once(world, settings):
    settings.RATE_LIMIT_TIERS = {
        **settings.RATE_LIMIT_TIERS,
        "free": {"key_per_minute": 7},
        "enterprise": {"key_per_minute": 70},
    }
    _set_limits(world.tenant, tier="free")
    assert world.api.get("/v1/me").headers["RateLimit-Limit"] == "7"
    staff = UserFactory.create(is_staff=True)
    services.tenant_limits_set(tenant=world.tenant, actor=staff, limits={"tier": "enterprise"})
    assert world.api.get("/v1/me").headers["RateLimit-Limit"] == "70"
    event = AuditEvent.objects.filter(tenant=world.tenant, action="tenant.limits_changed").first()
    assert event is not None
    assert event.actor == staff
    assert event.metadata == {"before": {"tier": "free"}, "after": {"tier": "enterprise"}}


@pytest.mark.django_db
def test_an_unchanged_tier_writes_no_audit_event(world):
    services.tenant_limits_set(tenant=world.tenant, actor=None, limits={"tier": "standard"})
    assert not AuditEvent.objects.filter(action="tenant.limits_changed").exists()


@pytest.mark.django_db
def test_staff_change_the_tier_in_the_admin_through_the_audited_service(world):
    staff = staff_force_login(Client(), UserFactory.create(is_staff=True, is_superuser=True))
    url = f"/admin/marketplace/tenant/{world.tenant.pk}/change/"
    tenant = world.tenant
    form = {
        "name": "Renamed",
        "slug": tenant.slug,
        "region_pin": "",
        "webhook_secret": tenant.webhook_secret,
        "tier": "enterprise",
        "limit_key_per_minute": "",
        "limit_key_in_flight": "9",
        "limit_tenant_per_minute": "",
        "limit_tenant_in_flight": "",
        "memberships-TOTAL_FORMS": "1",
        "memberships-INITIAL_FORMS": "1",
        "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "1000",
        "memberships-0-id": str(world.membership.pk),
        "memberships-0-tenant": str(tenant.pk),
    }
    response = staff.post(url, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    tenant.refresh_from_db()
    assert (tenant.name, tenant.tier, tenant.limit_key_in_flight) == ("Renamed", "enterprise", 9)
    event = AuditEvent.objects.get(tenant=tenant, action="tenant.limits_changed")
    assert event.metadata["after"] == {"tier": "enterprise", "limit_key_in_flight": 9}


@pytest.mark.django_db
def test_the_schema_documents_429_and_the_headers(world):
    schema = Client().get("/api/schema/", HTTP_ACCEPT="application/json").json()
    me = schema["paths"]["/v1/me"]["get"]["responses"]
    assert set(me["429"]["headers"]) == {
        "Retry-After",
        "RateLimit-Limit",
        "RateLimit-Remaining",
        "RateLimit-Reset",
    }
    assert "RateLimit-Remaining" in me["200"]["headers"]
    assert "429" not in schema["paths"]["/v1/health/live"]["get"]["responses"]


@pytest.mark.django_db
def test_a_cached_key_is_confirmed_and_admitted_in_one_round_trip(world, monkeypatch):
    _set_limits(world.tenant, limit_key_per_minute=5)
    assert world.api.get("/v1/me").status_code == 200  # caches the key

    def no_separate_epoch_read() -> bytes | None:
        raise AssertionError("the epoch must come with the admission")

    monkeypatch.setattr(keycache, "_epoch_read", no_separate_epoch_read)
    response = world.api.get("/v1/me")
    assert response.status_code == 200
    assert response.headers["RateLimit-Remaining"] == "3"  # admitted once, not twice


@pytest.mark.django_db
def test_a_wrong_secret_for_a_cached_key_is_401_and_counts_nothing(world, rl_prefix):
    _set_limits(world.tenant, limit_key_per_minute=5)
    assert world.api.get("/v1/me").status_code == 200  # caches the key
    forged = APIClient()
    forged.credentials(HTTP_AUTHORIZATION=f"Bearer cango_sk_{world.key.public_id}_{'x' * 43}")
    assert forged.get("/v1/me").status_code == 401
    assert redis_client().zcard(f"{rl_prefix}:key:{world.key.pk}:rate") == 1


@pytest.mark.django_db(transaction=True)
def test_a_revocation_elsewhere_is_seen_by_the_shared_round_trip(world, rl_prefix):
    _set_limits(world.tenant, limit_key_in_flight=3)
    assert world.api.get("/v1/me").status_code == 200  # caches the key
    stale = keycache._entries[world.key.public_id]
    services.api_key_revoke(key=world.key, actor=None)  # commits: bumps the epoch
    keycache._entries[world.key.public_id] = stale  # as if revoked in another process
    assert world.api.get("/v1/me").status_code == 401
    ratelimits.releases_flush()
    assert redis_client().zcard(f"{rl_prefix}:key:{world.key.pk}:slots") == 0
