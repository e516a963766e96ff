"""Schemathesis against the marketplace's own OpenAPI schema, over HTTP, with a funded key.

Requests go to the marketplace under granian (as in production), with both Triton sites
registered, so inference and embeddings calls really run and jobs really go through
Celery. The schema is generated from the code at import (Schemathesis parametrizes
tests at collection, before any server runs) and checked to be the one the server
serves at ``/api/schema/``. HTTP rather than Schemathesis' in-process WSGI calls: the
server's own time per request (2-15 ms measured) is small next to generating it, so
in-process calls would save little and skip the production server.

Every generated request (positive and negative data, plus Schemathesis' example and
coverage phases) must get an answer that is not a 5xx and that the schema documents:
its status code, content type and body.

An *operation family* is a group of operations a client uses together (``FAMILIES``);
each must receive at least ``FAMILY_MIN_REQUESTS`` requests, counted by an
``after_call`` hook, so the claim cannot shrink silently when the schema or the
generation settings change. The seed makes a run reproducible.
"""

import collections
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import hypothesis.strategies as st
import pytest
import requests
import schemathesis
from django.core.management import call_command
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from deploy.triton import SiteProcess
from marketplace.models import Job
from tests.integration.conftest import funded_tenant, register, wait_for
from workers import health

# Not transactional: a transactional test flushes the database after it, and the rows
# the server needs (sites, the funded tenant) are committed once, by ``fuzz_target``.
pytestmark = [pytest.mark.integration, pytest.mark.django_db]

SEED = 20261126
FAMILY_MIN_REQUESTS = 1000
# And this many of them answered 2xx: a run where (almost) every request stops at the
# key check or the model lookup must not pass for a fuzz of the code behind them.
FAMILY_MIN_SUCCESSES = 50
REQUEST_TIMEOUT_SECONDS = 30
# Hypothesis examples asked for per operation (fuzzing phase); the example and coverage
# phases add their own requests on top. Sized so that each family passes
# FAMILY_MIN_REQUESTS with a margin while the module stays within a few minutes.
FAMILIES: dict[str, dict[str, int]] = {
    "catalog": {"GET /v1/models": 50, "GET /v1/models/{model}": 1000},
    "inference_v2": {
        "POST /v2/models/{model}/infer": 400,
        "POST /v2/models/{model}/versions/{version}/infer": 200,
        "GET /v2/models/{model}": 150,
        "GET /v2/models/{model}/versions/{version}": 100,
        "GET /v2/models/{model}/ready": 150,
        "GET /v2/models/{model}/versions/{version}/ready": 100,
    },
    "embeddings": {"POST /v1/embeddings": 1000},
    "jobs": {
        "POST /v1/jobs": 400,
        "GET /v1/jobs": 300,
        "GET /v1/jobs/{job_id}": 200,
        "POST /v1/jobs/{job_id}/cancel": 200,
    },
    "account": {"GET /v1/me": 50, "GET /v1/balance": 50, "GET /v1/usage": 1000},
}
# Unauthenticated probes without parameters: a handful of distinct requests exist.
UNCOUNTED = {
    "GET /v1/health": 20,
    "GET /v1/health/live": 20,
    "GET /v2": 20,
    "GET /v2/health/live": 20,
    "GET /v2/health/ready": 20,
}
FAMILY_OF = {label: family for family, ops in FAMILIES.items() for label in ops}
# Never called on purpose: it sleeps on every request (back-pressure tests use it).
SLOW_MODELS = {"slow"}

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

requests_sent: collections.Counter[str] = collections.Counter()
answered_ok: collections.Counter[str] = collections.Counter()


def _config() -> schemathesis.Config:
    budgets = {**UNCOUNTED, **{label: n for ops in FAMILIES.values() for label, n in ops.items()}}
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            # A slow request (a real model on a shared CPU) is not a failure here.
            "suppress-health-check": ["too_slow"],
            "request-timeout": REQUEST_TIMEOUT_SECONDS,
            "generation": {"mode": "all", "database": "none"},
            "phases": {"stateful": {"enabled": False}},
            "operations": [
                {"include-name": label, "generation": {"max-examples": n}}
                for label, n in budgets.items()
            ],
        }
    )


