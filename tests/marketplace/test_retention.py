"""Data retention: old final jobs lose their input and output, and nothing else.

The ledger, usage records and the job's own record (status, cost, units, times,
model, site) are kept; the API and the portal say the payload was deleted.
"""

from datetime import timedelta
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db.models import Sum
from django.test import Client, override_settings
from django.utils import timezone

from billing import ledger
from billing.models import LedgerEntry, UsageRecord
from config.celery import app as celery_app
from marketplace import jobs as job_services
from marketplace import retention
from marketplace.models import CatalogModel, Job
from workers import tasks

pytestmark = pytest.mark.django_db

REQUEST = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
OUTPUT = {"outputs": [{"name": "OUTPUT0", "datatype": "FP32", "shape": [1, 3], "data": [4, 5, 6]}]}
KEPT_FIELDS = (
    "status",
    "cost_micros",
    "units",
    "max_cost_micros",
    "created_at",
    "started_at",
    "finished_at",
    "model_id",
    "site_slug",
    "model_version",
    "error_code",
    "attempts",
)


@pytest.fixture
def model(db: None) -> CatalogModel:
    spec = [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 3]}]
    return CatalogModel.objects.create(
        slug="echo", name="Echo", price_micros=10, inputs=spec, outputs=spec
    )


def _job(world, model: CatalogModel, name: str, *, status: str, finished_days_ago: float | None):
    """A job as a worker leaves it; succeeded ones are charged through the ledger."""
    now = timezone.now()
    finished = None if finished_days_ago is None else now - timedelta(days=finished_days_ago)
    succeeded = status == Job.Status.SUCCEEDED
    job = Job.objects.create(
        tenant=world.tenant,
        public_id=f"job_{name}",
        api_key=world.key,
        model=model,
        status=status,
        request_hash=name,
        request=REQUEST,
        output=OUTPUT if succeeded else None,
        site_slug="site-a",
        model_version="1",
        attempts=1,
        units=3 if succeeded else None,
        cost_micros=30 if succeeded else None,
        max_cost_micros=30,
        error_code="site_error" if status == Job.Status.FAILED else "",
        started_at=finished,
        finished_at=finished,
    )
    if succeeded:
        hold = ledger.credit_reserve(
            tenant_id=world.tenant.pk, amount_micros=30, source=f"job:{job.pk}", ttl_seconds=60
        )
        ledger.credit_settle(
            hold=hold, cost_micros=30, units=3, model_slug=model.slug, source=f"job:{job.pk}"
        )
    return job


@pytest.fixture
def jobs(world, model) -> dict[str, Job]:
    return {
        "old_succeeded": _job(
            world, model, "old_succeeded", status=Job.Status.SUCCEEDED, finished_days_ago=40
        ),
        "old_failed": _job(
            world, model, "old_failed", status=Job.Status.FAILED, finished_days_ago=31
        ),
        "old_canceled": _job(
            world, model, "old_canceled", status=Job.Status.CANCELED, finished_days_ago=35
        ),
        "recent_succeeded": _job(
            world, model, "recent_succeeded", status=Job.Status.SUCCEEDED, finished_days_ago=29
        ),
        # Not final: kept whatever their age (a running job still needs its input).
        "running": _job(world, model, "running", status=Job.Status.RUNNING, finished_days_ago=None),
        "queued": _job(world, model, "queued", status=Job.Status.QUEUED, finished_days_ago=None),
    }


def _money() -> dict[str, object]:
    return {
        "ledger": LedgerEntry.objects.aggregate(s=Sum("amount_micros"), n=Sum("units")),
        "ledger_rows": LedgerEntry.objects.count(),
        "usage": UsageRecord.objects.aggregate(s=Sum("cost_micros"), n=Sum("units")),
        "usage_rows": UsageRecord.objects.count(),
    }


def _snapshot(job: Job) -> dict[str, object]:
    job.refresh_from_db()
    return {name: getattr(job, name) for name in KEPT_FIELDS}


def test_purge_removes_only_old_final_jobs_payloads_and_keeps_the_rest(jobs):
    money = _money()
    assert money["usage_rows"] == 2  # two succeeded jobs were charged
    kept = {name: _snapshot(job) for name, job in jobs.items()}

    result = retention.jobs_payload_purge(older_than_days=30)

    assert result.purged == 3
    assert result.more is False
    for name, job in jobs.items():
        job.refresh_from_db()
        assert _snapshot(job) == kept[name], name
        if name.startswith("old_"):
            assert job.request == {}
            assert job.output is None
            assert job.payload_purged_at is not None
        else:
            assert job.request == REQUEST, name
            assert job.payload_purged_at is None
    jobs["recent_succeeded"].refresh_from_db()
    assert jobs["recent_succeeded"].output == OUTPUT
    assert _money() == money


def test_purge_is_idempotent(jobs):
    assert retention.jobs_payload_purge(older_than_days=30).purged == 3
    first = Job.objects.get(pk=jobs["old_succeeded"].pk).payload_purged_at
    assert retention.jobs_payload_purge(older_than_days=30).purged == 0
    assert Job.objects.get(pk=jobs["old_succeeded"].pk).payload_purged_at == first


def test_purge_runs_in_bounded_batches(jobs):
    result = retention.jobs_payload_purge(older_than_days=30, batch_size=2, max_batches=1)
    assert (result.purged, result.more) == (2, True)
    # The oldest first: the batch follows the finished_at index.
    assert set(
        Job.objects.filter(payload_purged_at__isnull=False).values_list("public_id", flat=True)
    ) == {
        "job_old_succeeded",
        "job_old_canceled",
    }
    rest = retention.jobs_payload_purge(older_than_days=30, batch_size=2)
    assert (rest.purged, rest.more) == (1, False)


