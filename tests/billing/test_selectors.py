"""Billing reads: balance, keyset ledger pages, CSV rows, usage grouped over half-open periods."""

from datetime import UTC, date, datetime, timedelta

import pytest
from django.db.models import OuterRef

from billing import ledger, selectors
from billing.models import CreditAccount, LedgerEntry
from marketplace.models import Tenant
from tests.factories import TenantFactory

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _entry(
    tenant_id: int,
    *,
    at: datetime,
    amount: int = -1_000,
    kind: str = LedgerEntry.Kind.USAGE,
    model: str = "echo",
    key_id: int | None = None,
    units: int | None = 1,
    source: str | None = None,
) -> LedgerEntry:
    """A ledger entry at a chosen time (``created_at`` is set on insert, so moved after)."""
    account = ledger.account_open(tenant_id=tenant_id)
    entry = LedgerEntry.objects.create(
        account=account,
        tenant_id=tenant_id,
        kind=kind,
        source=source or f"test:{LedgerEntry.objects.count()}:{at.isoformat()}",
        amount_micros=amount,
        model_slug=model,
        api_key_id=key_id,
        units=units,
    )
    LedgerEntry.objects.filter(pk=entry.pk).update(created_at=at)
    entry.refresh_from_db()
    return entry


@pytest.fixture
def tenant_id() -> int:
    return TenantFactory.create().pk


def test_balance_reads_the_account_and_subtracts_reservations(tenant_id):
    ledger.entry_book(
        tenant_id=tenant_id, kind=LedgerEntry.Kind.GRANT, source="g", amount_micros=10_000_000
    )
    ledger.credit_reserve(
        tenant_id=tenant_id, amount_micros=2_500_000, source="req_1", ttl_seconds=60
    )
    assert selectors.balance_get(tenant_id) == {
        "balance_micros": 10_000_000,
        "reserved_micros": 2_500_000,
        "available_micros": 7_500_000,
    }


def test_balance_of_a_tenant_without_account_is_zero(tenant_id):
    assert not CreditAccount.objects.filter(tenant_id=tenant_id).exists()
    assert selectors.balance_get(tenant_id) == {
        "balance_micros": 0,
        "reserved_micros": 0,
        "available_micros": 0,
    }


def test_usage_groups_by_model_with_positive_costs_most_expensive_first(tenant_id):
    _entry(tenant_id, at=T0, amount=-100, model="echo", units=2)
    _entry(tenant_id, at=T0 + timedelta(hours=1), amount=-300, model="echo", units=5)
    _entry(tenant_id, at=T0 + timedelta(hours=2), amount=-1_000, model="minilm", units=7)
    rows = selectors.usage_summary(tenant_id, T0, T0 + timedelta(days=1), "model")
    assert rows == [
        selectors.UsageRow(group="minilm", units=7, cost_micros=1_000, calls=1),
        selectors.UsageRow(group="echo", units=7, cost_micros=400, calls=2),
    ]


def test_usage_groups_by_utc_day_oldest_first(tenant_id):
    _entry(tenant_id, at=T0 + timedelta(hours=23, minutes=59), amount=-5)
    _entry(tenant_id, at=T0 + timedelta(days=1), amount=-7)
    _entry(tenant_id, at=T0 + timedelta(days=1, hours=12), amount=-11)
    rows = selectors.usage_summary(tenant_id, T0, T0 + timedelta(days=3), "day")
    assert [(row.group, row.cost_micros, row.calls) for row in rows] == [
        (date(2026, 3, 1), 5, 1),
        (date(2026, 3, 2), 18, 2),
    ]


def test_usage_groups_by_key_including_calls_without_a_key(tenant_id):
    _entry(tenant_id, at=T0, amount=-10, key_id=41)
    _entry(tenant_id, at=T0, amount=-20, key_id=41)
    _entry(tenant_id, at=T0, amount=-5, key_id=None)
    rows = selectors.usage_summary(tenant_id, T0, T0 + timedelta(days=1), "key")
    assert {(row.group, row.cost_micros, row.calls) for row in rows} == {(41, 30, 2), (None, 5, 1)}


def test_usage_period_is_half_open(tenant_id):
    end = T0 + timedelta(days=1)
    _entry(tenant_id, at=T0 - timedelta(microseconds=1), amount=-1)  # before: out
    _entry(tenant_id, at=T0, amount=-10)  # at start: in
    _entry(tenant_id, at=end - timedelta(microseconds=1), amount=-100)  # just before end: in
    _entry(tenant_id, at=end, amount=-1_000)  # at end: out
    rows = selectors.usage_summary(tenant_id, T0, end, "model")
    assert [(row.cost_micros, row.calls) for row in rows] == [(110, 2)]


def test_usage_counts_only_usage_entries_of_the_tenant(tenant_id):
    other = TenantFactory.create().pk
    _entry(tenant_id, at=T0, amount=-10)
    _entry(tenant_id, at=T0, amount=5_000_000, kind=LedgerEntry.Kind.GRANT)
    _entry(tenant_id, at=T0, amount=-2_000_000, kind=LedgerEntry.Kind.REFUND)
    _entry(other, at=T0, amount=-999)
    rows = selectors.usage_summary(tenant_id, T0, T0 + timedelta(days=1), "model")
    assert [(row.cost_micros, row.calls) for row in rows] == [(10, 1)]


def test_unknown_grouping_is_refused(tenant_id):
    with pytest.raises(ValueError, match="group_by"):
        selectors.usage_summary(tenant_id, T0, T0 + timedelta(days=1), "site")  # type: ignore[arg-type]


