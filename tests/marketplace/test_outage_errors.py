"""A database, Redis or broker outage is a 503 with ``Retry-After``, never a 500.

The real outages (servers stopped during the test) are in
``tests/integration/test_outages.py``; these check the one mapping in isolation.
"""

import json

import kombu.exceptions
import pytest
import redis
from django.db import OperationalError, connection
from django.test import Client, RequestFactory

from config.urls import handler500
from marketplace.api.views import MeView
from tests.factories import MembershipFactory


def _raise(exc: Exception):
    def view(*args: object, **kwargs: object) -> None:
        raise exc

    return view


@pytest.mark.django_db
@pytest.mark.parametrize(
    "exc",
    [
        redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
        redis.TimeoutError("Timeout reading from socket"),
        kombu.exceptions.OperationalError("Error 111 connecting"),
    ],
)
def test_a_redis_or_broker_error_in_an_api_view_is_a_clean_503(world, monkeypatch, exc):
    monkeypatch.setattr(MeView, "get", _raise(exc))
    response = world.api.get("/v1/me")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    error = response.json()["error"]
    assert error["code"] == "service_unavailable"
    assert "redis" in error["message"]
    assert error["request_id"] == response.headers["X-Request-Id"]


@pytest.mark.django_db(transaction=True)
def test_a_database_error_is_a_503_and_drops_the_connection(world, monkeypatch):
    monkeypatch.setattr(MeView, "get", _raise(OperationalError("server closed the connection")))
    connection.ensure_connection()
    response = world.api.get("/v1/me")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "service_unavailable"
    assert "database" in response.json()["error"]["message"]
    # Dropped at once, so the first request after the database returns reconnects.
    assert connection.connection is None


def test_an_outage_outside_drf_is_a_json_503_on_api_paths():
    request = RequestFactory().get("/v1/me")
    try:
        raise redis.ConnectionError("Connection refused.")
    except redis.ConnectionError:
        response = handler500(request)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert json.loads(response.content)["error"]["code"] == "service_unavailable"


def test_any_other_crash_outside_drf_stays_a_500():
    request = RequestFactory().get("/v1/me")
    try:
        raise RuntimeError("bug")
    except RuntimeError:
        response = handler500(request)
    assert response.status_code == 500


@pytest.mark.django_db(transaction=True)
def test_a_portal_page_meeting_an_outage_is_a_503_page(monkeypatch):
    membership = MembershipFactory.create()
    client = Client(raise_request_exception=False)
    client.force_login(membership.user)
    monkeypatch.setattr(
        "marketplace.middleware.membership_for_portal",
        _raise(OperationalError("connection refused")),
    )
    response = client.get("/")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert b"Temporarily unavailable" in response.content
