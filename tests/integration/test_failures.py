"""Failures: a site dies mid-run, a model saturates, a worker is killed mid-job."""

import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest

from config.redis_client import redis_client
from deploy import triton as triton_launcher
from marketplace.models import Job
from tests.integration.conftest import register, wait_for
from workers import routing

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ECHO = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
SLOW = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [2], "data": [1, 2]}]}


def _health(server_slug: str) -> dict:
    """The site's last health snapshot ({} before the first check)."""
    for raw in redis_client().hgetall(routing.HEALTH_KEY).values():
        snapshot = json.loads(raw)
        if snapshot.get("site") == server_slug:
            return snapshot
    return {}


class SyncLoad:
    """Threads sending sync requests over HTTP until stopped; counts outcomes per site."""

    def __init__(self, netloc: str, token: str, threads: int = 4) -> None:
        self.netloc, self.token = netloc, token
        self.stop = threading.Event()
        self.ok: dict[str, int] = {}
        self.failed: list[tuple[int, bytes]] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        conn = http.client.HTTPConnection(self.netloc, timeout=30)
        body = json.dumps(ECHO)
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        while not self.stop.is_set():
            try:
                conn.request("POST", "/v2/models/echo/infer", body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                with self.lock:
                    self.failed.append((0, str(exc).encode()))
                continue
            with self.lock:
                if response.status == 200:
                    site = response.getheader("X-Cango-Site") or ""
                    self.ok[site] = self.ok.get(site, 0) + 1
                else:
                    self.failed.append((response.status, payload))

    def __enter__(self) -> "SyncLoad":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    @property
    def total(self) -> int:
        return sum(self.ok.values()) + len(self.failed)


def test_site_killed_mid_run_work_continues_and_it_returns(
    live_server, celery_cluster, world, tmp_path
):
    pair = triton_launcher.sites_start(2, ["echo"], tmp_path, slug_prefix="kill")
    first, second = pair
    try:
        for site in pair:
            register(site)
            celery_cluster.start_worker(site.slug, f"site.{site.slug}", site=site.slug)
        wait_for(lambda: _health(first.slug).get("healthy"), timeout=15)
        routing.reset()
        netloc = urlsplit(live_server.url).netloc

        with SyncLoad(netloc, world.token) as load:
            jobs = [
                world.api.post("/v1/jobs", {"model": "echo", **ECHO}, format="json")
                for _ in range(20)
            ]
            time.sleep(1.0)
            first.kill()
            killed_at = time.monotonic()
            jobs += [
                world.api.post("/v1/jobs", {"model": "echo", **ECHO}, format="json")
                for _ in range(20)
            ]
            wait_for(lambda: _health(first.slug).get("healthy") is False, timeout=15)
            out_of_rotation_s = time.monotonic() - killed_at
            time.sleep(2.0)
            during = load.total

        print(  # the figures quoted in the issue note; shown with -s
            f"site kill: out of rotation after {out_of_rotation_s:.1f} s; sync "
            f"{load.total} requests, {len(load.failed)} failed, by site {load.ok}"
        )
        assert out_of_rotation_s < 10, out_of_rotation_s
        assert during > 100
        assert len(load.failed) <= 0.01 * load.total, load.failed[:5]
        assert load.ok.get(second.slug, 0) > 0

        job_ids = [response.json()["id"] for response in jobs]
        assert all(response.status_code == 202 for response in jobs)
        wait_for(
            lambda: Job.objects.filter(public_id__in=job_ids, status="succeeded").count() == 40,
            timeout=60,
        )
        assert Job.objects.filter(public_id__in=job_ids).exclude(status="succeeded").count() == 0

        restarted = triton_launcher.site_start(
            first.slug,
            ["echo"],
            tmp_path,
            ports=[first.http_port, first.grpc_port, first.metrics_port],
        )
        pair[0] = restarted
        wait_for(lambda: _health(first.slug).get("healthy"), timeout=15)
        routing.reset()
        with SyncLoad(netloc, world.token) as load:
            wait_for(lambda: load.ok.get(first.slug, 0) > 5, timeout=15)
        assert not load.failed
    finally:
        triton_launcher.sites_stop(pair)
        for site in pair:
            celery_cluster.processes[site.slug].stop()


def test_saturated_slow_model_answers_503_with_retry_after_never_hangs(
    live_server, registered, world
):
    netloc = urlsplit(live_server.url).netloc

    def call(_: int) -> tuple[int, dict, float]:
        conn = http.client.HTTPConnection(netloc, timeout=30)
        started = time.monotonic()
        conn.request(
            "POST",
            "/v2/models/slow/infer",
            body=json.dumps(SLOW),
            headers={"Authorization": f"Bearer {world.token}"},
        )
        response = conn.getresponse()
        response.read()
        return response.status, dict(response.getheaders()), time.monotonic() - started

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(call, range(16)))
    statuses = [status for status, _, _ in results]
    assert statuses.count(200) >= 2
    assert statuses.count(503) >= 4
    assert set(statuses) <= {200, 503}
    for status, headers, elapsed in results:
        if status == 503:
            assert headers["Retry-After"] == "1"
            assert elapsed < 2.0  # refused fast, not queued behind the others
    assert max(elapsed for _, _, elapsed in results) < 15


def test_worker_killed_mid_job_the_job_completes_exactly_once(registered, celery_cluster, world):
    slow_site = registered[1].slug
    # Only the second site serves the slow model, so the job must run there.
    from workers.models import Deployment

    Deployment.objects.filter(model__slug="slow").exclude(server__site__slug=slow_site).update(
        enabled=False
    )
    routing.reset()
    job_id = world.api.post("/v1/jobs", {"model": "slow", **SLOW}, format="json").json()["id"]
    wait_for(
        lambda: Job.objects.filter(public_id=job_id, status="running").exists(),
        timeout=20,
        interval=0.01,
    )
    celery_cluster.processes[slow_site].kill()
    job = Job.objects.get(public_id=job_id)
    assert job.status == "running"
    assert job.attempts == 1

    celery_cluster.start_worker(slow_site, f"site.{slow_site}", site=slow_site)
    wait_for(lambda: Job.objects.filter(public_id=job_id, status="succeeded").exists(), timeout=45)
    job = Job.objects.get(public_id=job_id)
    assert job.attempts == 2
    assert job.output is not None
    assert job.output["outputs"][0]["data"] == [1, 2]
    finished_at = job.finished_at
    time.sleep(3)  # any stray redelivery has had time to run; it must change nothing
    job.refresh_from_db()
    assert job.finished_at == finished_at
    assert job.status == "succeeded"
