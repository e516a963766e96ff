"""The portal's dashboard: credit, recent jobs, site status, usage of the last 30 days."""

import json
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing import ledger
from billing.models import LedgerEntry
from config.redis_client import redis_client
from marketplace.models import CatalogModel, Job, Role
from tests.factories import MembershipFactory
from workers import routing
from workers.models import Site, TritonServer

pytestmark = pytest.mark.django_db


def _client(membership) -> Client:
    client = Client()
    client.force_login(membership.user)
    return client


@pytest.fixture
def echo(db: None) -> CatalogModel:
    return CatalogModel.objects.create(slug="echo", name="Echo", price_micros=10)


@pytest.fixture
def health():
    client = redis_client()
    client.delete(routing.HEALTH_KEY)
    yield client
    client.delete(routing.HEALTH_KEY)


def _jobs(tenant, model: CatalogModel, count: int, prefix: str = "job") -> None:
    start = timezone.now() - timedelta(hours=1)
    made = Job.objects.bulk_create(
        Job(
            tenant=tenant,
            public_id=f"{prefix}_{tenant.pk}_{i}",
            model=model,
            status=Job.Status.SUCCEEDED,
            request_hash="x",
            request={"inputs": []},
            cost_micros=10,
        )
        for i in range(count)
    )
    for i, job in enumerate(made):
        Job.objects.filter(pk=job.pk).update(created_at=start + timedelta(seconds=i))


def _usage(tenant, count: int, *, model: str = "echo", days_ago: int = 0) -> None:
    account = ledger.account_open(tenant_id=tenant.pk)
    entries = LedgerEntry.objects.bulk_create(
        LedgerEntry(
            account=account,
            tenant=tenant,
            kind=LedgerEntry.Kind.USAGE,
            source=f"use:{model}:{days_ago}:{i}",
            amount_micros=-250_000,
            model_slug=model,
            units=2,
        )
        for i in range(count)
    )
    when = timezone.now() - timedelta(days=days_ago)
    LedgerEntry.objects.filter(pk__in=[e.pk for e in entries]).update(created_at=when)


def test_dashboard_shows_credit_jobs_sites_and_usage(world, other_world, echo, health):
    _jobs(world.tenant, echo, 12)
    _jobs(other_world.tenant, echo, 3, prefix="theirs")
    _usage(world.tenant, 2, model="echo")
    _usage(world.tenant, 1, model="classifier", days_ago=3)
    _usage(world.tenant, 5, model="old", days_ago=40)
    _usage(other_world.tenant, 4, model="secret")
    up = Site.objects.create(slug="alpha", name="Alpha Texas", region="us-tx")
    Site.objects.create(slug="gone", name="Gone site", region="us-tx", status="offline")
    healthy, sick = (
        TritonServer.objects.create(site=up, name=n, http_url=f"http://{n}.test:8000")
        for n in ("a", "b")
    )
    state = {"healthy": True, "ready_models": ["echo"], "checked_at": time.time()}
    health.hset(routing.HEALTH_KEY, str(healthy.pk), json.dumps(state))
    health.hset(routing.HEALTH_KEY, str(sick.pk), json.dumps({**state, "healthy": False}))

    response = _client(world.membership).get("/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "$100.00" in html  # the grant, less nothing reserved
    assert response.context["month_to_date"] in ("$0.75", "$0.50")  # day 3 may be last month
    jobs = [row["public_id"] for row in response.context["jobs"]]
    assert jobs == [f"job_{world.tenant.pk}_{i}" for i in range(11, 1, -1)]
    assert "theirs_" not in html
    sites = response.context["sites"]
    assert [(s.name, s.servers, s.healthy_servers) for s in sites] == [("Alpha Texas", 2, 1)]
    assert "1 of 2 servers healthy" in html
    assert "Gone site" not in html
    by_model = {row["group"]: row for row in response.context["usage_by_model"]}
    assert set(by_model) == {"echo", "classifier"}
    assert by_model["echo"]["calls"] == 2
    assert by_model["echo"]["cost"] == "$0.50"
    assert sum(row["calls"] for row in response.context["usage_by_day"]) == 3
    assert response.context["usage_total"] == "$0.75"
    assert "secret" not in html
    assert 'href="/billing/"' in html
    assert 'href="/jobs/"' in html


def test_dashboard_empty_states_say_what_to_do_next(db, health):
    membership = MembershipFactory.create()

    response = _client(membership).get("/")

    html = response.content.decode()
    assert response.status_code == 200
    assert 'href="/keys/">Create an API key</a>' in html
    assert 'href="/billing/#buy">Buy credits</a>' in html
    assert "No async jobs yet." in html
    assert "No calls in the last 30 days." in html
    assert "No site is taking work right now." in html


def test_dashboard_for_the_billing_role_hides_what_it_cannot_open(world, echo):
    ledger_role = MembershipFactory.create(tenant=world.tenant, role=Role.BILLING)
    _jobs(world.tenant, echo, 1)

    response = _client(ledger_role).get("/")

    html = response.content.decode()
    assert response.status_code == 200
    assert 'href="/billing/"' in html
    assert 'href="/jobs/"' not in html
    assert 'href="/models/"' not in html


def test_dashboard_queries_do_not_grow_with_jobs_usage_or_sites(world, echo, health):
    client = _client(world.membership)
    _jobs(world.tenant, echo, 5)
    _usage(world.tenant, 2)
    Site.objects.create(slug="s0", name="S0", region="us-tx")
    client.get("/")
    with CaptureQueriesContext(connection) as small:
        client.get("/")
    _jobs(world.tenant, echo, 50, prefix="more")
    for day in range(20):
        _usage(world.tenant, 5, model=f"m{day % 4}", days_ago=day)
    for i in range(1, 6):
        site = Site.objects.create(slug=f"s{i}", name=f"S{i}", region="us-tx")
        for n in range(3):
            TritonServer.objects.create(site=site, name=f"t{n}", http_url="http://x.test:8000")
    with CaptureQueriesContext(connection) as large:
        response = client.get("/")
    assert len(response.context["jobs"]) == 10
    assert len(small) == len(large) <= 12
