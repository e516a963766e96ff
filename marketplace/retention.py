"""Data retention: a finished job's input and output are deleted after a while.

What a tenant sent and got back is theirs and need not outlive its use; what the
job *was* (status, model, site, units, cost, times, error code) is the record that
billing, usage reports and disputes rely on, so it stays, and so do the ledger and
usage records, which never held a payload. Webhook deliveries store no body.

The purge is idempotent and bounded: each batch is one ``UPDATE … WHERE id IN
(SELECT … LIMIT n)`` in its own transaction, over the partial index of finished
jobs that still hold a payload, so it never holds many row locks and a run cut
short leaves nothing half-done.
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from .models import Job

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PurgeResult:
    cutoff: datetime
    purged: int
    #: True when ``max_batches`` stopped the run with jobs left to purge.
    more: bool


def payload_purge_candidates(*, cutoff: datetime) -> QuerySet[Job]:
    """Final jobs that finished before ``cutoff`` and still hold their payload."""
    return Job.objects.filter(
        status__in=Job.FINAL_STATES,
        finished_at__lt=cutoff,
        payload_purged_at__isnull=True,
    )


def jobs_payload_purge(
    *,
    older_than_days: int,
    batch_size: int | None = None,
    max_batches: int | None = None,
    now: datetime | None = None,
) -> PurgeResult:
    """Delete the input and output of final jobs finished more than ``older_than_days`` ago.

    ``request`` becomes ``{}`` (the column stays NOT NULL), ``output`` NULL, and
    ``payload_purged_at`` says when. Nothing else of the job changes.
    """
    if older_than_days < 1:
        raise ValueError("older_than_days must be at least 1.")
    size = batch_size or settings.JOB_PAYLOAD_PURGE_BATCH
    cutoff = (now or timezone.now()) - timedelta(days=older_than_days)
    purged = batches = 0
    while max_batches is None or batches < max_batches:
        batch = payload_purge_candidates(cutoff=cutoff).order_by("finished_at").values("pk")[:size]
        done = Job.objects.filter(pk__in=batch, payload_purged_at__isnull=True).update(
            request={}, output=None, payload_purged_at=timezone.now()
        )
        purged += done
        batches += 1
        if done < size:
            return PurgeResult(cutoff=cutoff, purged=purged, more=False)
    more = payload_purge_candidates(cutoff=cutoff).exists()
    return PurgeResult(cutoff=cutoff, purged=purged, more=more)


def jobs_payload_purge_scheduled() -> PurgeResult | None:
    """The beat task's run: ``JOB_PAYLOAD_RETENTION_DAYS`` (0 keeps payloads forever)."""
    days = settings.JOB_PAYLOAD_RETENTION_DAYS
    if days <= 0:
        return None
    result = jobs_payload_purge(
        older_than_days=days, max_batches=settings.JOB_PAYLOAD_PURGE_MAX_BATCHES
    )
    if result.purged:
        logger.info(
            "job payloads purged",
            extra={
                "purged": result.purged,
                "cutoff": result.cutoff.isoformat(),
                "more": result.more,
            },
        )
    return result
