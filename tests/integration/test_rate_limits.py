"""Rate and in-flight limits hold across 4 web processes sharing one Redis.

Four separate granian processes on four ports (so the load provably reaches every
one of them), against the test database and Redis, with a bounded loopback load
from one key: no more than the limit is admitted per window, and the excess gets a
429 with ``Retry-After``.
"""

import contextlib
import functools
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings

from config.redis_client import redis_client
from deploy import triton as triton_launcher
from marketplace import services
from tests.integration.conftest import _database_url, funded_tenant, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 4
SLOW = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [2], "data": [1, 2]}]}


def _live(netloc: str) -> bool:
    return triton_launcher.http_get(f"http://{netloc}/v1/health/live") is not None


@dataclass
class WebProcesses:
    netlocs: list[str]
    admissions: Path  # see tests/integration/admission_probe.py


@pytest.fixture(scope="module")
def web(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebProcesses]:
    """Four granian processes (one worker each) on four ports, logging their admissions."""
    logs = tmp_path_factory.mktemp("web4")
    admissions = logs / "admissions.log"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": _database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "RATE_LIMIT_KEY_PREFIX": settings.RATE_LIMIT_KEY_PREFIX,
        "CATALOG_CACHE_SECONDS": "0",
        "ALLOWED_HOSTS": "*",
        "PYTHONUNBUFFERED": "1",
        "ADMISSION_PROBE_LOG": str(admissions),
    }
    popens: list[subprocess.Popen[bytes]] = []
    netlocs: list[str] = []
    try:
        for index in range(PROCESSES):
            port = triton_launcher.port_free()
            argv = [
                str(Path(sys.executable).with_name("granian")),
                "--interface",
                "wsgi",
                "tests.integration.admission_probe:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
                "--blocking-threads",
                "4",
                "--no-ws",
                "--log-level",
                "warning",
            ]
            popens.append(
                subprocess.Popen(
                    argv,
                    cwd=ROOT,
                    env=env,
                    stdout=(logs / f"granian-{index}.log").open("wb"),
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            netlocs.append(f"127.0.0.1:{port}")
        for netloc in netlocs:
            wait_for(functools.partial(_live, netloc), timeout=40)
        yield WebProcesses(netlocs=netlocs, admissions=admissions)
    finally:
        for popen in popens:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGTERM)
        for popen in popens:
            try:
                popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(popen.pid, signal.SIGKILL)


class Client:
    """One thread's keep-alive connections, one per web process."""

    def __init__(self, netlocs: list[str], token: str) -> None:
        self.connections = {n: http.client.HTTPConnection(n, timeout=30) for n in netlocs}
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def call(
        self, netloc: str, method: str, path: str, body: bytes | None = None
    ) -> tuple[int, dict[str, str], dict]:
        conn = self.connections[netloc]
        try:
            conn.request(method, path, body=body, headers=self.headers)
        except (BrokenPipeError, ConnectionResetError):
            # A refusal leaves a POST body unread, so granian closes the connection
            # after answering; like any HTTP client, open a new one.
            conn.close()
            conn.request(method, path, body=body, headers=self.headers)
        response = conn.getresponse()
        payload = response.read()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, json.loads(payload or b"{}")

    def close(self) -> None:
        for conn in self.connections.values():
            conn.close()


def test_rate_limit_admits_at_most_the_limit_per_window_across_4_processes(web):
    web_processes = web.netlocs
    limit, threads, per_thread = 30, 8, 15  # 120 requests, 4 times the limit
    tenant, _key, token, _ = funded_tenant(0)
    services.tenant_limits_set(tenant=tenant, actor=None, limits={"limit_key_per_minute": limit})

    def run(offset: int) -> list[tuple[str, int, dict[str, str], dict]]:
        client = Client(web_processes, token)
        results = []
        try:
            for index in range(per_thread):
                netloc = web_processes[(offset + index) % PROCESSES]
                results.append((netloc, *client.call(netloc, "GET", "/v1/me")))
        finally:
            client.close()
        return results

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = [row for rows in pool.map(run, range(threads)) for row in rows]
    elapsed = time.monotonic() - started
    assert elapsed < 55, "the load must fit in one 60-second window for this count"

    admitted = [row for row in results if row[1] == 200]
    refused = [row for row in results if row[1] == 429]
    print(
        f"\nrate: {len(results)} requests over {PROCESSES} processes in {elapsed:.2f} s: "
        f"{len(admitted)} admitted (limit {limit}/min), {len(refused)} refused; "
        f"admitted per process {[sum(r[0] == n for r in admitted) for n in web_processes]}"
    )
    # Every request fell in the same 60-second window: exactly the limit got through.
    assert len(admitted) == limit
    assert len(refused) == len(results) - limit
    assert {row[0] for row in admitted} == set(web_processes)  # all 4 processes admitted
    for _, _, headers, body in refused:
        assert body["error"]["code"] == "rate_limited"
        assert body["error"]["limit"] == "key"
        assert 1 <= int(headers["retry-after"]) <= 60
        assert headers["ratelimit-remaining"] == "0"
    remaining = sorted(int(headers["ratelimit-remaining"]) for _, _, headers, _ in admitted)
    assert remaining == list(range(limit))  # one shared count, not one per process


def test_in_flight_limit_holds_across_4_processes(web, registered):
    """12 clients keep asking until each had 2 calls admitted: slots pass between them."""
    web_processes = web.netlocs
    web.admissions.write_text("")
    limit, threads, wanted = 3, 12, 2
    tenant, key, token, _ = funded_tenant(100_000_000)
    services.tenant_limits_set(
        tenant=tenant,
        actor=None,
        limits={"limit_key_in_flight": limit, "limit_key_per_minute": 10_000},
    )
    body = json.dumps(SLOW).encode()
    barrier = threading.Barrier(threads)
    deadline = time.monotonic() + 40  # bounded: the test stops by itself

    def run(offset: int) -> list[tuple[int, float, float, dict[str, str], dict]]:
        client = Client(web_processes, token)
        results: list[tuple[int, float, float, dict[str, str], dict]] = []
        attempt = 0
        try:
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=10)
            while sum(r[0] == 200 for r in results) < wanted and time.monotonic() < deadline:
                netloc = web_processes[(offset + attempt) % PROCESSES]
                attempt += 1
                sent = time.monotonic()
                status, headers, payload = client.call(
                    netloc, "POST", "/v2/models/slow/infer", body
                )
                results.append((status, sent, time.monotonic(), headers, payload))
                if status == 429:
                    time.sleep(0.02)
        finally:
            client.close()
        return results

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        per_thread = list(pool.map(run, range(threads)))
    results = [row for rows in per_thread for row in rows]
    elapsed = time.monotonic() - started

    admitted = [row for row in results if row[0] == 200]
    refused = [(headers, payload) for status, _, _, headers, payload in results if status == 429]

    def events_read() -> list[list[str]]:
        return [line.split() for line in web.admissions.read_text().splitlines()]

    # Releases run after each response went out; wait for the last ones.
    wait_for(lambda: sum(e[0] == "admit" for e in events_read()) * 2 == len(events_read()), 5)
    events = events_read()
    # Concurrency as the 4 web processes saw it: +1 when one took a slot, -1 when it
    # gave it back (the probe logs inside the real interval, see admission_probe.py).
    edges = sorted((float(at), 1 if event == "admit" else -1) for event, at, _ in events)
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    print(
        f"\nin flight: {len(results)} requests over {PROCESSES} processes in {elapsed:.2f} s: "
        f"{len(admitted)} admitted, {len(refused)} refused (429), peak concurrently admitted "
        f"{peak} (limit {limit}); other statuses "
        f"{sorted({s for s, *_ in results} - {200, 429})}"
    )
    assert sum(event == "admit" for event, _, _ in events) == len(admitted)
    assert running == 0  # every slot taken was given back
    assert peak <= limit
    assert peak == limit  # the load did reach the limit
    # Every client got its calls in: slots were released and taken by others.
    assert [sum(r[0] == 200 for r in rows) for rows in per_thread] == [wanted] * threads
    assert refused, "12 clients against 3 slots must be refused some of the time"
    for headers, payload in refused:
        assert payload["error"]["code"] == "concurrency_limited"
        assert payload["error"]["limit"] == "key"
        assert headers["retry-after"] == "1"
    # Every slot was given back once its response was sent (a process's last releases
    # go out RELEASE_FLUSH_SECONDS later when no request follows them).
    slots = f"{settings.RATE_LIMIT_KEY_PREFIX}:key:{key.pk}:slots"
    wait_for(lambda: redis_client().zcard(slots) == 0, 2)
