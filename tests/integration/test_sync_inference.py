"""Sync inference through the marketplace against real tritonserver sites.

The official ``tritonclient.http`` and ``openai`` clients talk to a live server.
"""

import http.client
import json
from urllib.parse import urlsplit

import numpy as np
import openai
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import metrics_totals

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def client(live_server, registered, world) -> httpclient.InferenceServerClient:
    url = urlsplit(live_server.url).netloc
    return httpclient.InferenceServerClient(url=url, connection_timeout=30, network_timeout=30)


@pytest.fixture
def auth(world) -> dict[str, str]:
    return {"Authorization": f"Bearer {world.token}"}


def _input(name, array, datatype, binary):
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def test_server_and_model_metadata(client, auth):
    assert client.is_server_live(headers=auth)
    assert client.is_server_ready(headers=auth)
    assert client.is_model_ready("echo", headers=auth)
    metadata = client.get_model_metadata("minilm", headers=auth)
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1, 1]}]
    assert {o["name"] for o in metadata["outputs"]} == {"embedding", "tokens"}


@pytest.mark.parametrize("binary", [True, False])
def test_every_model_through_tritonclient(client, auth, binary):
    echo_in = np.array([[1.5, -2.0, 3.25], [0.0, 4.0, 8.0]], dtype=np.float32)
    result = client.infer("echo", [_input("INPUT0", echo_in, "FP32", binary)], headers=auth)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), echo_in)

    ints = np.array([[1, 2, 2**40], [5, -5, 7]], dtype=np.int64)
    result = client.infer("counter_int64", [_input("values", ints, "INT64", binary)], headers=auth)
    np.testing.assert_array_equal(result.as_numpy("sum").reshape(-1), [2**40 + 3, 7])

    features = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    result = client.infer(
        "classifier", [_input("features", features, "FP32", binary)], headers=auth
    )
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (2, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)

    texts = np.array([["héllo wörld".encode()], [b"abc"]], dtype=np.object_)
    result = client.infer("text_upper", [_input("text", texts, "BYTES", binary)], headers=auth)
    upper = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("text").reshape(-1)]
    assert upper == ["HÉLLO WÖRLD", "ABC"]

    sentences = np.array(
        [[b"a cat sits on the mat"], [b"a kitten is on the rug"]], dtype=np.object_
    )
    result = client.infer("minilm", [_input("text", sentences, "BYTES", binary)], headers=auth)
    vectors = result.as_numpy("embedding")
    assert vectors.shape == (2, 384)
    assert 0.5 < float(vectors[0] @ vectors[1]) < 0.7


def test_bad_key_and_unknown_model_through_tritonclient(client, auth):
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("echo", headers={"Authorization": "Bearer nope"})
    assert info.value.status() == "401"
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("no-such-model", headers=auth)
    assert info.value.status() == "404"


def _post(live_server, path, body, headers):
    conn = http.client.HTTPConnection(urlsplit(live_server.url).netloc, timeout=30)
    conn.request("POST", path, body=body, headers=headers)
    response = conn.getresponse()
    return response.status, dict(response.getheaders()), response.read()


def test_response_headers_say_site_version_and_cost(live_server, registered, world, auth):
    body = json.dumps(
        {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
    )
    status, headers, payload = _post(
        live_server, "/v2/models/echo/infer", body, {**auth, "X-Request-Id": "abc-123"}
    )
    assert status == 200, payload
    assert headers["X-Request-Id"] == "abc-123"
    assert headers["X-Cango-Site"] in {s.slug for s in registered}
    assert headers["X-Cango-Model-Version"] == "1"
    assert headers["X-Cango-Cost-Micros"] == "10"  # echo: 10 µ$ per request
    assert json.loads(payload)["outputs"][0]["data"] == [1.0, 2.0]


BAD_REQUESTS = [
    (
        "wrong datatype",
        "echo",
        {"inputs": [{"name": "INPUT0", "datatype": "INT64", "shape": [1, 2], "data": [1, 2]}]},
        422,
        "INPUT0",
    ),
    (
        "wrong shape",
        "classifier",
        {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]},
        422,
        "features",
    ),
    (
        "missing tensor",
        "classifier",
        {"inputs": [{"name": "other", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]},
        422,
        "features",
    ),
    (
        "data count",
        "echo",
        {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 3], "data": [1, 2]}]},
        422,
        "INPUT0",
    ),
    (
        "batch too big",
        "echo",
        {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [65, 1], "data": [0] * 65}]},
        422,
        "INPUT0",
    ),
    ("no inputs", "echo", {"inputs": []}, 400, "inputs"),
]


@pytest.mark.parametrize(
    ("label", "model", "payload", "status", "named"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_inputs_are_4xx_naming_the_problem_and_never_reach_triton(
    live_server, registered, auth, label, model, payload, status, named
):
    before = [metrics_totals(site) for site in registered]
    got, _, body = _post(live_server, f"/v2/models/{model}/infer", json.dumps(payload), auth)
    assert got == status, body
    error = json.loads(body)["error"]
    assert named in (error.get("field") or "") + error["message"]
    assert [metrics_totals(site) for site in registered] == before


def test_non_json_unknown_model_and_oversize_body(live_server, registered, auth, settings):
    status, _, body = _post(live_server, "/v2/models/echo/infer", b"{not json", auth)
    assert status == 400
    assert json.loads(body)["error"]["code"] == "invalid_json"

    status, _, body = _post(live_server, "/v2/models/nope/infer", b"{}", auth)
    assert status == 404
    assert json.loads(body)["error"]["field"] == "model"

    big = b"x" * (settings.INFER_MAX_BODY_BYTES + 1)
    status, _, body = _post(live_server, "/v2/models/echo/infer", big, auth)
    assert status == 413
    assert json.loads(body)["error"]["code"] == "payload_too_large"


def test_key_limited_to_other_models_gets_403(live_server, registered, world):
    from tests.factories import api_key_make

    _, token = api_key_make(world.tenant, allowed_models=["minilm"])
    body = json.dumps(
        {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 1], "data": [1]}]}
    )
    status, _, payload = _post(
        live_server, "/v2/models/echo/infer", body, {"Authorization": f"Bearer {token}"}
    )
    assert status == 403
    assert json.loads(payload)["error"]["code"] == "model_not_allowed"


def test_openai_client_embeddings(live_server, registered, world):
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=world.token, max_retries=0)
    response = client.embeddings.create(
        model="minilm", input=["a cat sits on the mat", "a kitten is on the rug"]
    )
    vectors = np.array([item.embedding for item in response.data])
    assert vectors.shape == (2, 384)
    assert 0.5 < float(vectors[0] @ vectors[1]) < 0.7
    assert response.usage.prompt_tokens == 16

    single = client.embeddings.create(
        model="minilm", input="quarterly revenue grew 5%", encoding_format="float"
    )
    assert len(single.data) == 1
    assert len(single.data[0].embedding) == 384

    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="echo", input="not an embedding model")
