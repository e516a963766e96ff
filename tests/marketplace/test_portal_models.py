"""The portal's Models pages and playground: cards, schema, code samples, real paid runs."""

import json
import re
import time
from html import unescape

import numpy as np
import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from billing.exceptions import InsufficientCredits
from billing.models import CreditAccount, LedgerEntry
from config.redis_client import redis_client
from marketplace import catalog, inference
from marketplace.exceptions import ModelNotAllowed
from marketplace.models import CatalogModel, Role
from marketplace.pricing import Usage
from tests.factories import MembershipFactory
from workers import kserve, routing
from workers.dispatch import NoHealthySite, SitesUnavailable
from workers.kserve import KServeError
from workers.models import Deployment, Site, TritonServer
from workers.triton import TritonRejected

pytestmark = pytest.mark.django_db


def _client(world, role: str = Role.OWNER) -> Client:
    membership = (
        world.membership
        if role == Role.OWNER
        else MembershipFactory.create(tenant=world.tenant, role=role)
    )
    client = Client()
    client.force_login(membership.user)
    return client


def _model(slug: str, **kwargs: object) -> CatalogModel:
    defaults: dict[str, object] = {
        "name": slug.title(),
        "price_micros": 10,
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 3]}],
        "outputs": [{"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, 3]}],
        "max_batch_size": 8,
    }
    return CatalogModel.objects.create(slug=slug, **{**defaults, **kwargs})


@pytest.fixture
def echo(db: None) -> CatalogModel:
    return _model("echo", name="Echo", description="Returns its FP32 input.")


@pytest.fixture
def minilm(db: None) -> CatalogModel:
    return _model(
        "minilm",
        name="all-MiniLM-L6-v2",
        task=CatalogModel.Task.EMBEDDING,
        pricing_unit=CatalogModel.PricingUnit.THOUSAND_TOKENS,
        price_micros=20_000,
        inputs=[{"name": "text", "datatype": "BYTES", "shape": [-1, 1]}],
        outputs=[
            {"name": "embedding", "datatype": "FP32", "shape": [-1, 384]},
            {"name": "tokens", "datatype": "INT64", "shape": [-1, 1]},
        ],
        usage_output="tokens",
        max_units_per_item=256,
    )


@pytest.fixture
def health():
    """The Redis health snapshot, emptied before and after the test."""
    client = redis_client()
    client.delete(routing.HEALTH_KEY)
    yield client
    client.delete(routing.HEALTH_KEY)


def _health_write(client, server: TritonServer, *, ready: list[str], healthy: bool = True) -> None:
    state = {
        "healthy": healthy,
        "ready_models": ready,
        "queue_depth": {},
        "latency_ms": 1.0,
        "checked_at": time.time(),
    }
    client.hset(routing.HEALTH_KEY, str(server.pk), json.dumps(state))


def _site(slug: str, *, status: str = Site.Status.ACTIVE) -> TritonServer:
    site = Site.objects.create(slug=slug, name=f"Site {slug}", region="us-tx", status=status)
    return TritonServer.objects.create(site=site, name="t1", http_url=f"http://{slug}.test:8000")


def _deploy(model: CatalogModel, server: TritonServer) -> Deployment:
    return Deployment.objects.create(model=model, server=server, triton_model_name=model.slug)


def test_models_page_lists_visible_models_with_price_and_site_health(
    world, other_world, echo, minilm, health
):
    private = _model("theirs", name="Their private model")
    private.visibility = CatalogModel.Visibility.LISTED_TENANTS
    private.save()
    private.listed_tenants.add(other_world.tenant)
    inactive = _model("retired", name="Retired model", is_active=False)
    up, down, draining = _site("alpha"), _site("bravo"), _site("charlie", status="draining")
    for server in (up, down, draining):
        _deploy(echo, server)
    _deploy(inactive, up)
    _health_write(health, up, ready=["echo"])
    _health_write(health, down, ready=[], healthy=False)

    response = _client(world).get("/models/")

    assert response.status_code == 200
    html = unescape(response.content.decode())
    assert "Echo" in html
    assert "all-MiniLM-L6-v2" in html
    assert "$0.00001 per request" in html
    assert "$0.02 per 1K tokens" in html
    assert "Their private model" not in html
    assert "Retired model" not in html
    cards = {card["slug"]: card for card in response.context["models"]}
    sites = {site.slug: site for site in cards["echo"]["sites"]}
    assert sites["alpha"].healthy
    assert not sites["bravo"].healthy
    assert sites["charlie"].status_label.startswith("Draining")
    assert cards["minilm"]["sites"] == []
    assert "Not deployed at any site right now." in html
    # The other tenant sees its listed model.
    assert "Their private model" in _client(other_world).get("/models/").content.decode()


def test_stale_health_counts_as_unavailable(world, echo, health):
    server = _site("alpha")
    _deploy(echo, server)
    _health_write(health, server, ready=["echo"])
    state = json.loads(health.hget(routing.HEALTH_KEY, str(server.pk)))
    state["checked_at"] -= routing.HEALTH_STALE_SECONDS + 1
    health.hset(routing.HEALTH_KEY, str(server.pk), json.dumps(state))

    card = _client(world).get("/models/").context["models"][0]

    assert [site.healthy for site in card["sites"]] == [False]


@pytest.mark.parametrize("path", ["/models/", "/models/echo/", "/jobs/", "/jobs/job_x/"])
def test_billing_role_may_not_use_models_or_jobs(world, echo, path):
    assert _client(world, Role.BILLING).get(path).status_code == 403
    assert _client(world, Role.BILLING).post("/models/echo/", {"body": "{}"}).status_code == 403


def test_developer_may_use_models(world, echo):
    client = _client(world, Role.DEVELOPER)
    assert client.get("/models/").status_code == 200
    assert client.get("/models/echo/").status_code == 200


def test_models_page_queries_do_not_grow_with_models_and_sites(world, health):
    client = _client(world)
    servers = [_site(f"s{i}") for i in range(3)]
    for i in range(2):
        _deploy(_model(f"m{i}"), servers[0])
    client.get("/models/")
    with CaptureQueriesContext(connection) as small:
        client.get("/models/")
    for i in range(2, 14):
        model = _model(f"m{i}")
        for server in servers:
            _deploy(model, server)
    with CaptureQueriesContext(connection) as large:
        response = client.get("/models/")
    assert len(response.context["models"]) == 14
    assert len(small) == len(large) <= 6


def test_model_page_shows_schema_and_samples_with_a_valid_example(world, echo):
    response = _client(world).get("/models/echo/")

    assert response.status_code == 200
    html = unescape(response.content.decode())
    assert "Returns its FP32 input." in html
    assert response.context["inputs"] == [
        {"name": "INPUT0", "datatype": "FP32", "shape": "[-1, 3]"}
    ]
    samples = response.context["samples"]
    assert "http://testserver/v2/models/echo/infer" in samples["curl"]
    assert "Authorization: Bearer $CANGO_API_KEY" in samples["curl"]
    assert 'InferenceServerClient(url="testserver")' in samples["python"]
    assert 'client.infer("echo", inputs, headers=headers)' in samples["python"]
    assert "openai" not in samples
    for sample in samples.values():
        assert sample in html
    assert html.count("data-copy-target") >= 2

    # The playground's prefilled body and the curl body are valid requests for the model.
    body = response.context["form"]["body"].value().encode()
    curl_match = re.search(r"-d '(.*)'", samples["curl"])
    assert curl_match is not None
    curl_body = curl_match.group(1).encode()
    entry = catalog.model_for_caller("echo", tenant=world.tenant, key=None)
    for candidate in (body, curl_body):
        parsed = kserve.request_parse(candidate, None)
        assert kserve.request_validate(parsed, entry.inputs, 8, max_elements=1000) == 1
    compile(samples["python"], "sample.py", "exec")


def test_embedding_model_page_has_an_openai_sample_and_bytes_example(world, minilm):
    response = _client(world).get("/models/minilm/")

    samples = response.context["samples"]
    assert 'base_url="http://testserver/v1"' in samples["openai"]
    assert 'model="minilm"' in samples["openai"]
    assert 'np.full([1, 1], b"hello world", dtype=np.object_)' in samples["python"]
    body = json.loads(response.context["form"]["body"].value())
    assert body["inputs"][0]["data"] == ["hello world"]
    compile(samples["openai"], "sample.py", "exec")


def test_other_tenants_private_model_page_is_404(world, other_world):
    private = _model("theirs", visibility=CatalogModel.Visibility.LISTED_TENANTS)
    private.listed_tenants.add(other_world.tenant)

    client = _client(world)
    assert client.get("/models/theirs/").status_code == 404
    assert client.post("/models/theirs/", {"body": "{}"}).status_code == 404
    assert client.get("/models/nope/").status_code == 404
    assert _client(other_world).get("/models/theirs/").status_code == 200


# ---- Playground ----------------------------------------------------------------


#: The real ``infer_v2`` holds credit over the ``holds`` connection, which sees only
#: committed rows: these tests commit.
REAL_PATH = pytest.mark.django_db(transaction=True)

ECHO_BODY = '{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,3],"data":[1,2,3]}]}'


def _outcome(body: bytes, header_length: str | None = None) -> inference.InferOutcome:
    return inference.InferOutcome(
        body=body,
        content_type="application/json",
        header_length=header_length,
        site_slug="site-7",
        model_version="1",
        usage=Usage(units=1, cost_micros=10),
        max_cost_micros=10,
    )


def _writes(world) -> tuple[int, int, int]:
    account = CreditAccount.objects.get(tenant=world.tenant)
    return LedgerEntry.objects.count(), account.balance_micros, account.reserved_micros


def test_playground_runs_through_infer_v2_and_shows_output_cost_and_site(world, echo, monkeypatch):
    calls = []

    def fake(**kwargs):
        calls.append(kwargs)
        answer = {
            "model_name": "echo",
            "outputs": [
                {"name": "OUTPUT0", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}
            ],
        }
        return _outcome(json.dumps(answer).encode())

    monkeypatch.setattr(inference, "infer_v2", fake)

    response = _client(world).post("/models/echo/", {"body": ECHO_BODY})

    assert response.status_code == 200
    assert calls == [
        {
            "tenant": world.tenant,
            "key": None,
            "slug": "echo",
            "body": ECHO_BODY.encode(),
            "header_length": None,
        }
    ]
    run = response.context["run"]
    assert run.site == "site-7"
    assert run.cost == "$0.000010"
    assert run.units == 1
    assert float(run.latency_ms) >= 0
    html = unescape(response.content.decode())
    assert '"data": [1, 2, 3]' in html
    assert "site-7" in html
    assert "$0.000010" in html
    assert " ms" in html


def test_playground_decodes_binary_outputs(world, minilm, monkeypatch):
    vector = np.array([[0.5, 0.25]], dtype=np.float32)
    tokens = np.array([[4]], dtype=np.int64)
    header = json.dumps(
        {
            "model_name": "minilm",
            "outputs": [
                {
                    "name": "embedding",
                    "datatype": "FP32",
                    "shape": [1, 2],
                    "parameters": {"binary_data_size": 8},
                },
                {
                    "name": "tokens",
                    "datatype": "INT64",
                    "shape": [1, 1],
                    "parameters": {"binary_data_size": 8},
                },
            ],
        }
    ).encode()
    body = header + vector.tobytes() + tokens.tobytes()
    monkeypatch.setattr(inference, "infer_v2", lambda **kw: _outcome(body, str(len(header))))

    response = _client(world).post("/models/minilm/", {"body": '{"inputs": []}'})

    document = json.loads(response.context["run"].output)
    assert document["outputs"][0]["data"] == [0.5, 0.25]
    assert document["outputs"][1]["data"] == [4]
    assert "parameters" not in document["outputs"][0]


def test_playground_truncates_long_output(world, echo, monkeypatch):
    answer = {
        "outputs": [{"name": "OUTPUT0", "datatype": "BYTES", "shape": [1], "data": ["x" * 50_000]}]
    }
    monkeypatch.setattr(inference, "infer_v2", lambda **kw: _outcome(json.dumps(answer).encode()))

    response = _client(world).post("/models/echo/", {"body": ECHO_BODY})

    run = response.context["run"]
    assert run.truncated
    assert len(run.output.encode()) <= 20_000
    assert "only its start is shown" in response.content.decode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{not json", "Not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ("", "This field is required."),
    ],
)
def test_playground_rejects_bad_json_without_calling_or_writing(
    world, echo, monkeypatch, body, message
):
    monkeypatch.setattr(inference, "infer_v2", pytest.fail)
    before = _writes(world)

    response = _client(world).post("/models/echo/", {"body": body})

    assert response.status_code == 400
    assert message in response.content.decode()
    assert 'aria-invalid="true"' in response.content.decode()
    assert _writes(world) == before


