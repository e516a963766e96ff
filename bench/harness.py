"""Shared pieces of the benchmarks: a server under test and a keep-alive load generator.

The load generator uses ``http.client`` with one persistent connection per client,
so what is measured is the server, not connection set-up. Concurrent clients run
in separate processes so the generator's own GIL does not cap the figures.
"""

from __future__ import annotations

import http.client
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent


# BENCH_DATABASE lets a branch with new migrations use its own database.
BENCH_DB = os.environ.get("BENCH_DATABASE", "cango_bench")


def database_prepare() -> dict[str, str]:
    """Create and migrate the bench database, set up Django here; return the child env.

    Uses the PostgreSQL of ``DATABASE_URL`` (default: the local server) with its own
    database, so benchmarks never touch the demo's or the tests' data.
    """
    import django
    import psycopg

    database_url = urlsplit(
        os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/cango")
    )
    # Keep the query (``?host=/var/run/postgresql`` reaches the server over its socket).
    with psycopg.connect(database_url._replace(path="/postgres").geturl(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [BENCH_DB]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{BENCH_DB}"')
    os.environ["DATABASE_URL"] = database_url._replace(path=f"/{BENCH_DB}").geturl()
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings.dev"
    os.environ["DJANGO_DEBUG"] = "false"
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/2")
    os.environ["LOG_LEVEL"] = "WARNING"
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return dict(os.environ)


# Limits far above anything a benchmark sends: the limiter stays on the measured path
# (one Redis call per request) but never refuses.
BENCH_LIMITS = {
    "limit_key_per_minute": 10**9,
    "limit_key_in_flight": 10**6,
    "limit_tenant_per_minute": 10**9,
    "limit_tenant_in_flight": 10**6,
}


def limits_lift(tenant: object) -> None:
    """Give a benchmark tenant ``BENCH_LIMITS`` (the default tiers would answer 429)."""
    from marketplace import services
    from marketplace.models import Tenant

    assert isinstance(tenant, Tenant)
    services.tenant_limits_set(tenant=tenant, actor=None, limits=dict(BENCH_LIMITS))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None = None


def _send(conn: http.client.HTTPConnection, req: Request) -> int:
    conn.request(req.method, req.path, body=req.body, headers=req.headers)
    response = conn.getresponse()
    response.read()
    return response.status


def sequential(port: int, req: Request, count: int, warmup: int = 200) -> list[float]:
    """Latencies in milliseconds of ``count`` requests sent one after another."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(warmup):
        _send(conn, req)
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        status = _send(conn, req)
        samples.append((time.perf_counter() - start) * 1000)
        if status >= 400:
            raise RuntimeError(f"{req.path} answered {status}")
    conn.close()
    return samples


def _client_loop(port: int, req: Request, seconds: float, out: multiprocessing.Queue) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    _send(conn, req)
    done = errors = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if _send(conn, req) >= 400:
            errors += 1
        done += 1
    out.put((done, errors))


def throughput(port: int, req: Request, clients: int, seconds: float) -> float:
    """Requests per second with ``clients`` concurrent keep-alive clients."""
    queue: multiprocessing.Queue = multiprocessing.Queue()
    procs = [
        multiprocessing.Process(target=_client_loop, args=(port, req, seconds, queue))
        for _ in range(clients)
    ]
    start = time.perf_counter()
    for proc in procs:
        proc.start()
    results = [queue.get() for _ in procs]
    elapsed = time.perf_counter() - start
    for proc in procs:
        proc.join()
    errors = sum(e for _, e in results)
    if errors:
        raise RuntimeError(f"{errors} error answers under load on {req.path}")
    return sum(d for d, _ in results) / elapsed


def percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))
    return ordered[index]


def median(values: list[float]) -> float:
    return statistics.median(values)


@contextmanager
def granian(
    env: dict[str, str],
    *,
    workers: int = 1,
    threads: int = 4,
    app: str = "config.wsgi:application",
) -> Iterator[int]:
    """Run the project's WSGI app under granian, as the run command does; yield its port."""
    port = free_port()
    cmd = [
        str(Path(sys.executable).with_name("granian")),
        "--interface",
        "wsgi",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--blocking-threads",
        str(threads),
        "--no-ws",
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                conn.request("GET", "/v1/health/live")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("granian did not start")
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
