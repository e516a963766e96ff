"""Celery entry points: each loads ids and calls one service.

Queues: ``default`` (health checks, the reaper, webhooks) and one ``site.<slug>``
per site (jobs to run at that site; its workers run next to its Triton servers).
"""

import logging
import os

from celery import shared_task

from marketplace import retention
from marketplace.logging import log_context

from . import health, jobs, webhooks

logger = logging.getLogger(__name__)


@shared_task(name="workers.health_check", acks_late=False, expires=5, ignore_result=True)
def health_check() -> None:
    results = health.servers_check()
    unhealthy = [sid for sid, snap in results.items() if not snap["healthy"]]
    if unhealthy:
        logger.warning("unhealthy servers", extra={"servers": unhealthy})


@shared_task(name="workers.jobs_reap", acks_late=False, expires=10, ignore_result=True)
def jobs_reap() -> None:
    jobs.jobs_reap()


@shared_task(
    name="workers.job_run",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def job_run(job_id: int) -> str:
    """Run one job at this worker's site (``CANGO_WORKER_SITE``); every log line
    written meanwhile carries the job id and the site."""
    worker_site = os.environ.get("CANGO_WORKER_SITE", "")
    with log_context(job_id=job_id, site=worker_site):
        result = jobs.job_run(job_id=job_id, worker_site=worker_site)
        logger.info("job run", extra={"outcome": result.outcome, "result_site": result.site_slug})
    return result.outcome


@shared_task(name="workers.webhook_deliver", acks_late=True, ignore_result=True)
def webhook_deliver(job_id: int, attempt: int) -> None:
    with log_context(job_id=job_id):
        webhooks.deliver(job_id, attempt)


@shared_task(name="workers.jobs_purge_payloads", acks_late=False, expires=600, ignore_result=True)
def jobs_purge_payloads() -> None:
    """Delete old jobs' inputs and outputs (``JOB_PAYLOAD_RETENTION_DAYS``), a bounded run."""
    retention.jobs_payload_purge_scheduled()
