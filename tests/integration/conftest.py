"""Integration fixtures: real tritonserver sites, real Celery worker processes.

Sites and workers start once per session (the sites take ~5 s with the real
embedding model). Tests that use them run with ``transaction=True`` so the worker
processes see committed rows; each test registers the sites into the (flushed)
database again, which takes a few HTTP calls.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from config.redis_client import redis_client
from deploy import triton as triton_launcher
from deploy.triton import SiteProcess
from workers import health, routing, services

ROOT = Path(__file__).resolve().parents[2]
SMALL_MODELS = ["echo", "classifier", "text_upper", "counter_int64", "slow"]
SLOW_DELAY_MS = 300
# Short leases and requeue delays so tests of lost workers finish in seconds.
WORKER_ENV = {
    "JOB_LEASE_SECONDS": "6",
    "JOB_REQUEUE_SECONDS": "4",
    "HEALTH_CHECK_INTERVAL_SECONDS": "1",
    "WORKER_HEARTBEAT_SECONDS": "1",
}


def catalog_defaults() -> dict[str, services.ModelDefaults]:
    return services.defaults_load(str(ROOT / "deploy" / "catalog.json"))


@pytest.fixture(scope="session")
def triton_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("triton")


@pytest.fixture(scope="session")
def sites(triton_workdir: Path) -> Iterator[list[SiteProcess]]:
    """Two sites: both serve the small models, the first also the real MiniLM model."""
    env = triton_launcher.tritonserver_env()
    env["CANGO_SLOW_DELAY_MS"] = str(SLOW_DELAY_MS)
    started = triton_launcher.sites_start(
        2, [[*SMALL_MODELS, "minilm"], SMALL_MODELS], triton_workdir, slug_prefix="it", env=env
    )
    yield started
    triton_launcher.sites_stop(started)


def register(site: SiteProcess, *, region: str = "us-tx", power: str = "30") -> None:
    from decimal import Decimal

    services.server_register(
        site_slug=site.slug,
        http_url=site.http_url,
        grpc_url=site.grpc_url,
        metrics_url=site.metrics_url,
        region=region,
        power_price_usd_per_mwh=Decimal(power),
        defaults=catalog_defaults(),
    )


@pytest.fixture
def registered(sites: list[SiteProcess], transactional_db: None) -> list[SiteProcess]:
    """Both sites in the catalog and in rotation (health checked once)."""
    for index, site in enumerate(sites):
        register(site, power=str(30 + 10 * index))
    routing.reset()
    health.servers_check()
    routing.refresh(force=True)
    return sites


def _database_url() -> str:
    params = connection.settings_dict
    host = params.get("HOST") or "127.0.0.1"
    port = params.get("PORT") or 5432
    user = params.get("USER") or "postgres"
    password = params.get("PASSWORD")
    auth = f"{user}:{password}" if password else user
    if host.startswith("/"):
        return f"postgres://{auth}@/{params['NAME']}?host={host}&port={port}"
    return f"postgres://{auth}@{host}:{port}/{params['NAME']}"


@dataclass
class CeleryProcess:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


class CeleryCluster:
    """Real ``celery worker`` / ``celery beat`` processes against the test database."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: dict[str, CeleryProcess] = {}
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings.test",
            "DATABASE_URL": _database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "PYTHONUNBUFFERED": "1",
            "STRIPE_API_BASE": settings.STRIPE_API_BASE,
            "STRIPE_SECRET_KEY": settings.STRIPE_SECRET_KEY,
            "STRIPE_WEBHOOK_SECRET": settings.STRIPE_WEBHOOK_SECRET,
            **WORKER_ENV,
        }

    def start_worker(
        self,
        name: str,
        queue: str,
        site: str = "",
        concurrency: int = 2,
        extra_env: dict[str, str] | None = None,
    ) -> CeleryProcess:
        log = self.workdir / f"{name}.log"
        argv = [
            str(Path(sys.executable).with_name("celery")),
            "-A",
            "config",
            "worker",
            "-Q",
            queue,
            "-n",
            f"{name}@%h",
            "--concurrency",
            str(concurrency),
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
        ]
        env = {**self.env, "CANGO_WORKER_SITE": site, **(extra_env or {})}
        popen = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        process = CeleryProcess(name, popen, log)
        self.processes[name] = process
        self._wait_ready(process)
        return process

    def start_for_sites(self, sites: list[SiteProcess]) -> None:
        """A worker for ``default``, one per site queue, and beat: what a deployment runs."""
        self.start_worker("default", "default")
        for site in sites:
            self.start_worker(site.slug, f"site.{site.slug}", site=site.slug)
        self.start_beat()

    def start_beat(self) -> CeleryProcess:
        log = self.workdir / "beat.log"
        argv = [
            str(Path(sys.executable).with_name("celery")),
            "-A",
            "config",
            "beat",
            "--loglevel",
            "INFO",
            "--schedule",
            str(self.workdir / "beat-schedule"),
        ]
        popen = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=self.env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        process = CeleryProcess("beat", popen, log)
        self.processes["beat"] = process
        return process

    def _wait_ready(self, process: CeleryProcess, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.popen.poll() is not None:
                raise RuntimeError(f"{process.name} exited:\n{process.log.read_text()[-3000:]}")
            if "ready." in process.log.read_text(errors="replace"):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{process.name} not ready:\n{process.log.read_text()[-3000:]}")

    def stop(self) -> None:
        for process in self.processes.values():
            process.stop()


def _purge_queues(names: list[str]) -> None:
    client = redis_client()
    client.delete(*names, routing.HEALTH_KEY, "unacked", "unacked_index")


STRIPE_KEY = "sk_test_cango_integration"
METRICS_TOKEN = "metrics-token-integration-3f9a1c"
STRIPE_WEBHOOK_SECRET = "whsec_cango_integration"


@pytest.fixture(scope="session")
def stripe_server() -> Iterator[Any]:
    """The project's Stripe-compatible server; this process and its children use it."""
    from billing import stripe_gateway
    from deploy.stripe_server import StripeServer

    server = StripeServer(webhook_secret=STRIPE_WEBHOOK_SECRET).start()
    settings.STRIPE_API_BASE = server.url
    settings.STRIPE_SECRET_KEY = STRIPE_KEY
    settings.STRIPE_WEBHOOK_SECRET = STRIPE_WEBHOOK_SECRET
    stripe_gateway.client.cache_clear()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def celery_cluster(
    sites: list[SiteProcess],
    django_db_setup: None,
    tmp_path_factory: pytest.TempPathFactory,
    stripe_server: Any,
) -> Iterator[CeleryCluster]:
    """One worker per site queue, one for ``default``, and beat (health checks, reaper)."""
    _purge_queues(["default", *(f"site.{s.slug}" for s in sites)])
    cluster = CeleryCluster(tmp_path_factory.mktemp("celery"))
    try:
        cluster.start_for_sites(sites)
        yield cluster
    finally:
        cluster.stop()


def usage_send_all(tenant: Any, timeout: float = 30) -> bool:
    """Send the tenant's usage records as meter events until none is left unsent.

    Beat's own ``billing.usage_send`` runs in the worker every few seconds; a run that
    overlaps it can fail some records (they are retried by the next run, as in
    production), so one run sending nothing does not mean everything was sent.
    """
    from billing import metering
    from billing.models import UsageRecord

    def all_sent() -> bool:
        metering.usage_send()
        return not UsageRecord.objects.filter(tenant=tenant, sent_at__isnull=True).exists()

    return bool(wait_for(all_sent, timeout=timeout, interval=0.5))


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def metrics_totals(site: SiteProcess) -> int:
    """Requests this site has answered or failed, from its Prometheus metrics."""
    result = triton_launcher.http_get(site.metrics_url)
    assert result is not None
    total = 0
    for line in result[1].decode().splitlines():
        if line.startswith(("nv_inference_request_success{", "nv_inference_request_failure{")):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def json_dumps(value: object) -> bytes:
    return json.dumps(value).encode()


def funded_tenant(amount_micros: int):
    """A tenant whose credit is exactly ``amount_micros``, with an API client."""
    from rest_framework.test import APIClient

    from billing import ledger
    from billing.models import LedgerEntry
    from tests.factories import MembershipFactory, api_key_make

    membership = MembershipFactory.create()
    if amount_micros:
        ledger.entry_book(
            tenant_id=membership.tenant.pk,
            kind=LedgerEntry.Kind.GRANT,
            source=f"test-grant-{membership.tenant.pk}",
            amount_micros=amount_micros,
        )
    key, token = api_key_make(membership.tenant)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return membership.tenant, key, token, api


@pytest.fixture(scope="session")
def web_server(
    celery_cluster: CeleryCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The marketplace under granian (as in production) against the test database.

    Used where Django's single-process live server would be the bottleneck (many
    concurrent clients). Its catalog cache is off: the database is flushed between
    tests and a cached model row from one test must not reach the next.
    """
    port = triton_launcher.port_free()
    log = tmp_path_factory.mktemp("web") / "granian.log"
    # Observability: both granian workers write their metrics here (multi-process mode).
    metrics_dir = tmp_path_factory.mktemp("prometheus")
    argv = [
        str(Path(sys.executable).with_name("granian")),
        "--interface",
        "wsgi",
        "config.wsgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "2",
        "--blocking-threads",
        "8",
        "--no-ws",
        "--log-level",
        "warning",
    ]
    env = {
        **celery_cluster.env,
        "CATALOG_CACHE_SECONDS": "0",
        "ALLOWED_HOSTS": "*",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "METRICS_TOKEN": METRICS_TOKEN,
    }
    popen = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    netloc = f"127.0.0.1:{port}"
    try:

        def live() -> bool:
            return triton_launcher.http_get(f"http://{netloc}/v1/health/live") is not None

        wait_for(live, timeout=30)
        yield netloc
    finally:
        os.killpg(popen.pid, signal.SIGTERM)
        popen.wait(timeout=15)


@pytest.fixture
def stripe_webhooks(stripe_server: Any, web_server: str) -> Any:
    """Stripe's webhooks go to the marketplace under granian."""
    stripe_server.configure_webhooks(f"http://{web_server}/billing/stripe/webhook")
    return stripe_server
