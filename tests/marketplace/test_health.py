"""Readiness reports the database and Redis; 503 when either is down."""

import pytest
from rest_framework.test import APIClient

from config.redis_client import redis_client

pytestmark = pytest.mark.django_db


def test_health_ok_with_real_database_and_redis():
    response = APIClient().get("/v1/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}


def test_health_is_503_when_redis_is_down(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    redis_client.cache_clear()
    try:
        response = APIClient().get("/v1/health")
    finally:
        redis_client.cache_clear()
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "ok", "redis": "unavailable"}
    assert response.headers["Retry-After"] == "5"


def test_health_is_503_when_the_database_is_down(monkeypatch):
    from django.db import DatabaseError, connection

    def broken_cursor(*args, **kwargs):
        raise DatabaseError("connection refused")

    monkeypatch.setattr(connection, "cursor", broken_cursor)
    response = APIClient().get("/v1/health")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "unavailable"


def test_liveness_needs_nothing():
    response = APIClient().get("/v1/health/live")
    assert response.status_code == 200