def test_purge_batch_is_one_bounded_update_over_the_partial_index(
    jobs, django_assert_max_num_queries
):
    with django_assert_max_num_queries(1) as captured:
        retention.jobs_payload_purge(older_than_days=30, batch_size=10, max_batches=1)
    sql = captured.captured_queries[0]["sql"].upper()
    assert sql.startswith("UPDATE")
    assert "LIMIT 10" in sql


def test_api_shows_a_purged_job_without_its_output(world, jobs):
    retention.jobs_payload_purge(older_than_days=30)
    job = jobs["old_succeeded"]
    response = world.api.get(f"/v1/jobs/{job.public_id}")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "succeeded"
    assert body["output"] is None
    assert body["cost_micros"] == 30
    assert body["units"] == 3
    assert body["payload_purged_at"] is not None
    recent = world.api.get(f"/v1/jobs/{jobs['recent_succeeded'].public_id}").json()
    assert recent["output"] == OUTPUT
    assert recent["payload_purged_at"] is None
    listed = {j["id"]: j for j in world.api.get("/v1/jobs").json()["results"]}
    assert listed[job.public_id]["payload_purged_at"] == body["payload_purged_at"]
    assert listed[job.public_id]["output"] is None


@override_settings(JOB_PAYLOAD_RETENTION_DAYS=30)
def test_portal_job_page_says_the_payload_was_deleted(world, jobs):
    retention.jobs_payload_purge(older_than_days=30)
    client = Client()
    client.force_login(world.owner)
    response = client.get(f"/jobs/{jobs['old_succeeded'].public_id}/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="job-payload-purged"' in html
    assert "kept for 30 days after a job finishes" in html
    assert 'id="job-input"' not in html
    assert "$0.00003" in html  # the cost is still shown
    kept = client.get(f"/jobs/{jobs['recent_succeeded'].public_id}/").content.decode()
    assert 'id="job-input"' in kept
    assert 'id="job-payload-purged"' not in kept


def test_command_dry_run_counts_and_writes_nothing(jobs):
    out = StringIO()
    call_command("jobs_purge_payloads", "--older-than-days", "30", "--dry-run", stdout=out)
    assert "Dry run: 3 job(s)" in out.getvalue()
    assert not Job.objects.filter(payload_purged_at__isnull=False).exists()
    assert Job.objects.get(pk=jobs["old_succeeded"].pk).output == OUTPUT


def test_command_purges_with_its_own_age(jobs):
    out = StringIO()
    call_command("jobs_purge_payloads", "--older-than-days", "33", stdout=out)
    assert "Purged the input and output of 2 job(s)" in out.getvalue()
    purged = set(
        Job.objects.filter(payload_purged_at__isnull=False).values_list("public_id", flat=True)
    )
    assert purged == {"job_old_succeeded", "job_old_canceled"}


@pytest.mark.parametrize("days", ["0", "-3", "ten"])
def test_command_refuses_a_bad_age(jobs, days):
    with pytest.raises(CommandError, match="--older-than-days"):
        call_command("jobs_purge_payloads", "--older-than-days", days)
    assert not Job.objects.filter(payload_purged_at__isnull=False).exists()


@override_settings(JOB_PAYLOAD_RETENTION_DAYS=0)
def test_retention_zero_keeps_payloads_forever(jobs):
    tasks.jobs_purge_payloads()
    out = StringIO()
    call_command("jobs_purge_payloads", stdout=out)
    assert "Retention is off" in out.getvalue()
    assert not Job.objects.filter(payload_purged_at__isnull=False).exists()


@override_settings(
    JOB_PAYLOAD_RETENTION_DAYS=30, JOB_PAYLOAD_PURGE_BATCH=2, JOB_PAYLOAD_PURGE_MAX_BATCHES=1
)
def test_beat_task_purges_one_bounded_run(jobs):
    tasks.jobs_purge_payloads()
    assert Job.objects.filter(payload_purged_at__isnull=False).count() == 2
    tasks.jobs_purge_payloads()
    assert Job.objects.filter(payload_purged_at__isnull=False).count() == 3


def test_beat_schedules_the_purge():
    entry = settings.CELERY_BEAT_SCHEDULE["jobs-purge-payloads"]
    assert entry["task"] == tasks.jobs_purge_payloads.name
    celery_app.loader.import_default_modules()
    assert entry["task"] in celery_app.tasks
    assert entry["options"]["queue"] == "default"


def test_idempotent_resubmission_of_a_purged_job_still_returns_it(world, model):
    """Replays compare the stored hash, never the (deleted) request body."""
    body = {"model": "echo", **REQUEST}
    job = _job(world, model, "replayed", status=Job.Status.SUCCEEDED, finished_days_ago=40)
    Job.objects.filter(pk=job.pk).update(
        idempotency_key="order-1",
        request_hash=job_services._request_hash("echo", REQUEST, ""),
    )
    retention.jobs_payload_purge(older_than_days=30)
    response = world.api.post("/v1/jobs", body, format="json", HTTP_IDEMPOTENCY_KEY="order-1")
    assert response.status_code == 202
    assert response["Idempotent-Replayed"] == "true"
    assert response.json()["id"] == job.public_id
    assert response.json()["payload_purged_at"] is not None
    changed = {"model": "echo", "inputs": [{**REQUEST["inputs"][0], "data": [7, 8, 9]}]}
    other = world.api.post("/v1/jobs", changed, format="json", HTTP_IDEMPOTENCY_KEY="order-1")
    assert other.status_code == 409
