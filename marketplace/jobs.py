"""Async jobs on the marketplace side: submit (idempotently), cancel, list.

A job is stored in PostgreSQL first and its id is put on the chosen site's queue
only after the transaction commits, so a worker never sees a job that does not
exist, and a job whose message is lost is found and enqueued again by
``workers.jobs.jobs_reap``.
"""

import hashlib
import json
import logging
import secrets
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from billing import ledger
from config.redis_client import redis_client
from workers import kserve, routing
from workers.dispatch import NoHealthySite

from . import catalog, pricing
from .exceptions import DomainError, JobConflict, JobNotCancelable
from .models import ApiKey, Job, Tenant

logger = logging.getLogger(__name__)


def _public_id() -> str:
    return "job_" + secrets.token_hex(12)


def _request_hash(slug: str, request: dict[str, Any], webhook_url: str) -> str:
    canonical = json.dumps(
        {"model": slug, "request": request, "webhook_url": webhook_url},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _json_only(request: dict[str, Any]) -> dict[str, Any]:
    """Async jobs carry JSON tensors only; their outputs come back as JSON too."""
    outputs = request.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
        ):
            raise DomainError('outputs must be a list of {"name": …} objects.', field="outputs")
        request = {**request, "outputs": [{"name": o["name"]} for o in outputs]}
    return request


def enqueue(job: Job, site_slug: str, *, countdown: float = 0, mark: bool = True) -> None:
    """Put the job's id on ``site.<slug>``; called after commit.

    ``mark`` records the time and site on the row first (a new job already carries
    them from its INSERT). If the broker is down the job stays queued in PostgreSQL
    and the reaper enqueues it again later, so the error is logged, not raised.
    """
    from workers.tasks import job_run  # tasks import marketplace services

    if mark:
        Job.objects.filter(pk=job.pk).update(enqueued_at=timezone.now(), site_slug=site_slug)
    try:
        job_run.apply_async(args=(job.pk,), queue=f"site.{site_slug}", countdown=countdown)
    except Exception:
        logger.exception("could not enqueue job %s; the reaper will retry", job.public_id)


def job_submit(
    *,
    tenant: Tenant,
    key: ApiKey | None,
    slug: str,
    request: dict[str, Any],
    idempotency_key: str | None,
    webhook_url: str = "",
) -> tuple[Job, bool]:
    """Store a job and enqueue it; return it and whether it is new.

    The same idempotency key with the same body returns the first job; with a
    different body it is a conflict.
    """
    request_hash = _request_hash(slug, request, webhook_url)
    if idempotency_key:
        existing = Job.objects.filter(tenant=tenant, idempotency_key=idempotency_key).first()
        if existing is not None:
            return _replayed(existing, request_hash)
    entry = catalog.model_for_caller(slug, tenant=tenant, key=key)
    model = entry.model
    request = _json_only(request)
    body = json.dumps(request, separators=(",", ":")).encode()
    parsed = kserve.request_parse(body, None)
    batch = kserve.request_validate(
        parsed, entry.inputs, model.max_batch_size, max_elements=settings.INFER_MAX_ELEMENTS
    )
    bound = pricing.max_units(
        model,
        batch_size=batch,
        input_elements=kserve.count_units(parsed),
        timeout_seconds=settings.INFER_TIMEOUT_SECONDS,
    )
    candidates = routing.candidates_for(model.slug, region_pin=tenant.region_pin, for_jobs=True)
    if not candidates:
        raise NoHealthySite(f"No site can serve {model.slug} right now.")
    site_slug = candidates[0].site_slug
    _broker_check()
    try:
        with transaction.atomic():
            job = Job.objects.create(
                tenant=tenant,
                public_id=_public_id(),
                api_key=key,
                model=model,
                idempotency_key=idempotency_key or None,
                request_hash=request_hash,
                request=request,
                webhook_url=webhook_url,
                max_cost_micros=pricing.cost_micros(model, bound),
                site_slug=site_slug,
                enqueued_at=timezone.now(),
            )
            hold = ledger.credit_reserve(
                tenant_id=tenant.pk,
                amount_micros=job.max_cost_micros,
                source=f"job:{job.pk}",
                ttl_seconds=_reservation_ttl(),
                api_key_id=key.pk if key else None,
                key_cap_micros=key.monthly_spend_cap_micros if key else None,
            )
            job.reservation_id = hold.reservation_id
            job.save(update_fields=["reservation_id"])
            transaction.on_commit(lambda: enqueue(job, site_slug, mark=False))
    except IntegrityError:
        # Two submissions with one idempotency key raced; the other one won.
        existing = (
            Job.objects.filter(tenant=tenant, idempotency_key=idempotency_key).first()
            if idempotency_key
            else None
        )
        if existing is None:
            raise
        return _replayed(existing, request_hash)
    return job, True


def _broker_check() -> None:
    """Refuse a new job while Redis (the broker) is down, before anything is written.

    Its errors propagate: the API answers 503 with ``Retry-After`` and the client
    retries, with the same ``Idempotency-Key``, once Redis is back. A job accepted
    now could not start before then anyway. If Redis dies between this check and
    the enqueue, the job is already stored and the reaper enqueues it once Redis
    returns, so it is delayed, never lost.
    """
    redis_client().ping()


def _reservation_ttl() -> float:
    """A job's hold outlives every way the job can still finish: queued until it
    expires, then every attempt's lease."""
    return (
        settings.JOB_EXPIRE_SECONDS
        + settings.JOB_MAX_ATTEMPTS * (settings.JOB_LEASE_SECONDS + settings.INFER_TIMEOUT_SECONDS)
        + 300
    )


def _replayed(existing: Job, request_hash: str) -> tuple[Job, bool]:
    if existing.request_hash != request_hash:
        raise JobConflict(
            "This Idempotency-Key was used with a different request.", field="Idempotency-Key"
        )
    return existing, False


def job_cancel(*, job: Job) -> Job:
    """Cancel a queued or running job. A running job's result, if it comes, is dropped."""
    updated = Job.objects.filter(
        pk=job.pk, status__in=[Job.Status.QUEUED, Job.Status.RUNNING]
    ).update(status=Job.Status.CANCELED, finished_at=timezone.now(), lease_expires_at=None)
    job.refresh_from_db()
    if updated and job.reservation_id is not None:
        ledger.credit_release(reservation_id=job.reservation_id)
    if not updated and job.status != Job.Status.CANCELED:
        raise JobNotCancelable(f"The job is already {job.status}.", field="status")
    if updated and job.webhook_url:
        from workers import webhooks  # marketplace reaches workers to enqueue

        transaction.on_commit(lambda: webhooks.schedule(job.pk))
    return job


def jobs_list(*, tenant: Tenant) -> QuerySet[Job]:
    return Job.objects.filter(tenant=tenant).select_related("model")
