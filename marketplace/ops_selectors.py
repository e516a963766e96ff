"""Reads for the operator console: sites and their health, revenue, tenants, failures.

These are staff reads across every tenant, so unlike ``selectors`` they take no
``tenant`` first; nothing here may be reached from a tenant-facing page. Each
function is a fixed number of queries whatever the number of rows it reports on.
Periods are half-open ``[start, end)`` in UTC.
"""

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.core.paginator import Page, Paginator
from django.db.models import (
    BigIntegerField,
    Case,
    CharField,
    Count,
    F,
    IntegerField,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Cast, Coalesce, Substr

from billing import selectors as billing_selectors
from billing.models import LedgerEntry, UsageRecord
from config import keyset
from workers import routing
from workers.models import Deployment, Site, TritonServer

from .models import ApiKey, AuditEvent, CatalogModel, Job, Membership, Tenant, WebhookDelivery

TENANT_PAGE_SIZE = 50
FAILURES_LIMIT = 50
TENANT_LEDGER_LIMIT = 20
TENANT_AUDIT_LIMIT = 20

#: Ledger sources of async jobs are ``job:<Job.pk>``; the pattern also keeps the
#: cast to an integer away from any other source (``req:<uuid>``, ``staff:<uuid>``).
_JOB_SOURCE_RE = r"^job:[0-9]{1,18}$"
_JOB_SOURCE_PREFIX_LEN = len("job:")


# ---- Sites ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelLoad:
    """One deployment on a server as the last health check saw it."""

    name: str
    ready: bool
    queue_depth: int
    max_concurrency: int
    enabled: bool


@dataclass(frozen=True, slots=True)
class ServerRow:
    """A Triton server with its last health check (``checked`` is False if there is none)."""

    server: TritonServer
    checked: bool
    healthy: bool
    stale: bool
    checked_seconds_ago: int | None
    latency_ms: float
    models: list[ModelLoad]
    queue_depth: int
    capacity: int

    @property
    def utilisation_percent(self) -> int | None:
        return _percent(self.queue_depth, self.capacity)


@dataclass(frozen=True, slots=True)
class SiteRow:
    site: Site
    servers: list[ServerRow]
    workers_live: bool = False

    @property
    def queue_depth(self) -> int:
        return sum(row.queue_depth for row in self.servers)

    @property
    def capacity(self) -> int:
        return sum(row.capacity for row in self.servers)

    @property
    def utilisation_percent(self) -> int | None:
        return _percent(self.queue_depth, self.capacity)

    @property
    def healthy_servers(self) -> int:
        return sum(1 for row in self.servers if row.healthy and not row.stale)


def _percent(part: int, whole: int) -> int | None:
    return None if whole <= 0 else round(100 * part / whole)


def health_snapshot() -> routing.Snapshot:
    """The snapshot routing reads: health and live workers (empty when Redis is unreadable)."""
    # The console shows exactly what routing decides on, so it reads the same loader.
    return routing.snapshot_load()


def sites_overview(snapshot: routing.Snapshot, *, now: float | None = None) -> list[SiteRow]:
    """Every site with its servers, their deployments and their last health check.

    Utilisation is the snapshot's queue depth (Triton's pending requests per model)
    over the summed ``max_concurrency`` of the server's enabled deployments. Calls
    in flight are counted per web or worker process and are not in the snapshot, so
    this is a lower bound of the load routing sees. Three queries.
    """
    wall = time.time() if now is None else now
    health = snapshot.health
    servers = TritonServer.objects.order_by("name").prefetch_related(
        Prefetch("deployments", queryset=Deployment.objects.order_by("triton_model_name"))
    )
    sites = Site.objects.order_by("slug").prefetch_related(Prefetch("servers", queryset=servers))
    return [
        SiteRow(
            site=site,
            servers=[_server_row(s, health.get(s.pk), wall) for s in site.servers.all()],
            workers_live=site.slug in snapshot.live_sites,
        )
        for site in sites
    ]


def _server_row(server: TritonServer, state: routing.ServerHealth | None, now: float) -> ServerRow:
    deployments = list(server.deployments.all())
    models = [
        ModelLoad(
            name=d.triton_model_name,
            ready=state is not None and d.triton_model_name in state.ready_models,
            queue_depth=state.queue_depth.get(d.triton_model_name, 0) if state else 0,
            max_concurrency=d.max_concurrency,
            enabled=d.enabled,
        )
        for d in deployments
    ]
    enabled = [m for m in models if m.enabled] if server.enabled else []
    age = None if state is None else max(0, int(now - state.checked_at))
    return ServerRow(
        server=server,
        checked=state is not None,
        healthy=state is not None and state.healthy,
        stale=age is None or age >= routing.HEALTH_STALE_SECONDS,
        checked_seconds_ago=age,
        latency_ms=state.latency_ms if state else 0.0,
        models=models,
        queue_depth=sum(m.queue_depth for m in enabled),
        capacity=sum(m.max_concurrency for m in enabled),
    )


# ---- Revenue -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RevenueRow:
    """Usage charged to tenants for one group (a model slug or a site slug; "" = unknown)."""

    group: str
    calls: int
    units: int
    cost_micros: int
    gpu_micro_seconds: int | None

    @property
    def gpu_seconds(self) -> float | None:
        # For display only: money never goes through this.
        return None if self.gpu_micro_seconds is None else self.gpu_micro_seconds / 1_000_000


@dataclass(frozen=True, slots=True)
class Revenue:
    by_model: list[RevenueRow]
    by_site: list[RevenueRow]
    gpu_priced_models: list[str] = field(default_factory=list)

    @property
    def total_micros(self) -> int:
        return sum(row.cost_micros for row in self.by_model)

    @property
    def total_calls(self) -> int:
        return sum(row.calls for row in self.by_model)


def _usage_between(start: datetime, end: datetime) -> QuerySet[LedgerEntry]:
    return LedgerEntry.objects.filter(
        kind=LedgerEntry.Kind.USAGE, created_at__gte=start, created_at__lt=end
    ).order_by()


def _entry_site() -> Case:
    """Where a usage entry's call ran: its own ``site_slug``; for entries booked before
    sites were recorded, the site of the job it charged ("" for a sync call's)."""
    job = Job.objects.filter(
        pk=Cast(Substr(OuterRef("source"), _JOB_SOURCE_PREFIX_LEN + 1), BigIntegerField()),
        tenant_id=OuterRef("tenant_id"),
    ).values("site_slug")[:1]
    return Case(
        When(~Q(site_slug=""), then=F("site_slug")),
        When(source__regex=_JOB_SOURCE_RE, then=Coalesce(Subquery(job), Value(""))),
        default=Value(""),
        output_field=CharField(),
    )


def revenue_summary(start: datetime, end: datetime) -> Revenue:
    """Usage charged in ``[start, end)`` per model and per site, from the ledger.

    A usage entry's cost is minus its amount; it records the model and the site the
    call ran at. Entries booked before sites were recorded fall back to their job's
    ``site_slug`` (source ``job:<id>``), or are grouped under "" (sync calls).
    GPU-seconds are the units of models priced per GPU-second (their unit is the
    GPU-microsecond) by their *current* pricing unit; other models' GPU time is not
    measured (None). Three queries.
    """
    gpu_models = sorted(
        CatalogModel.objects.filter(pricing_unit=CatalogModel.PricingUnit.GPU_SECOND).values_list(
            "slug", flat=True
        )
    )
    return Revenue(
        by_model=_revenue_rows(start, end, F("model_slug"), gpu_models),
        by_site=_revenue_rows(start, end, _entry_site(), gpu_models),
        gpu_priced_models=gpu_models,
    )


def _revenue_rows(
    start: datetime, end: datetime, bucket: Any, gpu_models: list[str]
) -> list[RevenueRow]:
    """Usage in ``[start, end)`` grouped by ``bucket``, the highest revenue first."""
    gpu_units = Sum(
        Case(
            When(model_slug__in=gpu_models, then="units"),
            default=Value(0),
            output_field=BigIntegerField(),
        )
    )
    rows = (
        _usage_between(start, end)
        .annotate(bucket=bucket)
        .values("bucket")
        .annotate(
            calls=Count("id"),
            total_units=Coalesce(Sum("units"), 0),
            total_amount=Coalesce(Sum("amount_micros"), 0),
            gpu_units=Coalesce(gpu_units, 0),
            gpu_calls=Count("id", filter=Q(model_slug__in=gpu_models)),
        )
        .order_by("total_amount", "bucket")
    )
    return [
        RevenueRow(
            group=row["bucket"] or "",
            calls=int(row["calls"]),
            units=int(row["total_units"]),
            cost_micros=-int(row["total_amount"]),
            gpu_micro_seconds=int(row["gpu_units"]) if row["gpu_calls"] else None,
        )
        for row in rows
    ]


# ---- Tenants -------------------------------------------------------------------


def tenants_page(*, query: str, status: str, page: int | str, month_start: datetime) -> Page[Any]:
    """A page of tenants by name, with balance, usage since ``month_start`` and member count.

    The per-tenant figures are correlated subqueries, so a page is two queries (the
    count and the rows) whatever its size or the number of tenants.
    """
    members = (
        Membership.objects.filter(tenant_id=OuterRef("pk"))
        .order_by()
        .values("tenant_id")
        .annotate(n=Count("id"))
        .values("n")[:1]
    )
    tenants = Tenant.objects.annotate(
        credit_balance_micros=billing_selectors.balance_subquery(tenant_ref=OuterRef("pk")),
        usage_month_micros=billing_selectors.usage_cost_subquery(
            tenant_ref=OuterRef("pk"), start=month_start
        ),
        member_count=Coalesce(Subquery(members, output_field=IntegerField()), 0),
    ).order_by("name", "pk")
    if query:
        tenants = tenants.filter(Q(name__icontains=query) | Q(slug__icontains=query))
    if status:
        tenants = tenants.filter(status=status)
    return Paginator(tenants, TENANT_PAGE_SIZE).get_page(page)


@dataclass(frozen=True, slots=True)
class TenantDetail:
    tenant: Tenant
    balance: dict[str, int]
    month_to_date_micros: int
    members: list[Membership]
    keys: list[ApiKey]
    ledger: list[LedgerEntry]
    audit: list[AuditEvent]


def tenant_detail(tenant: Tenant) -> TenantDetail:
    """What staff need to judge a tenant: money, people, keys, recent ledger and audit."""
    return TenantDetail(
        tenant=tenant,
        balance=billing_selectors.balance_get(tenant.pk),
        month_to_date_micros=billing_selectors.month_to_date_usage(tenant.pk),
        members=list(
            Membership.objects.filter(tenant=tenant).select_related("user").order_by("created_at")
        ),
        # Never the hash: only what the key list shows.
        keys=list(
            ApiKey.objects.filter(tenant=tenant)
            .only(
                "id",
                "tenant_id",
                "name",
                "public_id",
                "created_at",
                "expires_at",
                "revoked_at",
                "last_used_at",
                "monthly_spend_cap_micros",
            )
            .order_by("-created_at")
        ),
        ledger=list(
            LedgerEntry.objects.filter(tenant_id=tenant.pk)
            .select_related("created_by")
            .order_by("-created_at", "-id")[:TENANT_LEDGER_LIMIT]
        ),
        audit=list(
            AuditEvent.objects.filter(tenant=tenant).order_by("-created_at", "-id")[
                :TENANT_AUDIT_LIMIT
            ]
        ),
    )


# ---- Failures ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Failures:
    jobs: list[Job]
    jobs_total: int
    webhooks: list[WebhookDelivery]
    webhooks_total: int
    meter_records: list[UsageRecord]
    meter_total: int


def failures_recent(*, limit: int = FAILURES_LIMIT) -> Failures:
    """The latest failed jobs, failed webhook deliveries and unsent meter events, with counts.

    A webhook delivery failed when it got no response or a status outside 2xx; a
    meter event is failing while its usage record is unsent and has an error.
    """
    failed_jobs = Job.objects.filter(status=Job.Status.FAILED)
    failed_hooks = WebhookDelivery.objects.filter(
        Q(status_code__isnull=True) | Q(status_code__lt=200) | Q(status_code__gte=300)
    )
    failing_meter = UsageRecord.objects.filter(sent_at__isnull=True).exclude(last_error="")
    return Failures(
        jobs=list(
            failed_jobs.select_related("tenant", "model")
            .defer("request", "output")
            .order_by("-id")[:limit]
        ),
        jobs_total=failed_jobs.count(),
        webhooks=list(
            failed_hooks.select_related("tenant", "job")
            .defer("job__request", "job__output")
            .order_by("-id")[:limit]
        ),
        webhooks_total=failed_hooks.count(),
        meter_records=list(failing_meter.select_related("tenant").order_by("-id")[:limit]),
        meter_total=failing_meter.count(),
    )


# ---- Audit ---------------------------------------------------------------------

AUDIT_PAGE_SIZE = 50


def audit_page(
    *,
    tenant: Tenant | None = None,
    action: str | None = None,
    before: keyset.Position | None = None,
    after: keyset.Position | None = None,
    limit: int = AUDIT_PAGE_SIZE,
) -> keyset.Page[AuditEvent]:
    """Audit events of every tenant and the operator's own, newest first, keyset-paged.

    One query of ``limit + 1`` rows with each event's tenant joined.
    """
    events = AuditEvent.objects.select_related("tenant")
    if tenant is not None:
        events = events.filter(tenant=tenant)
    if action:
        events = events.filter(action=action)
    return keyset.page(events, before=before, after=after, limit=limit)
