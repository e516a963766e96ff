"""Async jobs through real Celery worker processes and real tritonserver sites."""

import hashlib
import hmac
import http.server
import json
import threading
import time
from functools import partial

import pytest
from rest_framework.test import APIClient

from marketplace.models import Job, WebhookDelivery
from tests.integration.conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

JOBS = {
    "echo": {
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]}]
    },
    "classifier": {
        "inputs": [
            {"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}
        ]
    },
    "text_upper": {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": ["straße"]}]
    },
    "counter_int64": {
        "inputs": [{"name": "values", "datatype": "INT64", "shape": [1, 3], "data": [1, 2, 3]}]
    },
    "slow": {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [2], "data": [1, 2]}]},
    "minilm": {
        "inputs": [
            {
                "name": "text",
                "datatype": "BYTES",
                "shape": [1, 1],
                "data": ["a cat sits on the mat"],
            }
        ]
    },
}


def _submit(api: APIClient, model: str, body: dict, key: str | None = None, **extra):
    if key:
        return api.post(
            "/v1/jobs", {"model": model, **body, **extra}, format="json", HTTP_IDEMPOTENCY_KEY=key
        )
    return api.post("/v1/jobs", {"model": model, **body, **extra}, format="json")


def _finished(api: APIClient, job_id: str) -> dict | None:
    body = api.get(f"/v1/jobs/{job_id}").json()
    return body if body["status"] in ("succeeded", "failed", "canceled", "expired") else None


def test_every_model_as_a_job(registered, celery_cluster, world):
    submitted = {}
    for model, body in JOBS.items():
        response = _submit(world.api, model, body)
        assert response.status_code == 202, response.content
        assert response.json()["status"] == "queued"
        submitted[model] = response.json()["id"]
    results = {
        model: wait_for(partial(_finished, world.api, job_id), timeout=60)
        for model, job_id in submitted.items()
    }
    for model, job in results.items():
        assert job["status"] == "succeeded", (model, job)
        assert job["cost_micros"] is not None
        assert job["cost_micros"] > 0
        assert job["site"] in {s.slug for s in registered}
    outputs = {
        m: {o["name"]: o["data"] for o in j["output"]["outputs"]} for m, j in results.items()
    }
    assert outputs["echo"]["OUTPUT0"] == [1, 2, 3, 4]
    assert outputs["text_upper"]["text"] == ["STRASSE"]
    assert outputs["counter_int64"]["sum"] == [6]
    assert len(outputs["minilm"]["embedding"]) == 384
    assert results["minilm"]["site"] == registered[0].slug  # the only site serving it
    assert results["minilm"]["units"] == 8  # tokens


def test_idempotency_key_same_body_same_job_other_body_409(registered, celery_cluster, world):
    first = _submit(world.api, "echo", JOBS["echo"], key="order-42")
    again = _submit(world.api, "echo", JOBS["echo"], key="order-42")
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    other = _submit(world.api, "classifier", JOBS["classifier"], key="order-42")
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_conflict"
    assert Job.objects.filter(tenant=world.tenant).count() == 1


def test_list_filter_paginate_and_other_tenant_sees_nothing(
    registered, celery_cluster, world, other_world
):
    ids = [_submit(world.api, "echo", JOBS["echo"]).json()["id"] for _ in range(3)]
    ids.append(_submit(world.api, "counter_int64", JOBS["counter_int64"]).json()["id"])
    page = world.api.get("/v1/jobs", {"limit": 2}).json()
    assert len(page["results"]) == 2
    assert page["next"]
    assert page["results"][0]["id"] == ids[-1]  # newest first
    only_echo = world.api.get("/v1/jobs", {"model": "echo"}).json()["results"]
    assert {j["id"] for j in only_echo} == set(ids[:3])
    assert world.api.get("/v1/jobs", {"status": "bogus"}).status_code == 400

    assert other_world.api.get("/v1/jobs").json()["results"] == []
    assert other_world.api.get(f"/v1/jobs/{ids[0]}").status_code == 404
    assert other_world.api.post(f"/v1/jobs/{ids[0]}/cancel").status_code == 404


def test_cancel_a_queued_job(registered, world):
    # No workers in this test: the job stays queued until canceled.
    job_id = _submit(world.api, "echo", JOBS["echo"]).json()["id"]
    canceled = world.api.post(f"/v1/jobs/{job_id}/cancel")
    assert canceled.status_code == 200
    assert canceled.json()["status"] == "canceled"
    again = world.api.post(f"/v1/jobs/{job_id}/cancel")
    assert again.status_code == 200  # canceling twice is harmless
    Job.objects.filter(public_id=job_id).update(status="succeeded")
    assert world.api.post(f"/v1/jobs/{job_id}/cancel").status_code == 409


def test_bad_job_input_is_422_and_stores_nothing(registered, world):
    bad = {"inputs": [{"name": "INPUT0", "datatype": "INT64", "shape": [1, 1], "data": [1]}]}
    response = _submit(world.api, "echo", bad)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "inputs.INPUT0"
    assert not Job.objects.exists()
    response = _submit(world.api, "echo", {"inputs": "nope"})
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "inputs"


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list[tuple[dict, bytes]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Receiver.received.append((dict(self.headers), body))
        self.send_response(500 if len(_Receiver.received) == 1 else 204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_signed_webhook_on_completion_is_retried_and_logged(registered, celery_cluster, world):
    _Receiver.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook"
        job_id = _submit(world.api, "echo", JOBS["echo"], webhook_url=url).json()["id"]
        wait_for(lambda: len(_Receiver.received) >= 2, timeout=60)
    finally:
        server.shutdown()
    headers, body = _Receiver.received[-1]
    timestamp, signature = (part.split("=", 1)[1] for part in headers["Cango-Signature"].split(","))
    expected = hmac.new(
        world.tenant.webhook_secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(signature, expected)
    assert abs(int(timestamp) - time.time()) < 120
    payload = json.loads(body)
    assert payload["id"] == job_id
    assert payload["status"] == "succeeded"
    deliveries = list(WebhookDelivery.objects.filter(job__public_id=job_id).order_by("attempt"))
    assert [d.status_code for d in deliveries] == [500, 204]
