"""Async jobs on the worker side: claim, run at a site, complete exactly once, re-route.

Every state change is a conditional UPDATE on the job row: ``queued → running``
only from queued (or from running whose lease has expired), ``running → final``
only by the attempt that claimed it. So a redelivered message, a second worker or
a late answer after a cancel can never change a job twice.
"""

import json
import logging
import random
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from billing import ledger
from marketplace import pricing
from marketplace.inference import units_used
from marketplace.models import Job
from observability.metrics import job_outcome_count

from . import kserve, routing, triton, webhooks
from .dispatch import NoHealthySite, SitesUnavailable, dispatch
from .failpoints import failpoint

logger = logging.getLogger(__name__)

_JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass(frozen=True, slots=True)
class RunResult:
    """What ``job_run`` did, for the task's log line and for tests."""

    outcome: str
    site_slug: str = ""


def _claim(job_id: int) -> Job | None:
    now = timezone.now()
    lease = now + timedelta(seconds=settings.JOB_LEASE_SECONDS)
    claimable = Q(status=Job.Status.QUEUED) | Q(status=Job.Status.RUNNING, lease_expires_at__lt=now)
    updated = Job.objects.filter(claimable, pk=job_id).update(
        status=Job.Status.RUNNING,
        attempts=F("attempts") + 1,
        started_at=now,
        lease_expires_at=lease,
    )
    if not updated:
        return None
    return Job.objects.select_related("model", "tenant").get(pk=job_id)


def _release_for_retry(job: Job, *, site_slug: str | None, reason: str) -> bool:
    """Give the job back to the queue (another site), or fail it after the last attempt."""
    if job.attempts >= settings.JOB_MAX_ATTEMPTS:
        _finish(job, status=Job.Status.FAILED, error=("sites_unavailable", reason))
        return False
    released = Job.objects.filter(
        pk=job.pk, status=Job.Status.RUNNING, attempts=job.attempts
    ).update(status=Job.Status.QUEUED, lease_expires_at=None)
    if released and site_slug:
        from marketplace.jobs import enqueue  # marketplace imports workers

        job.site_slug = site_slug
        delay = min(30.0, 0.5 * 2 ** (job.attempts - 1)) * random.uniform(0.5, 1.5)  # noqa: S311 - jitter
        transaction.on_commit(lambda: enqueue(job, site_slug, countdown=delay))
    return bool(released)


def _finish(
    job: Job,
    *,
    status: Job.Status,
    output: object = None,
    usage: pricing.Usage | None = None,
    error: tuple[str, str] | None = None,
    site_slug: str = "",
    model_version: str = "",
) -> bool:
    """Move the job from this attempt's running state to ``status``. False if too late."""
    with transaction.atomic():
        updated = Job.objects.filter(
            pk=job.pk, status=Job.Status.RUNNING, attempts=job.attempts
        ).update(
            status=status,
            output=output,
            units=usage.units if usage else None,
            cost_micros=usage.cost_micros if usage else None,
            error_code=error[0] if error else "",
            error_message=error[1][:2000] if error else "",
            site_slug=site_slug or job.site_slug,
            model_version=model_version,
            finished_at=timezone.now(),
            lease_expires_at=None,
        )
        if updated and job.reservation_id is not None:
            # The charge (or the release) commits with the state change, or neither does.
            if status == Job.Status.SUCCEEDED and usage is not None:
                ledger.credit_settle(
                    hold=ledger.Hold(job.reservation_id, job.max_cost_micros),
                    cost_micros=usage.cost_micros,
                    units=usage.units,
                    model_slug=job.model.slug,
                    source=f"job:{job.pk}",
                    site_slug=site_slug or job.site_slug,
                )
            else:
                ledger.credit_release(reservation_id=job.reservation_id)
        if updated and job.webhook_url:
            transaction.on_commit(lambda: webhooks.schedule(job.pk))
    return bool(updated)


def _order_for_site(candidates: list[routing.Candidate], site_slug: str) -> list[routing.Candidate]:
    """Prefer the worker's own site: its workers sit next to its servers."""
    own = [c for c in candidates if c.site_slug == site_slug]
    return own + [c for c in candidates if c.site_slug != site_slug]


def job_run(*, job_id: int, worker_site: str) -> RunResult:
    """Run one job if it can be claimed. Safe to call any number of times for one job."""
    job = _claim(job_id)
    if job is None:
        return RunResult("not_claimed")
    result = _attempt(job, worker_site)
    job_outcome_count(
        model=job.model.slug, site=result.site_slug or worker_site, outcome=result.outcome
    )
    return result


