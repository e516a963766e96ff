"""The portal's Jobs pages: list with filters and keyset pages, one job, cancel."""

from datetime import timedelta
from html import unescape

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing import ledger
from billing.models import CreditAccount
from marketplace.models import CatalogModel, Job, Role, WebhookDelivery
from tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db


def _client(world, role: str = Role.OWNER) -> Client:
    membership = (
        world.membership
        if role == Role.OWNER
        else MembershipFactory.create(tenant=world.tenant, role=role)
    )
    client = Client()
    client.force_login(membership.user)
    return client


@pytest.fixture
def models(db: None) -> dict[str, CatalogModel]:
    spec = [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 3]}]
    return {
        slug: CatalogModel.objects.create(
            slug=slug, name=slug.title(), price_micros=10, inputs=spec, outputs=spec
        )
        for slug in ("echo", "classifier")
    }


def _jobs(
    tenant, model: CatalogModel, count: int, *, status: str = Job.Status.SUCCEEDED
) -> list[Job]:
    """``count`` jobs one second apart, oldest first, made in bulk."""
    start = timezone.now() - timedelta(hours=1)
    made = Job.objects.bulk_create(
        Job(
            tenant=tenant,
            public_id=f"job_{tenant.pk}_{model.slug}_{status}_{i}",
            model=model,
            status=status,
            request_hash="x",
            request={"inputs": [{"name": "INPUT0", "data": [i]}]},
            output={"outputs": [{"name": "OUTPUT0", "data": [i]}]},
            cost_micros=10,
            max_cost_micros=10,
        )
        for i in range(count)
    )
    for i, job in enumerate(made):
        Job.objects.filter(pk=job.pk).update(created_at=start + timedelta(seconds=i))
    return made


def test_jobs_list_newest_first_and_only_the_tenants_own(world, other_world, models):
    _jobs(world.tenant, models["echo"], 3)
    _jobs(other_world.tenant, models["echo"], 2)

    response = _client(world).get("/jobs/")

    assert response.status_code == 200
    ids = [row["public_id"] for row in response.context["jobs"]]
    assert ids == [f"job_{world.tenant.pk}_echo_succeeded_{i}" for i in (2, 1, 0)]
    html = response.content.decode()
    assert f"job_{other_world.tenant.pk}_" not in html
    assert "badge-active" in html
    assert "$0.000010" in html


def test_jobs_list_filters_by_status_and_model(world, models):
    _jobs(world.tenant, models["echo"], 2)
    _jobs(world.tenant, models["classifier"], 2, status=Job.Status.FAILED)
    client = _client(world)

    failed = client.get("/jobs/", {"status": "failed"}).context["jobs"]
    assert {row["status"] for row in failed} == {"failed"}
    assert len(failed) == 2
    echo = client.get("/jobs/", {"model": "echo"}).context["jobs"]
    assert {row["model"] for row in echo} == {"echo"}
    assert len(echo) == 2
    none = client.get("/jobs/", {"model": "echo", "status": "failed"})
    assert none.context["jobs"] == []
    assert "No job matches these filters." in none.content.decode()


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "exploded"}, "status"),
        ({"model": "no-such-model"}, "model"),
        ({"model": "<script>"}, "model"),
        ({"before": "not-a-cursor"}, "before"),
        ({"after": "9" * 30}, "after"),
    ],
)
def test_bad_filters_show_an_error_not_a_500(world, models, params, field):
    _jobs(world.tenant, models["echo"], 2)

    response = _client(world).get("/jobs/", params)

    assert response.status_code == 400
    assert field in response.context["form"].errors
    html = response.content.decode()
    assert "errorlist" in html
    assert "<script>" not in html
    assert response.context["jobs"] == []


def test_jobs_list_pages_by_keyset_and_keeps_filters(world, models):
    _jobs(world.tenant, models["echo"], 30)
    _jobs(world.tenant, models["classifier"], 3)
    client = _client(world)

    first = client.get("/jobs/", {"model": "echo"})
    assert len(first.context["jobs"]) == 25
    assert first.context["newer_url"] is None
    older_url = first.context["older_url"]
    assert older_url.startswith("?model=echo&before=")
    second = client.get("/jobs/" + older_url)
    rows = second.context["jobs"]
    assert [row["public_id"][-2:] for row in rows] == ["_4", "_3", "_2", "_1", "_0"]
    assert second.context["older_url"] is None
    back = client.get("/jobs/" + unescape(second.context["newer_url"]))
    assert [r["public_id"] for r in back.context["jobs"]] == [
        r["public_id"] for r in first.context["jobs"]
    ]


def test_jobs_list_queries_do_not_grow_with_jobs(world, models):
    client = _client(world)
    _jobs(world.tenant, models["echo"], 5)
    client.get("/jobs/")
    with CaptureQueriesContext(connection) as small:
        client.get("/jobs/")
    _jobs(world.tenant, models["classifier"], 50)
    with CaptureQueriesContext(connection) as large:
        response = client.get("/jobs/")
    with CaptureQueriesContext(connection) as paged:
        client.get("/jobs/" + response.context["older_url"])
    assert len(small) == len(large) == len(paged) <= 6
    sql = " ".join(q["sql"] for q in large.captured_queries).upper()
    assert "OFFSET" not in sql
    assert "COUNT(" not in sql
    assert '"REQUEST"' not in sql  # the request documents are not read for a list