def test_playground_limits_the_body_size(world, echo, monkeypatch, settings):
    settings.INFER_MAX_BODY_BYTES = 64
    monkeypatch.setattr(inference, "infer_v2", pytest.fail)

    page = _client(world).get("/models/echo/")
    assert 'maxlength="64"' in page.content.decode()
    response = _client(world).post("/models/echo/", {"body": ECHO_BODY + " " * 10})

    assert response.status_code == 400
    assert "at most 64" in response.content.decode()


@pytest.mark.parametrize(
    ("error", "status", "text"),
    [
        (KServeError("inputs.INPUT0", "INPUT0: bad shape", status=422), 422, "INPUT0: bad shape"),
        (ModelNotAllowed("This API key may not call 'echo'."), 403, "may not call"),
        (InsufficientCredits("insufficient credit"), 402, "Not enough credit"),
        (NoHealthySite("none"), 503, "No site can serve this model right now"),
        (SitesUnavailable("all full", busy=True), 503, "busy or failed"),
        (TritonRejected("unexpected shape", status=400), 400, "The model refused the input"),
    ],
)
def test_playground_shows_errors_next_to_the_body_with_their_status(
    world, echo, monkeypatch, error, status, text
):
    def fake(**kwargs):
        raise error

    monkeypatch.setattr(inference, "infer_v2", fake)
    before = _writes(world)

    response = _client(world).post("/models/echo/", {"body": ECHO_BODY})

    assert response.status_code == status
    html = response.content.decode()
    assert text in unescape(html)
    assert response.context["form"].errors["body"]
    assert 'id="id_body_error"' in html
    assert _writes(world) == before
    if status == 402:
        assert 'href="/billing/#buy"' in html