KSERVE_TYPES = ["BOOL", "UINT8", "INT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]


def _values(datatype: str) -> st.SearchStrategy[Any]:
    if datatype == "BYTES":
        return st.text(max_size=12)
    if datatype == "BOOL":
        return st.booleans()
    if datatype.startswith(("FP", "BF")):
        return st.floats(allow_nan=False, allow_infinity=False)
    return st.integers(min_value=-(2**70), max_value=2**70)


def _tensor(draw: st.DrawFn, spec: dict[str, Any]) -> dict[str, Any]:
    """One input tensor: as the model declares it, or with its name, type or size off."""
    shape = [dim if dim >= 0 else draw(st.integers(1, 3)) for dim in spec["shape"]]
    datatype, name = spec["datatype"], spec["name"]
    count = 1
    for dim in shape:
        count *= dim
    if draw(st.booleans()):
        name = draw(st.one_of(st.just(name), st.text(max_size=8)))
        datatype = draw(st.one_of(st.just(datatype), st.sampled_from(KSERVE_TYPES)))
        shape = draw(st.one_of(st.just(shape), st.lists(st.integers(0, 4), max_size=3)))
        count = draw(st.one_of(st.just(count), st.integers(0, 8)))
    data = draw(st.lists(_values(datatype), min_size=count, max_size=count))
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def _infer_body(models: dict[str, list[dict[str, Any]]]) -> st.SearchStrategy[tuple[str, Any]]:
    """A model and a KServe v2 JSON request for it (valid about half the time)."""

    @st.composite
    def body(draw: st.DrawFn) -> tuple[str, Any]:
        model = draw(st.sampled_from(sorted(models)))
        inputs = [_tensor(draw, spec) for spec in models[model]]
        return model, {"inputs": inputs}

    return body()


@dataclass
class FuzzTarget:
    """The running marketplace, a funded key, and what the generation hooks steer at."""

    base_url: str = ""
    token: str = ""
    models: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    job_ids: list[str] = field(default_factory=list)


target = FuzzTarget()


def _schema_from_code() -> dict[str, Any]:
    generated = SchemaGenerator().get_schema(request=None, public=True)
    return json.loads(OpenApiJsonRenderer().render(generated))


SCHEMA = _schema_from_code()
schema = schemathesis.openapi.from_dict(SCHEMA, config=_config())


@schema.hook
def flatmap_case(context: Any, case: Any) -> st.SearchStrategy[Any]:
    """Steer part of the generated requests at real models and jobs.

    Random path parameters and bodies almost never name a model or a job that exists,
    so without this nearly every inference call would stop at a 404 and the inference,
    billing and job code behind it would go unfuzzed.
    """
    label = context.operation.label
    real_models = sorted(target.models)
    variants: list[st.SearchStrategy[Any]] = [st.just(case)]
    if label.endswith("/infer") and case.media_type == "application/json":

        def infer(choice: tuple[str, Any]) -> Any:
            case.path_parameters = {**case.path_parameters, "model": choice[0]}
            case.body = choice[1]
            return case

        variants.append(_infer_body(target.models).map(infer))
    elif "model" in (case.path_parameters or {}):

        def model_named(slug: str) -> Any:
            case.path_parameters = {**case.path_parameters, "model": slug}
            return case

        variants.append(st.sampled_from(real_models).map(model_named))
    elif "job_id" in (case.path_parameters or {}):

        def job_named(job_id: str) -> Any:
            case.path_parameters = {**case.path_parameters, "job_id": job_id}
            return case

        variants.append(st.sampled_from(target.job_ids).map(job_named))
    elif label == "POST /v1/embeddings" and isinstance(case.body, dict):

        def embed(texts: str | list[str]) -> Any:
            case.body = {"model": "minilm", "input": texts}
            return case

        texts = st.text(min_size=1, max_size=40)
        variants.append(st.one_of(texts, st.lists(texts, min_size=1, max_size=4)).map(embed))
    elif label == "POST /v1/jobs" and isinstance(case.body, dict):

        def job(choice: tuple[str, Any]) -> Any:
            case.body = {"model": choice[0], **choice[1]}
            return case

        variants.append(_infer_body(target.models).map(job))
    return st.one_of(*variants)


@schema.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    requests_sent[case.operation.label] += 1
    if 200 <= response.status_code < 300:
        answered_ok[case.operation.label] += 1


def _jobs_make(base: str, token: str) -> list[str]:
    """A few real jobs, so retrieve and cancel also meet existing (and finished) jobs."""
    ids = []
    for index in range(3):
        response = requests.post(
            f"{base}/v1/jobs",
            json={
                "model": "echo",
                "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}],
            },
            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": f"fuzz-{index}"},
            timeout=REQUEST_TIMEOUT_SECONDS,
        )
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


@pytest.fixture(scope="module")
def fuzz_target(
    web_server: str, sites: list[SiteProcess], django_db_blocker: Any
) -> Iterator[FuzzTarget]:
    """Sites registered and a funded tenant, once for the module; the database flushed after.

    Module-scoped (the fuzz tests themselves only talk HTTP), so the catalog is not
    registered again for each of the ~20 operations.
    """
    with django_db_blocker.unblock():
        for index, site in enumerate(sites):
            register(site, power=str(30 + 10 * index))
        health.servers_check()
        _tenant, _key, token, _api = funded_tenant(10**12)
    try:
        base = f"http://{web_server}"
        served = requests.get(f"{base}/api/schema/?format=json", timeout=REQUEST_TIMEOUT_SECONDS)
        assert served.json() == SCHEMA, "the fuzzed schema must be the served one"
        auth = {"Authorization": f"Bearer {token}"}
        catalog = requests.get(f"{base}/v1/models", headers=auth, timeout=REQUEST_TIMEOUT_SECONDS)
        assert catalog.status_code == 200, catalog.text
        target.models = {
            entry["id"]: entry["inputs"]
            for entry in catalog.json()["data"]
            if entry["id"] not in SLOW_MODELS
        }
        assert "minilm" in target.models
        target.base_url, target.token = base, token
        target.job_ids = _jobs_make(base, token)
        yield target
    finally:
        with django_db_blocker.unblock():
            # The workers finish the jobs the fuzz submitted before their rows go, so
            # no message of this module reaches a worker during a later test.
            unfinished = Job.objects.exclude(status__in=Job.FINAL_STATES)
            wait_for(lambda: not unfinished.exists(), timeout=60, interval=0.5)
            call_command("flush", verbosity=0, interactive=False)


session = requests.Session()


@schema.parametrize()
def test_api_answers_as_its_schema_says(case: Any, fuzz_target: FuzzTarget) -> None:
    """No 5xx, and every status, content type and body is the one the schema documents."""
    case.call_and_validate(
        base_url=fuzz_target.base_url,
        session=session,
        headers={"Authorization": f"Bearer {fuzz_target.token}"},
        checks=CHECKS,
        timeout=REQUEST_TIMEOUT_SECONDS,
    )


def test_every_operation_has_a_budget() -> None:
    """A new operation must join a family (or the uncounted probes) to be fuzzed on purpose."""
    labels = {
        f"{method.upper()} {path}" for path, item in SCHEMA["paths"].items() for method in item
    }
    assert labels == set(FAMILY_OF) | set(UNCOUNTED)


def test_each_operation_family_got_at_least_1000_requests() -> None:
    """Every family got FAMILY_MIN_REQUESTS requests, FAMILY_MIN_SUCCESSES of them 2xx."""
    if not requests_sent:
        pytest.fail("run the whole module: the fuzz tests above did not run in this session")
    sent: collections.Counter[str] = collections.Counter()
    succeeded: collections.Counter[str] = collections.Counter()
    for label, count in requests_sent.items():
        sent[FAMILY_OF.get(label, "uncounted")] += count
        succeeded[FAMILY_OF.get(label, "uncounted")] += answered_ok[label]
    print(f"\nrequests per family: {dict(sent)}; of which 2xx: {dict(succeeded)}")
    short = {family: sent[family] for family in FAMILIES if sent[family] < FAMILY_MIN_REQUESTS}
    assert short == {}, f"per operation: {dict(requests_sent)}"
    failing = {
        family: succeeded[family] for family in FAMILIES if succeeded[family] < FAMILY_MIN_SUCCESSES
    }
    assert failing == {}, f"2xx per operation: {dict(answered_ok)}"
