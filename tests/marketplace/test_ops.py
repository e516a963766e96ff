"""The operator console: staff only (404 for anyone else), audited actions, honest reports."""

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.test import Client

from billing import ledger
from billing.models import LedgerEntry, UsageRecord
from config.redis_client import redis_client
from marketplace import ops_selectors
from marketplace.models import AuditEvent, CatalogModel, Job, Tenant, WebhookDelivery
from tests.factories import MembershipFactory, TenantFactory, UserFactory
from tests.mfa import staff_force_login
from workers import liveness, routing
from workers.models import Deployment, Site, TritonServer

pytestmark = pytest.mark.django_db

GET_URLS = [
    "/ops/",
    "/ops/revenue/",
    "/ops/tenants/",
    "/ops/failures/",
    "/ops/tenants/{slug}/",
    "/ops/audit/",
]
POST_URLS = [
    "/ops/sites/site-a/status/",
    "/ops/tenants/{slug}/suspend/",
    "/ops/tenants/{slug}/reactivate/",
    "/ops/tenants/{slug}/credit/",
]


@pytest.fixture
def staff() -> Client:
    return staff_force_login(Client(), UserFactory.create(is_staff=True))


@pytest.fixture
def site() -> Iterator[Site]:
    """A site with one server serving two models, and a health snapshot in Redis."""
    site = Site.objects.create(
        slug="site-a",
        name="Site A",
        region="us-tx",
        power_price_usd_per_mwh=Decimal("31.50"),
        gpu_capacity=8,
    )
    server = TritonServer.objects.create(
        site=site, name="triton-1", http_url="http://10.0.0.5:8000"
    )
    for slug, unit in (("echo", "request"), ("gpu-gen", "gpu_second")):
        model = CatalogModel.objects.create(
            slug=slug, name=slug, price_micros=10, pricing_unit=unit
        )
        Deployment.objects.create(
            model=model, server=server, triton_model_name=slug, max_concurrency=4
        )
    snapshot = {
        "healthy": True,
        "ready_models": ["echo"],
        "queue_depth": {"echo": 3, "gpu-gen": 1},
        "latency_ms": 12.5,
        "checked_at": time.time() - 4,
    }
    client = redis_client()
    client.hset(routing.HEALTH_KEY, str(server.pk), json.dumps(snapshot))
    yield site
    client.hdel(routing.HEALTH_KEY, str(server.pk))


def _charge(
    tenant: Tenant, *, source: str, model: str, cost: int, units: int, site: str = ""
) -> None:
    """A usage charge made the way calls are charged: a hold, then its settlement."""
    hold = ledger.credit_reserve(
        tenant_id=tenant.pk, amount_micros=cost, source=source, ttl_seconds=60
    )
    ledger.credit_settle(
        hold=hold, cost_micros=cost, units=units, model_slug=model, source=source, site_slug=site
    )


def _job(tenant: Tenant, model: str, *, site: str = "site-a", **fields: object) -> Job:
    return Job.objects.create(
        tenant=tenant,
        public_id=f"job_{uuid.uuid4().hex[:12]}",
        model=CatalogModel.objects.get(slug=model),
        request_hash="x",
        request={"inputs": []},
        site_slug=site,
        **fields,
    )


# ---- Access --------------------------------------------------------------------


@pytest.mark.parametrize("who", ["anonymous", "owner", "inactive staff"])
def test_everyone_but_staff_gets_404_on_every_ops_url(world, site, who):
    client = Client(enforce_csrf_checks=True)
    if who == "owner":
        client.force_login(world.owner)
    elif who == "inactive staff":
        client.force_login(UserFactory.create(is_staff=True, is_active=False))
    for url in GET_URLS:
        response = client.get(url.format(slug=world.tenant.slug))
        assert response.status_code == 404, url
        assert "Operator console" not in response.content.decode()
    for url in POST_URLS:
        # No CSRF token either: still 404, never the 403 that would reveal the page.
        response = client.post(url.format(slug=world.tenant.slug), {"reason": "x"})
        assert response.status_code == 404, url
        response = client.get(url.format(slug=world.tenant.slug))
        assert response.status_code == 404, url
    site.refresh_from_db()
    world.tenant.refresh_from_db()
    assert site.status == Site.Status.ACTIVE
    assert world.tenant.status == Tenant.Status.ACTIVE
    assert not LedgerEntry.objects.filter(kind=LedgerEntry.Kind.ADJUSTMENT).exists()


def test_staff_posts_still_need_a_csrf_token(world, site):
    client = staff_force_login(Client(enforce_csrf_checks=True), UserFactory.create(is_staff=True))
    response = client.post("/ops/sites/site-a/status/", {"status": "draining", "reason": "x"})
    assert response.status_code == 403
    site.refresh_from_db()
    assert site.status == Site.Status.ACTIVE