def test_playground_402_for_a_developer_says_whom_to_ask(world, echo, monkeypatch):
    def fake(**kwargs):
        raise InsufficientCredits("insufficient credit")

    monkeypatch.setattr(inference, "infer_v2", fake)

    response = _client(world, Role.DEVELOPER).post("/models/echo/", {"body": ECHO_BODY})

    assert response.status_code == 402
    assert "Ask an owner or admin to buy credits." in response.content.decode()


@REAL_PATH
def test_playground_real_path_without_a_site_is_503_and_charges_nothing(world, echo, health):
    """No mock: the real ``infer_v2`` holds credit, finds no site and releases the hold."""
    before = _writes(world)

    response = _client(world).post("/models/echo/", {"body": ECHO_BODY})

    assert response.status_code == 503
    assert _writes(world) == before


@REAL_PATH
def test_playground_real_path_checks_the_input_against_the_schema(world, echo):
    before = _writes(world)
    wrong = ECHO_BODY.replace("[1,3]", "[1,4]").replace("[1,2,3]", "[1,2,3,4]")

    response = _client(world).post("/models/echo/", {"body": wrong})

    assert response.status_code in (400, 422)
    assert response.context["error"].code in ("invalid_input", "invalid_request")
    assert _writes(world) == before


@REAL_PATH
def test_playground_real_path_without_credit_is_402(echo):
    broke = MembershipFactory.create()
    client = Client()
    client.force_login(broke.user)

    response = client.post("/models/echo/", {"body": ECHO_BODY})

    assert response.status_code == 402
    assert "Not enough credit" in unescape(response.content.decode())
    assert not LedgerEntry.objects.filter(tenant=broke.tenant).exists()
