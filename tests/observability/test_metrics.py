"""GET /metrics: operator only, route patterns not paths, and the operator gauges."""

import json
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from billing import ledger
from billing.models import CreditAccount, Reservation, UsageRecord
from config.redis_client import redis_client
from marketplace import inference
from marketplace.models import CatalogModel, Job, Tenant
from observability import metrics, selectors
from tests.factories import UserFactory, sync_charge
from tests.mfa import staff_force_login
from workers import liveness, routing
from workers.dispatch import NoHealthySite
from workers.models import Deployment, Site, TritonServer

pytestmark = pytest.mark.django_db

TOKEN = "metrics-token-for-tests-0123456789"


@pytest.fixture(autouse=True)
def _metrics_token(settings) -> None:
    settings.METRICS_TOKEN = TOKEN


@pytest.fixture(autouse=True)
def _shared_counters_cleared() -> Iterator[None]:
    client = redis_client()
    client.delete(metrics.JOBS_KEY, metrics.WEBHOOKS_KEY, "site.obs-a")
    yield
    client.delete(metrics.JOBS_KEY, metrics.WEBHOOKS_KEY, "site.obs-a")


def _scrape() -> dict[str, dict[tuple, float]]:
    """Samples by name, then by sorted label items."""
    response = Client().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


# ---- Access ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "who",
    ["anonymous", "tenant owner", "inactive staff", "wrong token", "basic auth", "api key"],
)
def test_anyone_but_the_operator_gets_404(world, who):
    client = Client()
    headers: dict[str, str] = {}
    if who == "tenant owner":
        client.force_login(world.owner)
    elif who == "inactive staff":
        client.force_login(UserFactory.create(is_staff=True, is_active=False))
    elif who == "wrong token":
        headers["Authorization"] = f"Bearer {TOKEN}x"
    elif who == "basic auth":
        headers["Authorization"] = f"Basic {TOKEN}"
    elif who == "api key":
        headers["Authorization"] = f"Bearer {world.token}"

    for method in (client.get, client.post):
        response = method("/metrics", headers=headers)
        assert response.status_code == 404
        assert b"cango_" not in response.content


def test_an_empty_token_setting_disables_bearer_access(settings):
    settings.METRICS_TOKEN = ""

    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 404
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer").status_code == 404


def test_staff_session_and_bearer_token_both_see_the_metrics():
    staff = staff_force_login(Client(), UserFactory.create(is_staff=True))

    assert staff.get("/metrics").status_code == 200
    assert Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200
    assert staff.post("/metrics").status_code == 405


def test_a_staff_session_without_two_factor_is_sent_to_enrol():
    staff = Client()
    staff.force_login(UserFactory.create(is_staff=True))

    response = staff.get("/metrics")

    assert response.status_code == 302
    assert b"cango_" not in response.content


# ---- Request latency ------------------------------------------------------------


def test_latency_is_labelled_by_route_pattern_never_by_the_raw_path(world):
    public_id = f"job_{uuid.uuid4().hex[:12]}"
    for _ in range(2):
        assert world.api.get(f"/v1/jobs/{public_id}").status_code == 404
    world.api.get("/v1/no/such/thing")

    response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    text = response.content.decode()

    assert public_id not in text
    assert "/no/such/thing" not in text
    samples = _scrape()["cango_http_request_duration_seconds_count"]
    route = "v1/jobs/<str:job_id>"
    assert samples[(("method", "GET"), ("route", route), ("status", "4xx"))] >= 2
    assert samples[(("method", "GET"), ("route", "<unmatched>"), ("status", "4xx"))] >= 1


# ---- Inference counts -----------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_failed_sync_call_is_counted_by_model_and_status(world, monkeypatch):
    """Transactional: the hold is written over the ``holds`` connection, which must
    see the committed grant."""
    model = CatalogModel.objects.create(slug="obs-echo", name="echo", price_micros=10)

    def no_site(**kwargs: object) -> None:
        raise NoHealthySite("none")

    monkeypatch.setattr(inference, "dispatch", no_site)
    labels = {"model": "obs-echo", "site": "", "status": "no_site"}
    before = REGISTRY.get_sample_value("cango_sync_inferences_total", labels) or 0

    with pytest.raises(NoHealthySite):
        sync_charge(world.tenant, world.key, model)

    assert REGISTRY.get_sample_value("cango_sync_inferences_total", labels) == before + 1


def test_worker_counts_from_redis_are_served_as_counters():
    metrics.job_outcome_count(model="echo", site="obs-a", outcome="succeeded")
    metrics.job_outcome_count(model="echo", site="obs-a", outcome="succeeded")
    metrics.job_outcome_count(model="echo", site="obs-b", outcome="rejected")
    metrics.webhook_delivery_count(ok=False)

    samples = _scrape()

    runs = samples["cango_job_runs_total"]
    assert runs[(("model", "echo"), ("outcome", "succeeded"), ("site", "obs-a"))] == 2
    assert runs[(("model", "echo"), ("outcome", "rejected"), ("site", "obs-b"))] == 1
    assert samples["cango_webhook_deliveries_total"] == {(("outcome", "failed"),): 1}


# ---- Operator gauges ------------------------------------------------------------


