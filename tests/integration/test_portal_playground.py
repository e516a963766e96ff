"""The model page's playground against real tritonserver sites: a real, paid call."""

import json

import pytest
from django.test import Client

from billing.models import LedgerEntry

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_playground_runs_echo_on_a_site_and_charges_the_tenant(registered, world):
    client = Client()
    client.force_login(world.owner)
    page = client.get("/models/echo/")
    assert page.status_code == 200
    assert {site.healthy for site in page.context["model"]["sites"]} == {True}
    body = {
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 3], "data": [1.5, -2, 3.25]}]
    }

    response = client.post("/models/echo/", {"body": json.dumps(body)})

    assert response.status_code == 200, response.context["error"]
    run = response.context["run"]
    output = json.loads(run.output)
    assert output["outputs"][0]["name"] == "OUTPUT0"
    assert output["outputs"][0]["data"] == [1.5, -2.0, 3.25]
    assert run.site in {site.slug for site in registered}
    assert run.cost == "$0.000010"  # deploy/catalog.json: echo costs 10 micro-USD a request
    html = response.content.decode()
    assert "$0.000010" in html
    assert run.site in html
    usage = LedgerEntry.objects.get(tenant=world.tenant, kind=LedgerEntry.Kind.USAGE)
    assert usage.model_slug == "echo"
    assert usage.amount_micros == -10
    assert usage.units == 1
    assert usage.api_key_id is None


def test_playground_example_body_runs_for_every_small_model(registered, world):
    """The prefilled example is a valid request for each model's real schema."""
    client = Client()
    client.force_login(world.owner)
    slugs = ("echo", "classifier", "text_upper", "counter_int64", "minilm")
    for slug in slugs:
        example = client.get(f"/models/{slug}/").context["form"]["body"].value()
        response = client.post(f"/models/{slug}/", {"body": example})
        assert response.status_code == 200, (slug, response.context["error"])
    # minilm's token count comes back as a binary output; the page decodes it.
    outputs = {o["name"]: o for o in json.loads(response.context["run"].output)["outputs"]}
    assert len(outputs["embedding"]["data"]) == 384
    assert outputs["tokens"]["data"][0] > 0
    usage = LedgerEntry.objects.filter(tenant=world.tenant, kind=LedgerEntry.Kind.USAGE)
    assert usage.count() == len(slugs)
