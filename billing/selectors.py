"""Reads of a tenant's credit: balance, ledger pages, CSV rows, usage, invoices.

Every tenant-scoped function takes ``tenant_id`` first and filters by it. Each query
is served by an index — ``(tenant, -created_at)`` for the ledger pages and the CSV,
``(tenant, kind, created_at)`` for usage — and pages are keyset (no OFFSET, no
COUNT(*)), so a page costs the same with a hundred entries or a hundred thousand.
Periods are half-open ``[start, end)`` in UTC.

This app refers to tenants by id only; it imports nothing from ``marketplace``.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal

from django.db.models import Count, F, Q, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from config import keyset

from .models import CreditAccount, Invoice, LedgerEntry, Purchase

GroupBy = Literal["model", "day", "key"]
GROUP_BY_CHOICES: tuple[GroupBy, ...] = ("model", "day", "key")

LEDGER_PAGE_SIZE = 50
LEDGER_PAGE_MAX = 200
CSV_BATCH_SIZE = 2000

_LEDGER_FIELDS = (
    "id",
    "kind",
    "source",
    "amount_micros",
    "model_slug",
    "api_key_id",
    "units",
    "reason",
    "created_at",
)


def account_get(tenant_id: int) -> CreditAccount | None:
    """The tenant's credit account, or None if it has none yet."""
    return CreditAccount.objects.filter(tenant_id=tenant_id).first()


def balance_of(account: CreditAccount | None) -> dict[str, int]:
    """An account's balance, open reservations and what is left to spend (zero if none)."""
    balance = account.balance_micros if account else 0
    reserved = account.reserved_micros if account else 0
    return {
        "balance_micros": balance,
        "reserved_micros": reserved,
        "available_micros": balance - reserved,
    }


def balance_get(tenant_id: int) -> dict[str, int]:
    """The tenant's balance, open reservations and what is left to spend (zero if no account)."""
    row = (
        CreditAccount.objects.filter(tenant_id=tenant_id)
        .values("balance_micros", "reserved_micros")
        .first()
    )
    balance = row["balance_micros"] if row else 0
    reserved = row["reserved_micros"] if row else 0
    return {
        "balance_micros": balance,
        "reserved_micros": reserved,
        "available_micros": balance - reserved,
    }