def test_job_page_shows_state_previews_and_webhook_deliveries(world, models):
    job = _jobs(world.tenant, models["echo"], 1)[0]
    Job.objects.filter(pk=job.pk).update(
        site_slug="site-2", attempts=2, units=1, webhook_url="https://hooks.example/x"
    )
    WebhookDelivery.objects.create(
        tenant=world.tenant, job=job, attempt=1, url="https://hooks.example/x", status_code=500
    )
    WebhookDelivery.objects.create(
        tenant=world.tenant, job=job, attempt=2, url="https://hooks.example/x", status_code=204
    )

    response = _client(world).get(f"/jobs/{job.public_id}/")

    assert response.status_code == 200
    html = unescape(response.content.decode())
    assert "site-2" in html
    assert "$0.000010" in html
    assert "Succeeded" in html
    assert '"data": [0]' in html  # input and output previews
    assert "HTTP 500" in html
    assert "HTTP 204" in html
    assert 'http-equiv="refresh"' not in html
    assert "Cancel job" not in html


def test_running_job_page_refreshes_and_offers_cancel(world, models):
    job = _jobs(world.tenant, models["echo"], 1, status=Job.Status.RUNNING)[0]

    html = _client(world).get(f"/jobs/{job.public_id}/").content.decode()

    assert '<meta http-equiv="refresh" content="2">' in html
    assert f'action="/jobs/{job.public_id}/cancel/"' in html
    assert "data-confirm=" in html
    assert "up to $0.000010" in html


def test_failed_job_page_shows_its_error(world, models):
    job = _jobs(world.tenant, models["echo"], 1, status=Job.Status.FAILED)[0]
    Job.objects.filter(pk=job.pk).update(
        output=None, error_code="inference_rejected", error_message="bad <input>"
    )

    html = _client(world).get(f"/jobs/{job.public_id}/").content.decode()

    assert "inference_rejected" in html
    assert "bad &lt;input&gt;" in html
    assert "No output." in html


def test_job_page_truncates_long_documents(world, models):
    job = _jobs(world.tenant, models["echo"], 1)[0]
    Job.objects.filter(pk=job.pk).update(output={"outputs": [{"data": ["y" * 40_000]}]})

    response = _client(world).get(f"/jobs/{job.public_id}/")

    assert response.context["output_truncated"]
    assert len(response.context["output_preview"].encode()) <= 20_000


def test_other_tenants_job_is_404_to_read_and_to_cancel(world, other_world, models):
    theirs = _jobs(other_world.tenant, models["echo"], 1, status=Job.Status.QUEUED)[0]
    client = _client(world)

    assert client.get(f"/jobs/{theirs.public_id}/").status_code == 404
    assert client.post(f"/jobs/{theirs.public_id}/cancel/").status_code == 404
    assert Job.objects.get(pk=theirs.pk).status == Job.Status.QUEUED
    assert client.get("/jobs/job_nope/").status_code == 404


def test_cancel_a_queued_job_releases_its_hold(world, models):
    job = _jobs(world.tenant, models["echo"], 1, status=Job.Status.QUEUED)[0]
    hold = ledger.credit_reserve(
        tenant_id=world.tenant.pk, amount_micros=10, source=f"job:{job.pk}", ttl_seconds=600
    )
    Job.objects.filter(pk=job.pk).update(reservation_id=hold.reservation_id)
    client = _client(world, Role.DEVELOPER)

    assert client.get(f"/jobs/{job.public_id}/cancel/").status_code == 405
    response = client.post(f"/jobs/{job.public_id}/cancel/", follow=True)

    assert response.redirect_chain == [(f"/jobs/{job.public_id}/", 302)]
    assert Job.objects.get(pk=job.pk).status == Job.Status.CANCELED
    assert CreditAccount.objects.get(tenant=world.tenant).reserved_micros == 0
    html = response.content.decode()
    assert "Job canceled." in html
    assert "Cancel job" not in html


def test_cancel_a_finished_job_says_why_and_changes_nothing(world, models):
    job = _jobs(world.tenant, models["echo"], 1)[0]

    response = _client(world).post(f"/jobs/{job.public_id}/cancel/", follow=True)

    assert Job.objects.get(pk=job.pk).status == Job.Status.SUCCEEDED
    assert "The job is already succeeded." in response.content.decode()


def test_billing_role_may_not_cancel(world, models):
    job = _jobs(world.tenant, models["echo"], 1, status=Job.Status.QUEUED)[0]

    response = _client(world, Role.BILLING).post(f"/jobs/{job.public_id}/cancel/")

    assert response.status_code == 403
    assert Job.objects.get(pk=job.pk).status == Job.Status.QUEUED