def test_month_to_date_usage_starts_at_the_first_of_the_utc_month(tenant_id):
    now = datetime(2026, 3, 15, 12, tzinfo=UTC)
    _entry(tenant_id, at=datetime(2026, 2, 28, 23, 59, tzinfo=UTC), amount=-1_000)
    _entry(tenant_id, at=datetime(2026, 3, 1, tzinfo=UTC), amount=-20)
    _entry(tenant_id, at=datetime(2026, 3, 14, tzinfo=UTC), amount=-3)
    assert selectors.month_to_date_usage(tenant_id, now=now) == 23
    assert selectors.month_start_utc(now) == datetime(2026, 3, 1, tzinfo=UTC)


def _walk_older(tenant_id: int, limit: int) -> list[list[int]]:
    pages = []
    page = selectors.ledger_page(tenant_id, limit=limit)
    pages.append([e.pk for e in page.entries])
    assert page.newer is None
    while page.older is not None:
        page = selectors.ledger_page(tenant_id, before=page.older, limit=limit)
        pages.append([e.pk for e in page.entries])
    return pages


def test_ledger_pages_are_newest_first_and_cover_every_entry_once_even_with_equal_times(
    tenant_id,
):
    entries = [_entry(tenant_id, at=T0 + timedelta(minutes=i // 3)) for i in range(11)]
    expected = [e.pk for e in sorted(entries, key=lambda e: (e.created_at, e.pk), reverse=True)]
    pages = _walk_older(tenant_id, limit=4)
    assert [len(p) for p in pages] == [4, 4, 3]
    assert [pk for p in pages for pk in p] == expected


def test_ledger_newer_cursor_leads_back_to_the_same_pages(tenant_id):
    for i in range(9):
        _entry(tenant_id, at=T0 + timedelta(seconds=i // 2))
    first = selectors.ledger_page(tenant_id, limit=4)
    second = selectors.ledger_page(tenant_id, before=first.older, limit=4)
    third = selectors.ledger_page(tenant_id, before=second.older, limit=4)
    assert third.older is None
    assert third.newer is not None
    back = selectors.ledger_page(tenant_id, after=third.newer, limit=4)
    assert [e.pk for e in back.entries] == [e.pk for e in second.entries]
    assert back.newer is not None
    front = selectors.ledger_page(tenant_id, after=back.newer, limit=4)
    assert [e.pk for e in front.entries] == [e.pk for e in first.entries]
    assert front.newer is None


def test_ledger_pages_do_not_shift_when_entries_are_booked_meanwhile(tenant_id):
    for i in range(6):
        _entry(tenant_id, at=T0 + timedelta(seconds=i))
    first = selectors.ledger_page(tenant_id, limit=3)
    _entry(tenant_id, at=T0 + timedelta(days=1))  # newer than everything
    second = selectors.ledger_page(tenant_id, before=first.older, limit=3)
    assert {e.pk for e in first.entries}.isdisjoint({e.pk for e in second.entries})
    assert second.older is None


def test_ledger_page_never_shows_another_tenants_entries(tenant_id):
    other = TenantFactory.create().pk
    mine = _entry(tenant_id, at=T0)
    theirs = _entry(other, at=T0 + timedelta(seconds=1))
    page = selectors.ledger_page(tenant_id)
    assert [e.pk for e in page.entries] == [mine.pk]
    # A cursor made from the other tenant's row still only reads this tenant's rows.
    crafted = selectors.ledger_page(tenant_id, after=f"0-{theirs.pk}")
    assert theirs.pk not in [e.pk for e in crafted.entries]


@pytest.mark.parametrize("cursor", ["", "garbage", "1-", "-5-3", "99999999999999999999-1", "1-2-3"])
def test_malformed_cursors_give_the_newest_page(tenant_id, cursor):
    newest = _entry(tenant_id, at=T0)
    assert selectors.ledger_page(tenant_id, before=cursor).entries == [newest]
    assert selectors.ledger_page(tenant_id, after=cursor).entries == [newest]


def test_a_ledger_page_is_one_query(tenant_id, django_assert_num_queries):
    for i in range(30):
        _entry(tenant_id, at=T0 + timedelta(seconds=i))
    cursor = selectors.ledger_page(tenant_id, limit=10).older
    with django_assert_num_queries(1):
        selectors.ledger_page(tenant_id, before=cursor, limit=10)


def test_csv_rows_cover_the_half_open_period_oldest_first_across_batches(tenant_id, monkeypatch):
    monkeypatch.setattr(selectors, "CSV_BATCH_SIZE", 2)
    _entry(tenant_id, at=T0 - timedelta(microseconds=1))
    inside = [_entry(tenant_id, at=T0 + timedelta(seconds=i // 2)) for i in range(5)]
    _entry(tenant_id, at=T0 + timedelta(days=1))
    _entry(TenantFactory.create().pk, at=T0)
    rows = list(selectors.ledger_rows_for_csv(tenant_id, T0, T0 + timedelta(days=1)))
    assert [row.id for row in rows] == [e.pk for e in inside]
    assert rows[0].amount_micros == -1_000
    assert rows[0].created_at == T0


def test_staff_list_subqueries_compute_balance_and_usage_per_tenant(tenant_id):
    other = TenantFactory.create().pk
    ledger.entry_book(tenant_id=tenant_id, kind=LedgerEntry.Kind.GRANT, source="g", amount_micros=9)
    _entry(tenant_id, at=T0, amount=-4)
    _entry(tenant_id, at=T0 - timedelta(days=40), amount=-100)
    tenants = Tenant.objects.filter(pk__in=[tenant_id, other]).annotate(
        balance=selectors.balance_subquery(tenant_ref=OuterRef("pk")),
        usage=selectors.usage_cost_subquery(tenant_ref=OuterRef("pk"), start=T0),
    )
    values = {t.pk: (t.balance, t.usage) for t in tenants}
    assert values == {tenant_id: (9, 4), other: (None, None)}