def month_start_utc(now: datetime | None = None) -> datetime:
    """Midnight UTC on the first day of the month that ``now`` (default: now) falls in."""
    moment = (now or timezone.now()).astimezone(UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def day_start_utc(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


# ---- Ledger pages -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LedgerPage:
    """One page of entries, newest first, with the cursors of its neighbours (None: none)."""

    entries: list[LedgerEntry]
    older: str | None
    newer: str | None


def ledger_page(
    tenant_id: int,
    *,
    before: str | None = None,
    after: str | None = None,
    limit: int = LEDGER_PAGE_SIZE,
) -> LedgerPage:
    """A page of the tenant's ledger, newest first.

    ``before`` (the ``older`` cursor of a page) gives the entries just older than it,
    ``after`` (a ``newer`` cursor) the entries just newer. Pages are keyset on
    ``(created_at, id)`` and read ``limit + 1`` rows from the ``(tenant, -created_at)``
    index to learn whether another page follows: one query, whatever the ledger's size.
    Entries booked while someone pages never shift or repeat rows. A malformed or
    exhausted cursor gives the newest page.
    """
    limit = max(1, min(limit, LEDGER_PAGE_MAX))
    entries = LedgerEntry.objects.filter(tenant_id=tenant_id).only(*_LEDGER_FIELDS)
    found = keyset.page(
        entries,
        before=keyset.cursor_decode(before),
        after=keyset.cursor_decode(after),
        limit=limit,
    )
    return LedgerPage(entries=found.rows, older=found.older, newer=found.newer)


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One ledger entry as exported: oldest first."""

    id: int
    created_at: datetime
    kind: str
    source: str
    model_slug: str
    api_key_id: int | None
    units: int | None
    amount_micros: int


def ledger_rows_for_csv(tenant_id: int, start: datetime, end: datetime) -> Iterator[LedgerRow]:
    """Every entry of ``[start, end)``, oldest first, read in keyset batches.

    Memory stays flat however long the period is, and no server-side cursor is
    held open between batches (which a connection pooler might not allow).
    """
    period = LedgerEntry.objects.filter(
        tenant_id=tenant_id, created_at__gte=start, created_at__lt=end
    ).order_by("created_at", "id")
    fields = (
        "id",
        "created_at",
        "kind",
        "source",
        "model_slug",
        "api_key_id",
        "units",
        "amount_micros",
    )
    batch = list(period.values_list(*fields)[:CSV_BATCH_SIZE])
    while batch:
        for values in batch:
            yield LedgerRow(*values)
        last_created_at, last_id = batch[-1][1], batch[-1][0]
        if len(batch) < CSV_BATCH_SIZE:
            return
        batch = list(
            period.filter(created_at__gte=last_created_at)
            .filter(Q(created_at__gt=last_created_at) | Q(pk__gt=last_id))
            .values_list(*fields)[:CSV_BATCH_SIZE]
        )


# ---- Usage ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Usage of one group in a period. ``group`` is a model slug, a UTC date or a key id."""

    group: str | date | int | None
    units: int
    cost_micros: int
    calls: int


def _usage(tenant_id: int, start: datetime, end: datetime) -> QuerySet[LedgerEntry]:
    return LedgerEntry.objects.filter(
        tenant_id=tenant_id,
        kind=LedgerEntry.Kind.USAGE,
        created_at__gte=start,
        created_at__lt=end,
    )


def usage_summary(
    tenant_id: int, start: datetime, end: datetime, group_by: GroupBy = "model"
) -> list[UsageRow]:
    """Units, cost and calls of the tenant's usage in ``[start, end)``, per group.

    Read from the usage entries of the ledger, where a charge is negative: a
    group's cost is minus the sum of its amounts. Days are UTC days, oldest first;
    models and keys are most expensive first.
    """
    group_expressions: dict[str, Any] = {
        "model": F("model_slug"),
        "day": TruncDate("created_at", tzinfo=UTC),
        "key": F("api_key_id"),
    }
    if group_by not in group_expressions:
        raise ValueError(f"group_by must be one of {', '.join(GROUP_BY_CHOICES)}")
    rows = (
        _usage(tenant_id, start, end)
        .annotate(bucket=group_expressions[group_by])
        .values("bucket")
        .annotate(
            total_units=Coalesce(Sum("units"), 0),
            total_amount=Coalesce(Sum("amount_micros"), 0),
            calls=Count("id"),
        )
    )
    rows = rows.order_by("bucket") if group_by == "day" else rows.order_by("total_amount", "bucket")
    return [
        UsageRow(
            group=row["bucket"],
            units=int(row["total_units"]),
            cost_micros=-int(row["total_amount"]),
            calls=int(row["calls"]),
        )
        for row in rows
    ]


def usage_by_day_and_model(
    tenant_id: int, start: datetime, end: datetime
) -> dict[date, dict[str, int]]:
    """Cost in micro-USD per UTC day and model in ``[start, end)``: one aggregate."""
    rows = (
        _usage(tenant_id, start, end)
        .annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values("day", "model_slug")
        .annotate(total_amount=Coalesce(Sum("amount_micros"), 0))
    )
    split: dict[date, dict[str, int]] = {}
    for row in rows:
        split.setdefault(row["day"], {})[row["model_slug"]] = -int(row["total_amount"])
    return split


def month_to_date_usage(tenant_id: int, *, now: datetime | None = None) -> int:
    """What the tenant's usage cost since the start of this UTC month, in micro-USD.

    One aggregate over the ``(tenant, kind, created_at)`` index; it reads this month's
    usage entries of this tenant only. No upper bound: an entry stamped by a web
    process whose clock runs slightly ahead still counts.
    """
    total = LedgerEntry.objects.filter(
        tenant_id=tenant_id, kind=LedgerEntry.Kind.USAGE, created_at__gte=month_start_utc(now)
    ).aggregate(total=Coalesce(Sum("amount_micros"), 0))
    return -int(total["total"])


# ---- Invoices ------------------------------------------------------------------


def invoices_list(tenant_id: int, *, limit: int = 24) -> list[Invoice]:
    """The tenant's most recent invoices, newest period first."""
    return list(Invoice.objects.filter(tenant_id=tenant_id).order_by("-period_end")[:limit])


def purchase_for_checkout(tenant_id: int, session_id: str) -> Purchase | None:
    """The tenant's purchase paid through this Checkout Session, if there is one."""
    if not session_id:
        return None
    return Purchase.objects.filter(
        tenant_id=tenant_id, stripe_checkout_session_id=session_id
    ).first()


# ---- Annotations for lists of tenants (staff admin) ----------------------------


def balance_subquery(*, tenant_ref: Any) -> Subquery:
    """The balance of the tenant ``tenant_ref`` names (an ``OuterRef``), as a column."""
    return Subquery(CreditAccount.objects.filter(tenant_id=tenant_ref).values("balance_micros")[:1])


def usage_cost_subquery(*, tenant_ref: Any, start: datetime) -> Subquery:
    """Minus the sum of the usage amounts since ``start`` of the tenant ``tenant_ref`` names.

    A correlated subquery read from the ``(tenant, kind, created_at)`` index: one
    query for a whole page of tenants. Null when there was no usage.
    """
    return Subquery(
        LedgerEntry.objects.filter(
            tenant_id=tenant_ref, kind=LedgerEntry.Kind.USAGE, created_at__gte=start
        )
        .order_by()
        .values("tenant_id")
        .annotate(cost=-Sum("amount_micros"))
        .values("cost")[:1]
    )
