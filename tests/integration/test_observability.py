"""Metrics and logs of the real processes: granian with two workers, Celery workers."""

import json
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from marketplace.models import Job
from tests.integration.conftest import METRICS_TOKEN, CeleryCluster, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ECHO = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _samples(web_server: str, name: str) -> dict[tuple, float]:
    status, body = _get(
        f"http://{web_server}/metrics", {"Authorization": f"Bearer {METRICS_TOKEN}"}
    )
    assert status == 200
    found: dict[tuple, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_every_scrape_counts_the_requests_of_both_web_processes(web_server):
    assert _get(f"http://{web_server}/metrics")[0] == 404  # no token: not there
    route = (("method", "GET"), ("route", "v1/health/live"), ("status", "2xx"))
    before = _samples(web_server, "cango_http_request_duration_seconds_count").get(route, 0)

    for _ in range(40):  # a new connection each: granian spreads them over its workers
        assert _get(f"http://{web_server}/v1/health/live")[0] == 200

    # Whichever process answers a scrape reports the same total: all processes' files.
    counts = {
        _samples(web_server, "cango_http_request_duration_seconds_count")[route] for _ in range(6)
    }
    assert counts == {before + 40}


def test_a_job_is_counted_and_its_worker_lines_carry_job_and_site(
    registered, celery_cluster: CeleryCluster, web_server, world
):
    response = world.api.post("/v1/jobs", {"model": "echo", **ECHO}, format="json")
    assert response.status_code == 202
    job = Job.objects.get(public_id=response.json()["id"])
    wait_for(lambda: Job.objects.get(pk=job.pk).status == Job.Status.SUCCEEDED, timeout=60)
    job.refresh_from_db()

    def counted() -> float:
        runs = _samples(web_server, "cango_job_runs_total")
        return runs.get((("model", "echo"), ("outcome", "succeeded"), ("site", job.site_slug)), 0)

    assert wait_for(counted, timeout=10) >= 1
    log: Path = celery_cluster.processes[job.site_slug].log
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    done = [
        line for line in lines if line.get("msg") == "job run" and line.get("job_id") == str(job.pk)
    ]
    assert done
    assert done[-1]["site"] == job.site_slug
    assert done[-1]["outcome"] == "succeeded"
