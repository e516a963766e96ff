"""Gauges read from PostgreSQL and Redis at scrape time.

Derived at scrape time rather than counted as they change: the state lives in
the database, written by web processes and by workers on other machines, and a
scrape of any web process must see all of it. Each source is read on its own; one
that fails is logged and reported as ``cango_metrics_source_up{source} 0`` while
the others are still served.
"""

import logging
from collections.abc import Callable, Iterator

import redis
from django.db import DatabaseError
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from config.redis_client import redis_client
from workers import liveness

from . import selectors

logger = logging.getLogger(__name__)

_SOURCE_ERRORS = (DatabaseError, redis.RedisError, selectors.SnapshotUnavailable)


def _jobs() -> Iterator[Metric]:
    family = GaugeMetricFamily(
        "cango_jobs_in_flight",
        "Async jobs queued or running in PostgreSQL, by site and status.",
        labels=["site", "status"],
    )
    for (site, status), count in sorted(selectors.jobs_in_flight_by_site().items()):
        family.add_metric([site, status], count)
    yield family


def _queues() -> Iterator[Metric]:
    """Messages waiting in each site's Celery queue in Redis (``LLEN site.<slug>``)."""
    family = GaugeMetricFamily(
        "cango_queue_messages",
        "Messages waiting in each Celery queue in Redis.",
        labels=["queue"],
    )
    queues = ["default", *(f"site.{slug}" for slug in selectors.site_slugs())]
    pipeline = redis_client().pipeline(transaction=False)
    for queue in queues:
        pipeline.llen(queue)
    for queue, length in zip(queues, pipeline.execute(), strict=True):
        family.add_metric([queue], length)
    yield family


def _credits() -> Iterator[Metric]:
    holds = selectors.credit_holds_open()
    yield GaugeMetricFamily(
        "cango_credit_reserved_micros",
        "Credit held by open reservations (calls and jobs in flight), micro-USD.",
        value=holds.reserved_micros,
    )
    yield GaugeMetricFamily(
        "cango_credit_reservations_open", "Open credit reservations.", value=holds.count
    )


def _meter_backlog() -> Iterator[Metric]:
    backlog = selectors.meter_backlog()
    yield GaugeMetricFamily(
        "cango_meter_backlog_records",
        "Usage records not yet sent to Stripe as meter events.",
        value=backlog.count,
    )
    yield GaugeMetricFamily(
        "cango_meter_backlog_oldest_seconds",
        "Age of the oldest usage record not yet sent to Stripe (0 when none).",
        value=backlog.oldest_age_seconds(),
    )


def _grant_mirrors() -> Iterator[Metric]:
    backlog = selectors.grant_mirror_backlog()
    yield GaugeMetricFamily(
        "cango_grant_mirror_backlog_records",
        "Staff grants and positive adjustments not yet mirrored as Stripe credit grants.",
        value=backlog.count,
    )


def _sites() -> Iterator[Metric]:
    family = GaugeMetricFamily(
        "cango_site_servers_healthy",
        "Healthy Triton servers of each active site, from the last health checks.",
        labels=["site"],
    )
    total = GaugeMetricFamily(
        "cango_site_servers", "Enabled Triton servers of each active site.", labels=["site"]
    )
    workers = GaugeMetricFamily(
        "cango_site_workers_live",
        "1 if a job worker of the active site beat recently (workers.liveness), else 0.",
        labels=["site"],
    )
    live_sites = liveness.live_sites()
    for slug, (healthy, enabled) in sorted(selectors.sites_healthy_servers().items()):
        family.add_metric([slug], healthy)
        total.add_metric([slug], enabled)
        workers.add_metric([slug], int(slug in live_sites))
    yield family
    yield total
    yield workers


SOURCES: dict[str, Callable[[], Iterator[Metric]]] = {
    "jobs": _jobs,
    "queues": _queues,
    "credits": _credits,
    "meter_backlog": _meter_backlog,
    "grant_mirrors": _grant_mirrors,
    "sites": _sites,
}


class OperatorCollector(Collector):
    """Everything ``SOURCES`` reports, each source isolated from the others' failures."""

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "cango_metrics_source_up",
            "1 if the source was read for this scrape, 0 if it failed (see the logs).",
            labels=["source"],
        )
        for name, source in SOURCES.items():
            try:
                families = list(source())
            except _SOURCE_ERRORS as exc:
                logger.warning("metrics source failed: %s", exc, extra={"source": name})
                up.add_metric([name], 0)
                continue
            up.add_metric([name], 1)
            yield from families
        yield up