def _attempt(job: Job, worker_site: str) -> RunResult:
    """Run a claimed job once at ``worker_site``, or hand it on."""
    if job.attempts > settings.JOB_MAX_ATTEMPTS:
        _finish(
            job,
            status=Job.Status.FAILED,
            error=("attempts_exhausted", f"Gave up after {settings.JOB_MAX_ATTEMPTS} attempts."),
        )
        return RunResult("failed")
    model = job.model
    candidates = routing.candidates_for(model.slug, region_pin=job.tenant.region_pin)
    if not candidates:
        _release_for_retry(job, site_slug=job.site_slug, reason="no healthy site")
        return RunResult("no_site")
    best = _order_for_site(candidates, worker_site)[0]
    if best.site_slug != worker_site:
        # This site cannot run it now: hand the job to the queue of a site that can.
        _release_for_retry(job, site_slug=best.site_slug, reason=f"{worker_site} unavailable")
        return RunResult("rerouted", best.site_slug)
    body = json.dumps(job.request, separators=(",", ":")).encode()
    try:
        done = dispatch(
            model_slug=model.slug,
            body=body,
            headers=_JSON_HEADERS,
            timeout=settings.INFER_TIMEOUT_SECONDS,
            region_pin=job.tenant.region_pin,
            attempts=1,
            exclude=frozenset(c.server_id for c in candidates if c.site_slug != worker_site),
        )
    except (SitesUnavailable, NoHealthySite) as exc:
        others = [c for c in candidates if c.site_slug != worker_site]
        target = others[0].site_slug if others else worker_site
        _release_for_retry(job, site_slug=target, reason=str(exc))
        return RunResult("retry", target)
    except triton.TritonRejected as exc:
        _finish(job, status=Job.Status.FAILED, error=("inference_rejected", exc.message))
        return RunResult("rejected", worker_site)
    response = done.response.json()
    if len(done.response.body) > settings.JOB_MAX_OUTPUT_BYTES:
        _finish(
            job,
            status=Job.Status.FAILED,
            error=("output_too_large", f"Output over {settings.JOB_MAX_OUTPUT_BYTES} bytes."),
            site_slug=done.candidate.site_slug,
        )
        return RunResult("output_too_large", done.candidate.site_slug)
    if not isinstance(response, dict) or "outputs" not in response:
        _finish(job, status=Job.Status.FAILED, error=("invalid_response", "No outputs."))
        return RunResult("invalid_response", done.candidate.site_slug)
    parsed = kserve.request_parse(body, None)
    elements = kserve.count_units(parsed)
    bound = pricing.max_units(
        model,
        batch_size=parsed.batch_size(model.max_batch_size),
        input_elements=elements,
        timeout_seconds=settings.INFER_TIMEOUT_SECONDS,
    )
    units = min(units_used(model, input_elements=elements, done=done), bound)
    usage = pricing.usage(model, units)
    failpoint("job_before_settle")
    finished = _finish(
        job,
        status=Job.Status.SUCCEEDED,
        output={"model_version": response.get("model_version", ""), "outputs": response["outputs"]},
        usage=usage,
        site_slug=done.candidate.site_slug,
        model_version=done.candidate.triton_model_version or str(response.get("model_version", "")),
    )
    return RunResult("succeeded" if finished else "superseded", done.candidate.site_slug)


def jobs_reap() -> dict[str, int]:
    """Find jobs that lost their message or their worker and put them back in line.

    - running past its lease (the worker died): back to queued, enqueued again;
    - queued and not picked up for ``JOB_REQUEUE_SECONDS``: enqueued again at the
      best site now (its first site's workers may be gone);
    - queued longer than ``JOB_EXPIRE_SECONDS``: expired.
    """
    from marketplace.jobs import enqueue  # marketplace imports workers

    now = timezone.now()
    counts = {"expired": 0, "requeued": 0, "lease_lost": 0}
    for job_id, reservation_id in Job.objects.filter(
        status=Job.Status.QUEUED,
        created_at__lt=now - timedelta(seconds=settings.JOB_EXPIRE_SECONDS),
    ).values_list("pk", "reservation_id")[:500]:
        with transaction.atomic():
            expired = Job.objects.filter(pk=job_id, status=Job.Status.QUEUED).update(
                status=Job.Status.EXPIRED, finished_at=now
            )
            if expired and reservation_id is not None:
                ledger.credit_release(reservation_id=reservation_id)
            counts["expired"] += expired
    counts["lease_lost"] = Job.objects.filter(
        status=Job.Status.RUNNING, lease_expires_at__lt=now
    ).update(status=Job.Status.QUEUED, lease_expires_at=None, enqueued_at=None)
    stale = (
        Job.objects.filter(status=Job.Status.QUEUED)
        .filter(
            Q(enqueued_at__isnull=True)
            | Q(enqueued_at__lt=now - timedelta(seconds=settings.JOB_REQUEUE_SECONDS))
        )
        .select_related("model", "tenant")[:500]
    )
    for job in stale:
        candidates = routing.candidates_for(
            job.model.slug, region_pin=job.tenant.region_pin, for_jobs=True
        )
        if candidates:
            enqueue(job, candidates[0].site_slug)
            counts["requeued"] += 1
    if any(counts.values()):
        logger.info("jobs reaped", extra=counts)
    return counts