def test_staff_without_a_tenant_sees_every_page(world, site, staff):
    for url in GET_URLS:
        response = staff.get(url.format(slug=world.tenant.slug))
        assert response.status_code == 200, url
        text = response.content.decode()
        assert 'aria-label="Operator console"' in text
        assert 'aria-current="page"' in text


def test_post_only_urls_answer_405_to_staff_gets(world, staff):
    assert staff.get(f"/ops/tenants/{world.tenant.slug}/suspend/").status_code == 405


# ---- Sites ---------------------------------------------------------------------


def test_sites_page_shows_live_health_and_load(site, staff):
    text = staff.get("/ops/").content.decode()
    assert "Site A" in text
    assert "us-tx" in text
    assert "$31.50/MWh" in text
    assert "Healthy" in text
    assert "12.5 ms" in text
    # echo: 3 queued of 4; gpu-gen: 1 of 4 → 4 / 8 = 50 %.
    assert "3 / 4" in text
    assert "50%" in text
    assert "not ready" in text  # gpu-gen is not in the snapshot's ready models
    assert " s ago" in text
    assert 'data-confirm="Drain site site-a?' in text


def test_sites_overview_marks_a_server_without_health_as_unknown(site):
    redis_client().delete(routing.HEALTH_KEY)
    (row,) = ops_selectors.sites_overview(routing.Snapshot(health={}, live_sites=frozenset()))
    (server,) = row.servers
    assert not server.checked
    assert server.stale
    assert server.utilisation_percent == 0


def test_sites_page_shows_whether_the_sites_job_workers_beat(site, staff):
    assert "none heard from" in staff.get("/ops/").content.decode()
    liveness.beat("site-a", "site-a@host-1")
    text = staff.get("/ops/").content.decode()
    assert "<dt>Job workers</dt><dd>live</dd>" in text
    liveness.forget("site-a", "site-a@host-1")
    assert "none heard from" in staff.get("/ops/").content.decode()


def test_drain_sets_the_status_and_audits(site, staff):
    response = staff.post(
        "/ops/sites/site-a/status/", {"status": "draining", "reason": "grid curtailment"}
    )
    assert response.status_code == 302
    site.refresh_from_db()
    assert site.status == Site.Status.DRAINING
    event = AuditEvent.objects.get(action="site.status_changed")
    assert event.reason == "grid curtailment"
    assert event.metadata == {"site": "site-a", "from": "active", "to": "draining"}
    assert event.actor is not None
    assert event.actor.is_staff


def test_site_status_needs_a_reason_and_a_known_status(site, staff):
    response = staff.post("/ops/sites/site-a/status/", {"status": "offline", "reason": "  "})
    assert response.status_code == 400
    assert 'id="id_site-a_offline_reason_error"' in response.content.decode()
    response = staff.post("/ops/sites/site-a/status/", {"status": "melted", "reason": "x"})
    assert response.status_code == 400
    assert "Choose active, draining or offline." in response.content.decode()
    site.refresh_from_db()
    assert site.status == Site.Status.ACTIVE
    assert not AuditEvent.objects.filter(action="site.status_changed").exists()
    assert staff.post("/ops/sites/nowhere/status/", {"status": "offline"}).status_code == 404


# ---- Tenants -------------------------------------------------------------------


def test_suspend_then_reactivate_audits_and_switches_the_keys(world, staff):
    assert world.api.get("/v1/me").status_code == 200
    url = f"/ops/tenants/{world.tenant.slug}/"
    assert staff.post(url + "suspend/", {"reason": ""}).status_code == 400
    assert world.api.get("/v1/me").status_code == 200

    assert staff.post(url + "suspend/", {"reason": "chargeback"}).status_code == 302
    event = AuditEvent.objects.get(tenant=world.tenant, action="tenant.suspended")
    assert event.reason == "chargeback"
    assert event.actor is not None
    assert event.actor.is_staff
    assert world.api.get("/v1/me").status_code == 403
    assert "Suspended" in staff.get(url).content.decode()

    assert staff.post(url + "reactivate/", {"reason": "resolved"}).status_code == 302
    assert AuditEvent.objects.get(tenant=world.tenant, action="tenant.reactivated").reason == (
        "resolved"
    )
    assert world.api.get("/v1/me").status_code == 200


