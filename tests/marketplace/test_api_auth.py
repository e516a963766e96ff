"""API-key authentication: every way a key can be wrong gets a clean 401 or 403."""

import time
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from marketplace import keycache, services
from tests.factories import api_key_make

pytestmark = pytest.mark.django_db


def _get_me(authorization: str | None) -> tuple[int, dict]:
    client = APIClient()
    if authorization is not None:
        client.credentials(HTTP_AUTHORIZATION=authorization)
    response = client.get("/v1/me")
    return response.status_code, response.json()


def test_valid_key_returns_its_tenant_and_scopes(world):
    response = world.api.get("/v1/me")
    assert response.status_code == 200
    body = response.json()
    assert body["tenant"]["id"] == world.tenant.pk
    assert body["tenant"]["name"] == world.tenant.name
    assert body["key"]["name"] == "test key"
    assert body["key"]["id"] == world.key.public_id
    assert body["scopes"] == ["models:*"]
    assert "secret_hash" not in response.content.decode()
    assert world.token not in response.content.decode()


def test_model_limited_key_reports_its_scopes(world):
    _, token = api_key_make(world.tenant, allowed_models=["echo", "minilm"])
    status, body = _get_me(f"Bearer {token}")
    assert status == 200
    assert body["scopes"] == ["models:echo", "models:minilm"]


def test_missing_key_is_401_with_error_body():
    status, body = _get_me(None)
    assert status == 401
    assert body["error"]["code"] == "missing_api_key"
    assert body["error"]["request_id"].startswith("req_")


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Token cango_sk_aaaaaaaaaaaa_" + "a" * 43,
        "Bearer not-a-key",
        "Bearer cango_sk_short_x",
        "Bearer " + "x" * 5000,
        "Bearer cango_sk_aaaaaaaaaaaa_" + "a" * 43 + " extra",
        "Bearer <script>alert(1)</script>",
        "Bearer cango_sk_ÄÄÄÄÄÄÄÄÄÄÄÄ_" + "a" * 43,
        "bearer\tcango_sk_aaaaaaaaaaaa_" + "a" * 43,
    ],
)
def test_malformed_authorization_headers_get_401(world, header):
    status, body = _get_me(header)
    assert status == 401
    assert body["error"]["code"] == "invalid_api_key"
    assert "<script>" not in body["error"]["message"]


def test_unknown_key_is_401(world):
    status, body = _get_me("Bearer cango_sk_aaaaaaaaaaaa_" + "a" * 43)
    assert status == 401
    assert body["error"]["message"] == "Unknown API key."


def test_right_public_id_with_wrong_secret_is_401(world):
    forged = world.token[:-4] + ("AAAA" if not world.token.endswith("AAAA") else "BBBB")
    status, body = _get_me(f"Bearer {forged}")
    assert status == 401
    assert body["error"]["message"] == "Unknown API key."


def test_revoked_key_is_401_immediately(world):
    assert world.api.get("/v1/me").status_code == 200
    services.api_key_revoke(key=world.key, actor=world.owner)
    response = world.api.get("/v1/me")
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "This API key has been revoked."


def test_expired_key_is_401(world):
    _, token = api_key_make(world.tenant, expires_at=timezone.now() + timedelta(seconds=1))
    assert _get_me(f"Bearer {token}")[0] == 200  # now cached in this process
    time.sleep(1.1)
    status, body = _get_me(f"Bearer {token}")
    assert status == 401
    assert body["error"]["message"] == "This API key has expired."


def test_suspended_tenant_key_is_403_and_reactivation_restores_it(world):
    services.tenant_suspend(tenant=world.tenant, actor=None, reason="unpaid invoice")
    response = world.api.get("/v1/me")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "tenant_suspended"
    services.tenant_reactivate(tenant=world.tenant, actor=None, reason="paid")
    assert world.api.get("/v1/me").status_code == 200


def test_last_used_time_is_recorded(world, settings):
    settings.API_KEY_LAST_USED_RESOLUTION_SECONDS = 0
    assert world.key.last_used_at is None
    world.api.get("/v1/me")
    world.key.refresh_from_db()
    assert world.key.last_used_at is not None


def test_key_lookup_is_one_query_then_cached(world, django_assert_num_queries, settings):
    settings.API_KEY_LAST_USED_RESOLUTION_SECONDS = 3600
    keycache._entries.clear()
    world.api.get("/v1/health/live")
    with django_assert_num_queries(2):  # the key with its tenant, and last-used
        assert world.api.get("/v1/me").status_code == 200
    with django_assert_num_queries(0):
        assert world.api.get("/v1/me").status_code == 200


def test_unauthenticated_error_has_www_authenticate(world):
    response = APIClient().get("/v1/me")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
