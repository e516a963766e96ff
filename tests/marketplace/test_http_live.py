"""Over real HTTP: the key a portal user creates works against a running server."""

import json
import re
import urllib.error
import urllib.request

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _get(url: str, token: str | None = None) -> tuple[int, dict, dict]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def test_portal_created_key_authenticates_over_http(live_server, world, client):
    client.force_login(world.owner)
    html = client.post("/keys/", {"name": "curl"}).content.decode()
    match = re.search(r"cango_sk_[a-z2-7]{12}_[A-Za-z0-9_-]{43}", html)
    assert match is not None
    status, headers, body = _get(f"{live_server.url}/v1/me", match.group(0))
    assert status == 200
    assert body["tenant"]["name"] == world.tenant.name
    assert headers["X-Request-Id"]

    status, _, body = _get(f"{live_server.url}/v1/me", "cango_sk_aaaaaaaaaaaa_" + "b" * 43)
    assert status == 401
    assert body["error"]["code"] == "invalid_api_key"
