"""Reads for the portal's dashboard, models and jobs pages.

Every function costs a fixed number of queries whatever the amount of data: lists
are limited, job pages are keyset on ``(created_at, id)`` (no OFFSET, no COUNT),
and site health is read once per call from the Redis snapshot that
``workers.health`` writes (the same one routing uses), never by probing a server.
"""

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.db.models import QuerySet

from config import keyset
from workers import routing
from workers.models import Deployment, Site, TritonServer

from .models import Job, Tenant

JOBS_PAGE_SIZE = 25
JOBS_RECENT = 10

#: The columns a list of jobs shows; the request and output documents stay unread.
_JOB_LIST_FIELDS = (
    "id",
    "tenant_id",
    "public_id",
    "status",
    "created_at",
    "finished_at",
    "cost_micros",
    "max_cost_micros",
    "model__slug",
    "model__name",
)


# ---- Site health ---------------------------------------------------------------


def health_snapshot() -> dict[int, routing.ServerHealth]:
    """Each server's last health check (one Redis read; empty if Redis is unreadable)."""
    return routing.snapshot_load().health


def server_healthy(
    health: dict[int, routing.ServerHealth],
    server_id: int,
    *,
    triton_model_name: str | None = None,
    now: float | None = None,
) -> bool:
    """Whether the server passed a recent check (with ``triton_model_name`` ready, if given).

    A check older than routing's ``HEALTH_STALE_SECONDS`` counts as unknown, which
    this page shows as not healthy: nobody has vouched for the server lately.
    """
    state = health.get(server_id)
    if state is None or not state.healthy:
        return False
    if (now if now is not None else time.time()) - state.checked_at >= routing.HEALTH_STALE_SECONDS:
        return False
    return triton_model_name is None or triton_model_name in state.ready_models


@dataclass(frozen=True, slots=True)
class SiteStatus:
    slug: str
    name: str
    region: str
    servers: int
    healthy_servers: int


def sites_status() -> list[SiteStatus]:
    """Active sites with how many of their enabled servers are healthy. Two queries."""
    sites = list(Site.objects.filter(status=Site.Status.ACTIVE).order_by("name", "slug"))
    servers: dict[int, list[int]] = defaultdict(list)
    for server_id, site_id in TritonServer.objects.filter(
        site__status=Site.Status.ACTIVE, enabled=True
    ).values_list("pk", "site_id"):
        servers[site_id].append(server_id)
    health = health_snapshot() if servers else {}
    now = time.time()
    return [
        SiteStatus(
            slug=site.slug,
            name=site.name,
            region=site.region,
            servers=len(servers[site.pk]),
            healthy_servers=sum(server_healthy(health, sid, now=now) for sid in servers[site.pk]),
        )
        for site in sites
    ]


@dataclass(frozen=True, slots=True)
class ModelSite:
    """A site serving a model, and whether it can take the model's work now."""

    slug: str
    name: str
    region: str
    status: str
    status_label: str
    healthy: bool


def model_sites(model_ids: Iterable[int]) -> dict[int, list[ModelSite]]:
    """The sites serving each model, by model id: one query and one Redis read.

    A site is healthy for a model when it is active and one of its enabled servers
    passed its last health check with the model ready.
    """
    ids = list(model_ids)
    if not ids:
        return {}
    deployments = (
        Deployment.objects.filter(model_id__in=ids, enabled=True, server__enabled=True)
        .exclude(server__site__status=Site.Status.OFFLINE)
        .select_related("server__site")
        .order_by("server__site__name", "server__site__slug", "pk")
    )
    rows = list(deployments)
    health = health_snapshot() if rows else {}
    now = time.time()
    found: dict[int, dict[str, ModelSite]] = defaultdict(dict)
    for row in rows:
        site = row.server.site
        healthy = site.status == Site.Status.ACTIVE and server_healthy(
            health, row.server_id, triton_model_name=row.triton_model_name, now=now
        )
        known = found[row.model_id].get(site.slug)
        if known is None or (healthy and not known.healthy):
            found[row.model_id][site.slug] = ModelSite(
                slug=site.slug,
                name=site.name,
                region=site.region,
                status=site.status,
                status_label=site.get_status_display(),
                healthy=healthy,
            )
    return {model_id: list(sites.values()) for model_id, sites in found.items()}


# ---- Jobs ----------------------------------------------------------------------


def _jobs_listed(tenant: Tenant) -> QuerySet[Job]:
    return Job.objects.filter(tenant=tenant).select_related("model").only(*_JOB_LIST_FIELDS)


def jobs_recent(*, tenant: Tenant, limit: int = JOBS_RECENT) -> list[Job]:
    """The tenant's newest jobs, from the ``(tenant, -created_at)`` index."""
    return list(_jobs_listed(tenant).order_by("-created_at", "-id")[:limit])


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of jobs, newest first, with the cursors of its neighbours (None: none)."""

    jobs: list[Job]
    older: str | None
    newer: str | None


def cursor_decode(cursor: str) -> tuple[datetime, int] | None:
    """The (created_at, id) position a jobs-page cursor names, or None if malformed."""
    return keyset.cursor_decode(cursor)


def jobs_page(
    *,
    tenant: Tenant,
    status: str | None = None,
    model_slug: str | None = None,
    before: tuple[datetime, int] | None = None,
    after: tuple[datetime, int] | None = None,
    limit: int = JOBS_PAGE_SIZE,
) -> JobPage:
    """A page of the tenant's jobs, newest first, optionally filtered.

    ``before`` (a page's ``older`` cursor, decoded) gives the jobs just older than
    it, ``after`` (a ``newer`` cursor) those just newer; one query of ``limit + 1``
    rows either way, so a page costs the same with ten jobs or a million.
    """
    jobs = _jobs_listed(tenant)
    if status:
        jobs = jobs.filter(status=status)
    if model_slug:
        jobs = jobs.filter(model__slug=model_slug)
    found = keyset.page(jobs, before=before, after=after, limit=limit)
    return JobPage(jobs=found.rows, older=found.older, newer=found.newer)


def job_get(*, tenant: Tenant, public_id: str) -> Job | None:
    """The tenant's job with this id; None for another tenant's or an unknown one."""
    return Job.objects.filter(tenant=tenant, public_id=public_id).select_related("model").first()
