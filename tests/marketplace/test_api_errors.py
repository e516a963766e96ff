"""The API's error format and request ids, for every kind of failure."""

import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


def test_every_response_carries_a_request_id(world):
    for response in (
        world.api.get("/v1/me"),
        APIClient().get("/v1/me"),
        APIClient().get("/v1/health/live"),
        APIClient().get("/v1/nope"),
        APIClient().get("/accounts/login/"),
    ):
        assert response.headers["X-Request-Id"]


def test_a_well_formed_incoming_request_id_is_echoed(world):
    response = world.api.get("/v1/me", HTTP_X_REQUEST_ID="client-abc.123")
    assert response.headers["X-Request-Id"] == "client-abc.123"


def test_a_malformed_incoming_request_id_is_replaced(world):
    response = world.api.get("/v1/me", HTTP_X_REQUEST_ID="<bad id>" * 20)
    assert response.headers["X-Request-Id"].startswith("req_")


def test_unknown_api_path_is_json_404(world):
    response = world.api.get("/v1/does-not-exist")
    assert response.status_code == 404
    body = response.json()
    assert body["error"]["code"] == "not_found"
    assert body["error"]["request_id"] == response.headers["X-Request-Id"]


def test_wrong_method_is_405_in_error_format(world):
    response = world.api.post("/v1/me", {}, format="json")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_non_json_body_is_a_clean_4xx(world):
    response = world.api.generic("POST", "/v1/me", "{not json", content_type="application/json")
    assert 400 <= response.status_code < 500
    assert "error" in response.json()


def test_error_request_id_matches_header():
    response = APIClient().get("/v1/me")
    assert response.json()["error"]["request_id"] == response.headers["X-Request-Id"]


def test_unknown_portal_path_is_html_404(client):
    response = client.get("/no/such/page/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")