def test_credit_adjustment_books_once_on_double_submit(world, staff):
    url = f"/ops/tenants/{world.tenant.slug}/credit/"
    page = staff.get(f"/ops/tenants/{world.tenant.slug}/").content.decode()
    assert 'type="hidden" name="token"' in page
    data = {"amount_dollars": "-12.345678", "reason": "goodwill reversal", "token": uuid.uuid4()}
    before = ledger.account_open(tenant_id=world.tenant.pk).balance_micros

    assert staff.post(url, data).status_code == 302
    assert staff.post(url, data).status_code == 302

    (entry,) = LedgerEntry.objects.filter(tenant=world.tenant, kind=LedgerEntry.Kind.ADJUSTMENT)
    assert entry.amount_micros == -12_345_678
    assert entry.source == f"staff:{data['token']}"
    assert entry.reason == "goodwill reversal"
    assert entry.created_by is not None
    assert entry.created_by.is_staff
    (event,) = AuditEvent.objects.filter(tenant=world.tenant, action="credit.adjusted")
    assert event.target_type == "CreditAccount"
    assert event.metadata["amount_micros"] == -12_345_678
    assert event.reason == "goodwill reversal"
    account = ledger.account_open(tenant_id=world.tenant.pk)
    assert account.balance_micros == before - 12_345_678
    assert ledger.account_check(account=account) == []


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"amount_dollars": "0", "reason": "x"}, "amount_dollars"),
        ({"amount_dollars": "1.0000001", "reason": "x"}, "amount_dollars"),
        ({"amount_dollars": "5", "reason": "   "}, "reason"),
        ({"amount_dollars": "abc", "reason": "x"}, "amount_dollars"),
    ],
)
def test_credit_adjustment_rejects_bad_input(world, staff, data, field):
    response = staff.post(
        f"/ops/tenants/{world.tenant.slug}/credit/", {**data, "token": uuid.uuid4()}
    )
    assert response.status_code == 400
    assert f'id="id_credit_{field}_error"' in response.content.decode()
    assert not LedgerEntry.objects.filter(kind=LedgerEntry.Kind.ADJUSTMENT).exists()


def test_tenant_page_shows_key_prefixes_never_hashes(world, staff):
    text = staff.get(f"/ops/tenants/{world.tenant.slug}/").content.decode()
    assert world.key.display_prefix in text
    assert world.key.secret_hash not in text
    assert world.token not in text
    assert world.owner.email in text
    assert "test-grant" in text  # the ledger's recent entries
    assert "tenant.created" in text or "api_key.created" in text  # recent audit events


def test_unknown_tenant_is_404_for_staff(staff):
    assert staff.get("/ops/tenants/nobody/").status_code == 404


def test_tenant_list_search_filter_and_figures(world, other_world, staff):
    _charge(world.tenant, source="req:a", model="m", cost=2_500_000, units=1)
    MembershipFactory.create(tenant=world.tenant)
    other_world.tenant.status = Tenant.Status.SUSPENDED
    other_world.tenant.save()

    text = staff.get("/ops/tenants/", {"q": world.tenant.slug}).content.decode()
    assert world.tenant.name in text
    assert other_world.tenant.name not in text
    assert "$2.50" in text  # this month's usage
    assert "$97.50" in text  # balance after the charge
    assert ">2</td>" in text  # members

    text = staff.get("/ops/tenants/", {"status": "suspended"}).content.decode()
    assert other_world.tenant.name in text
    assert world.tenant.name not in text
    assert staff.get("/ops/tenants/", {"status": "bogus"}).status_code == 400


def test_tenant_list_queries_do_not_grow_with_tenants(staff, django_assert_max_num_queries):
    def tenants(n: int) -> None:
        for _ in range(n):
            tenant = MembershipFactory.create().tenant
            ledger.entry_book(
                tenant_id=tenant.pk, kind=LedgerEntry.Kind.GRANT, source="g", amount_micros=9
            )
            _charge(tenant, source="req:x", model="m", cost=1, units=1)

    tenants(2)
    with django_assert_max_num_queries(6):
        assert staff.get("/ops/tenants/").status_code == 200
    tenants(60)
    with django_assert_max_num_queries(6):
        response = staff.get("/ops/tenants/")
    assert response.status_code == 200
    assert "Page 1 of 2" in response.content.decode()


# ---- Revenue -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"start": "2025-03-10", "end": "2025-03-10"}, "Choose a day after the first day."),
        ({"start": "2024-01-01", "end": "2025-01-02"}, "Report at most 366 days at a time."),
        ({"start": "yesterday", "end": "2025-01-02"}, "Enter a valid date."),
        ({"end": "2025-01-02"}, "This field is required."),
    ],
)
def test_revenue_period_is_validated_next_to_the_field(staff, params, message):
    response = staff.get("/ops/revenue/", params)
    assert response.status_code == 400
    text = response.content.decode()
    assert message in text
    field = "start" if "start" not in params or params["start"] == "yesterday" else "end"
    assert f'id="id_{field}_error"' in text


