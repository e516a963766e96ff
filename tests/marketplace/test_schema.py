"""The OpenAPI schema and its docs page, served without internet access."""

import re

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def test_schema_describes_the_public_api(client: Client):
    response = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    schema = response.json()
    assert "/v1/me" in schema["paths"]
    assert "/v1/health" in schema["paths"]


def test_docs_page_loads_only_local_assets(client: Client):
    response = client.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    external = [url for url in re.findall(r'(?:src|href)="([^"]+)"', html) if "//" in url]
    assert external == []
    assert "swagger-ui" in html
