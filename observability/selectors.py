"""Reads behind the operator metrics and alerts.

Each runs at every scrape (every 15-60 s), so each must stay cheap whatever the
size of the history: every query is bounded by a partial or leading index to the
rows still *in flight* (queued or running jobs, open holds, unsent usage), never
the finished ones. ``tests/observability/test_selectors.py`` checks the plans.
"""

import time
from dataclasses import dataclass
from datetime import datetime

import redis
from django.db.models import Count, Min, Sum
from django.utils import timezone

from billing.models import GrantMirror, Reservation, UsageRecord
from config.redis_client import redis_client
from marketplace.models import Job
from workers import routing
from workers.models import Site, TritonServer


def jobs_in_flight_by_site() -> dict[tuple[str, str], int]:
    """``(site, status) -> count`` of queued and running jobs (index on status)."""
    rows = (
        Job.objects.filter(status__in=[Job.Status.QUEUED, Job.Status.RUNNING])
        .values("site_slug", "status")
        .annotate(n=Count("id"))
        .order_by()
    )
    return {(row["site_slug"], row["status"]): row["n"] for row in rows}


@dataclass(frozen=True, slots=True)
class Holds:
    count: int
    reserved_micros: int


def credit_holds_open() -> Holds:
    """Open reservations: the partial index ``reservation_unclosed_expiry`` holds only these."""
    totals = Reservation.objects.filter(closed_at__isnull=True).aggregate(
        n=Count("id"), reserved=Sum("amount_micros")
    )
    return Holds(count=totals["n"], reserved_micros=totals["reserved"] or 0)


@dataclass(frozen=True, slots=True)
class MeterBacklog:
    count: int
    oldest: datetime | None

    def oldest_age_seconds(self, now: datetime | None = None) -> float:
        if self.oldest is None:
            return 0.0
        return max(0.0, ((now or timezone.now()) - self.oldest).total_seconds())


def meter_backlog() -> MeterBacklog:
    """Usage records waiting to go to Stripe (partial index ``usage_unsent``).

    Records of tenants without a Stripe customer are left out: ``usage_send`` does
    not send them (nobody is invoiced before a first purchase), so they are not late.
    """
    totals = (
        UsageRecord.objects.filter(sent_at__isnull=True)
        .exclude(account__stripe_customer_id="")
        .aggregate(n=Count("id"), oldest=Min("created_at"))
    )
    return MeterBacklog(count=totals["n"], oldest=totals["oldest"])


def grant_mirror_backlog() -> MeterBacklog:
    """Free credit not yet mirrored as a Stripe credit grant (partial index
    ``grantmirror_unsent``), for tenants that have a Stripe customer."""
    totals = (
        GrantMirror.objects.filter(stripe_credit_grant_id="")
        .exclude(account__stripe_customer_id="")
        .aggregate(n=Count("id"), oldest=Min("created_at"))
    )
    return MeterBacklog(count=totals["n"], oldest=totals["oldest"])


def unsent_usage_micros(*, start: datetime, end: datetime) -> dict[tuple[int, str], int]:
    """``(tenant id, model) -> micros`` charged in [start, end) but not yet sent to Stripe."""
    rows = (
        UsageRecord.objects.filter(sent_at__isnull=True, created_at__gte=start, created_at__lt=end)
        .values("tenant_id", "model_slug")
        .annotate(total=Sum("cost_micros"))
        .order_by()
    )
    return {(row["tenant_id"], row["model_slug"]): row["total"] for row in rows}


def site_slugs() -> list[str]:
    return list(Site.objects.order_by("slug").values_list("slug", flat=True))


class SnapshotUnavailable(Exception):
    """The health snapshot could not be read (Redis is down)."""


def sites_healthy_servers() -> dict[str, tuple[int, int]]:
    """``site -> (healthy, enabled)`` servers of every active site, from the health
    snapshot the beat task writes to Redis (no probing here). A snapshot older than
    routing's staleness limit counts as unhealthy, as routing treats it."""
    try:
        raw = redis_client().hgetall(routing.HEALTH_KEY)
    except redis.RedisError as exc:
        raise SnapshotUnavailable(str(exc)) from exc
    now = time.time()
    healthy_ids = set()
    for key, value in raw.items():
        snapshot = routing.ServerHealth.from_json(value)
        if snapshot.healthy and now - snapshot.checked_at <= routing.HEALTH_STALE_SECONDS:
            healthy_ids.add(int(key))
    servers = TritonServer.objects.filter(enabled=True, site__status=Site.Status.ACTIVE)
    active = Site.objects.filter(status=Site.Status.ACTIVE).values_list("slug", flat=True)
    counts: dict[str, tuple[int, int]] = dict.fromkeys(active, (0, 0))
    for server_id, slug in servers.values_list("pk", "site__slug"):
        healthy, total = counts.get(slug, (0, 0))
        counts[slug] = (healthy + (server_id in healthy_ids), total + 1)
    return counts