@pytest.fixture
def site_a() -> Iterator[Site]:
    site = Site.objects.create(
        slug="obs-a", name="A", region="us-tx", power_price_usd_per_mwh=Decimal(30)
    )
    healthy = TritonServer.objects.create(site=site, name="t1", http_url="http://10.0.0.5:8000")
    TritonServer.objects.create(site=site, name="t2", http_url="http://10.0.0.6:8000")
    model = CatalogModel.objects.create(slug="obs-echo", name="echo", price_micros=10)
    Deployment.objects.create(model=model, server=healthy, triton_model_name="echo")
    snapshot = {"healthy": True, "ready_models": ["echo"], "checked_at": time.time()}
    redis_client().hset(routing.HEALTH_KEY, str(healthy.pk), json.dumps(snapshot))
    yield site
    redis_client().hdel(routing.HEALTH_KEY, str(healthy.pk))


def _job(tenant: Tenant, status: str, site: str = "obs-a") -> Job:
    return Job.objects.create(
        tenant=tenant,
        public_id=f"job_{uuid.uuid4().hex[:12]}",
        model=CatalogModel.objects.get(slug="obs-echo"),
        request_hash="x",
        request={"inputs": []},
        site_slug=site,
        status=status,
    )


def _usage(tenant: Tenant, source: str, cost: int) -> UsageRecord:
    hold = ledger.credit_reserve(
        tenant_id=tenant.pk, amount_micros=cost, source=source, ttl_seconds=60
    )
    ledger.credit_settle(hold=hold, cost_micros=cost, units=1, model_slug="obs-echo", source=source)
    return UsageRecord.objects.get(ledger_entry__source=source)


def test_operator_gauges_report_queues_holds_backlog_and_sites(world, other_world, site_a):
    for status in ("queued", "queued", "running", "succeeded", "failed"):
        _job(world.tenant, status)
    redis_client().rpush("site.obs-a", "m1", "m2", "m3")
    ledger.credit_reserve(
        tenant_id=world.tenant.pk, amount_micros=700, source="hold:1", ttl_seconds=60
    )
    ledger.credit_reserve(
        tenant_id=other_world.tenant.pk, amount_micros=300, source="hold:2", ttl_seconds=60
    )
    CreditAccount.objects.filter(tenant=world.tenant).update(stripe_customer_id="cus_obs")
    old = _usage(world.tenant, "req:old", 50)
    UsageRecord.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(seconds=600))
    _usage(world.tenant, "req:new", 60)
    sent = _usage(world.tenant, "req:sent", 70)
    UsageRecord.objects.filter(pk=sent.pk).update(sent_at=timezone.now())
    _usage(other_world.tenant, "req:no-customer", 80)  # not sent until a first purchase

    liveness.beat("obs-a", "obs-a@host-1")

    samples = _scrape()

    jobs = samples["cango_jobs_in_flight"]
    assert jobs == {
        (("site", "obs-a"), ("status", "queued")): 2,
        (("site", "obs-a"), ("status", "running")): 1,
    }
    assert samples["cango_queue_messages"][(("queue", "site.obs-a"),)] == 3
    assert samples["cango_credit_reserved_micros"][()] == 1000
    assert samples["cango_credit_reservations_open"][()] == 2
    assert samples["cango_meter_backlog_records"][()] == 2
    assert 590 < samples["cango_meter_backlog_oldest_seconds"][()] < 700
    assert samples["cango_site_servers_healthy"] == {(("site", "obs-a"),): 1}
    assert samples["cango_site_servers"] == {(("site", "obs-a"),): 2}
    assert samples["cango_site_workers_live"] == {(("site", "obs-a"),): 1}
    # The world fixtures' $100 grants; world's tenant has a Stripe customer, so its counts.
    assert samples["cango_grant_mirror_backlog_records"][()] == 1
    assert set(samples["cango_metrics_source_up"].values()) == {1}


def test_a_source_that_fails_is_reported_down_and_the_others_still_served(monkeypatch):
    import redis

    def broken() -> dict[str, tuple[int, int]]:
        raise redis.ConnectionError("redis down")

    monkeypatch.setattr(selectors, "sites_healthy_servers", broken)

    samples = _scrape()

    up = samples["cango_metrics_source_up"]
    assert up[(("source", "sites"),)] == 0
    assert up[(("source", "credits"),)] == 1
    assert "cango_credit_reserved_micros" in samples


# ---- Query plans ----------------------------------------------------------------


def _plan(queryset) -> str:
    """The plan PostgreSQL would choose if a sequential scan were the last resort:
    a query that still scans the table whole has no index to use."""
    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")
    try:
        return queryset.explain()
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SET enable_seqscan = on")


def test_the_scrape_queries_read_only_rows_in_flight_through_an_index():
    in_flight = Job.objects.filter(status__in=[Job.Status.QUEUED, Job.Status.RUNNING])
    holds = Reservation.objects.filter(closed_at__isnull=True)  # as credit_holds_open reads
    unsent = UsageRecord.objects.filter(sent_at__isnull=True).exclude(
        account__stripe_customer_id=""
    )

    for queryset, table in (
        (in_flight.values("site_slug", "status"), "marketplace_job"),
        (holds.values("amount_micros"), "billing_reservation"),
        (unsent.values("created_at"), "billing_usagerecord"),
    ):
        plan = _plan(queryset)
        assert f"Seq Scan on {table}" not in plan, plan
        assert "Index" in plan, plan
