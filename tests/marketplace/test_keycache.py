"""The per-process key cache never outlives a revocation, in any process."""

import pytest

from config.redis_client import redis_client
from marketplace import keycache, services


@pytest.mark.django_db(transaction=True)
def test_a_revocation_in_another_process_drops_this_processs_entry(world):
    cached = keycache.key_get(world.key.public_id)
    assert cached is not None
    assert cached.revoked_at is None
    stale_entry = keycache._entries[world.key.public_id]

    services.api_key_revoke(key=world.key, actor=None)  # commits: bumps the epoch in Redis
    # Pretend the revoke happened elsewhere: this process still holds its old entry.
    keycache._entries[world.key.public_id] = stale_entry

    fresh = keycache.key_get(world.key.public_id)
    assert fresh is not None
    assert fresh.revoked_at is not None
    assert world.api.get("/v1/me").status_code == 401


@pytest.mark.django_db(transaction=True)
def test_suspension_elsewhere_is_seen_at_once(world):
    assert world.api.get("/v1/me").status_code == 200
    stale_entry = keycache._entries[world.key.public_id]
    services.tenant_suspend(tenant=world.tenant, actor=None, reason="test")
    keycache._entries[world.key.public_id] = stale_entry
    assert world.api.get("/v1/me").status_code == 403


@pytest.mark.django_db
def test_without_redis_the_cache_is_bypassed(world, settings):
    assert keycache.key_get(world.key.public_id) is not None
    stale_entry = keycache._entries[world.key.public_id]
    type(world.key).objects.filter(pk=world.key.pk).update(name="renamed in the database")
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    redis_client.cache_clear()
    try:
        keycache._entries[world.key.public_id] = stale_entry
        reloaded = keycache.key_get(world.key.public_id)
        assert reloaded is not None
        assert reloaded.name == "renamed in the database"
    finally:
        redis_client.cache_clear()
