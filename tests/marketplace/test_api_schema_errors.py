"""What the schema fuzz test (tests/integration/test_api_fuzz.py) found, kept fixed.

Each test here is a finding of that run, reduced to one request or one schema fact.
"""

import pytest
from django.test import Client

from marketplace.models import CatalogModel, Job, Tenant

pytestmark = pytest.mark.django_db

KEY_AUTHENTICATED_ERRORS = {"401", "403", "429", "503"}


@pytest.fixture
def schema(client: Client) -> dict:
    response = client.get("/api/schema/?format=json")
    assert response.status_code == 200
    return response.json()


def _operations(schema: dict):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def test_an_undecodable_jobs_cursor_is_a_400_naming_the_cursor(world):
    response = world.api.get("/v1/jobs", {"cursor": "!0\U00041a4e"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["field"] == "cursor"
    assert error["code"] == "invalid_request"


def _job(tenant: Tenant, model: CatalogModel, public_id: str) -> None:
    Job.objects.create(
        tenant=tenant, public_id=public_id, model=model, request_hash="x", request={"inputs": []}
    )


def test_a_valid_jobs_cursor_still_pages(world, other_world):
    model = CatalogModel.objects.create(slug="pager", name="Pager", price_micros=1)
    for index in range(3):
        _job(world.tenant, model, f"job_mine_{index}")
    _job(other_world.tenant, model, "job_other")
    first = world.api.get("/v1/jobs", {"limit": 2}).json()
    assert len(first["results"]) == 2
    second = world.api.get(first["next"])
    assert second.status_code == 200
    ids = {job["id"] for job in first["results"] + second.json()["results"]}
    assert ids == set(Job.objects.filter(tenant=world.tenant).values_list("public_id", flat=True))


def test_every_key_authenticated_operation_documents_its_shared_errors(schema):
    authenticated = [
        (path, method, operation)
        for path, method, operation in _operations(schema)
        if {"ApiKey": []} in operation.get("security", [])
    ]
    assert len(authenticated) >= 15
    for path, method, operation in authenticated:
        documented = set(operation["responses"])
        missing = KEY_AUTHENTICATED_ERRORS - documented
        assert not missing, f"{method.upper()} {path} does not document {missing}"
        if "{" in path:
            assert "404" in documented, f"{method.upper()} {path} does not document 404"
        error = operation["responses"]["401"]["content"]["application/json"]["schema"]
        assert error == {"$ref": "#/components/schemas/Error"}


def test_the_api_key_is_a_documented_bearer_scheme(schema):
    scheme = schema["components"]["securitySchemes"]["ApiKey"]
    assert scheme["type"] == "http"
    assert scheme["scheme"] == "bearer"
    embeddings = schema["paths"]["/v1/embeddings"]["post"]
    assert "Authorization" not in [p["name"] for p in embeddings.get("parameters", [])]


def test_the_models_list_is_documented_as_the_data_wrapper_it_returns(schema, world):
    documented = schema["paths"]["/v1/models"]["get"]["responses"]["200"]["content"]
    ref = documented["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert list(schema["components"]["schemas"][ref]["properties"]) == ["data"]
    assert list(world.api.get("/v1/models").json()) == ["data"]


def test_binary_inference_answers_are_documented(schema):
    responses = schema["paths"]["/v2/models/{model}/infer"]["post"]["responses"]
    assert set(responses["200"]["content"]) == {"application/json", "application/octet-stream"}
    for status in ("400", "402", "413", "415", "422"):
        assert status in responses