def test_revenue_per_model_and_site_with_gpu_seconds(world, other_world, site, staff):
    echo_job = _job(world.tenant, "echo")
    gpu_job = _job(other_world.tenant, "gpu-gen", site="site-b")
    _charge(world.tenant, source=f"job:{echo_job.pk}", model="echo", cost=1_000_000, units=5)
    _charge(
        other_world.tenant,
        source=f"job:{gpu_job.pk}",
        model="gpu-gen",
        cost=3_000_000,
        units=2_500_000,
    )
    _charge(world.tenant, source="req:abc", model="echo", cost=500_000, units=2)  # no site:
    # booked before sites were recorded; a job's such entry falls back to the job's site.
    _charge(world.tenant, source="req:new", model="echo", cost=200_000, units=1, site="site-b")
    ledger.entry_book(
        tenant_id=world.tenant.pk,
        kind=LedgerEntry.Kind.ADJUSTMENT,
        source="staff:t",
        amount_micros=-7_000_000,
    )

    now = datetime.now(tz=UTC)
    report = ops_selectors.revenue_summary(datetime(now.year, 1, 1, tzinfo=UTC), now)
    by_model = {row.group: row for row in report.by_model}
    by_site = {row.group: row for row in report.by_site}
    assert report.total_micros == 4_700_000  # adjustments are not revenue
    assert by_model["echo"].cost_micros == 1_700_000
    assert by_model["echo"].calls == 3
    assert by_model["echo"].gpu_micro_seconds is None
    assert by_model["gpu-gen"].gpu_seconds == 2.5
    assert by_site["site-a"].cost_micros == 1_000_000
    assert by_site["site-b"].cost_micros == 3_200_000  # a job's and a sync call's
    assert by_site["site-b"].gpu_micro_seconds == 2_500_000
    assert by_site[""].cost_micros == 500_000  # the older sync call: no site recorded
    assert sum(row.cost_micros for row in report.by_site) == report.total_micros

    text = staff.get("/ops/revenue/").content.decode()
    assert "$4.70" in text
    assert "Not attributed (older sync calls)" in text
    assert "2.500" in text
    assert "not measured" in text


def test_revenue_period_is_half_open(world, site):
    _charge(world.tenant, source="req:edge", model="echo", cost=1_000_000, units=1)
    entry = LedgerEntry.objects.get(source="req:edge")
    start = entry.created_at.replace(microsecond=0)
    assert ops_selectors.revenue_summary(start, entry.created_at).total_micros == 0
    assert (
        ops_selectors.revenue_summary(
            entry.created_at, start.replace(year=start.year + 1)
        ).total_micros
        == 1_000_000
    )


# ---- Failures ------------------------------------------------------------------


def test_failures_lists_jobs_webhooks_and_meter_errors_across_tenants(
    world, other_world, site, staff
):
    failed = _job(
        world.tenant,
        "echo",
        status=Job.Status.FAILED,
        error_code="triton_error",
        error_message="model crashed",
    )
    _job(other_world.tenant, "echo", status=Job.Status.SUCCEEDED)
    WebhookDelivery.objects.create(
        tenant=world.tenant,
        job=failed,
        attempt=1,
        url="https://hook.example/x",
        status_code=500,
    )
    WebhookDelivery.objects.create(
        tenant=world.tenant,
        job=failed,
        attempt=2,
        url="https://hook.example/ok",
        status_code=204,
    )
    _charge(other_world.tenant, source="req:m", model="echo", cost=10, units=1)
    UsageRecord.objects.filter(tenant=other_world.tenant).update(
        attempts=3, last_error="stripe: meter not found"
    )

    report = ops_selectors.failures_recent()
    assert [job.pk for job in report.jobs] == [failed.pk]
    assert report.jobs_total == 1
    assert [d.url for d in report.webhooks] == ["https://hook.example/x"]
    assert report.meter_total == 1

    text = staff.get("/ops/failures/").content.decode()
    assert "model crashed" in text
    assert "triton_error" in text
    assert "HTTP 500" in text
    assert "hook.example/ok" not in text
    assert "stripe: meter not found" in text
    assert world.tenant.name in text
    assert other_world.tenant.name in text


def test_a_staff_member_of_a_suspended_tenant_still_gets_the_console(staff):
    tenant = TenantFactory.create(status=Tenant.Status.SUSPENDED)
    user = UserFactory.create(is_staff=True)
    MembershipFactory.create(tenant=tenant, user=user)
    client = staff_force_login(Client(), user)
    assert client.get("/ops/").status_code == 200
