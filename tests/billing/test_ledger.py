"""The ledger's services on PostgreSQL, through both the one-statement and the ORM paths."""

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from billing import ledger
from billing.exceptions import InsufficientCredits, KeyBudgetExceeded
from billing.models import CreditAccount, LedgerEntry, Reservation, UsageRecord

pytestmark = pytest.mark.django_db


@pytest.fixture(params=["fast", "portable"])
def path(request, monkeypatch):
    monkeypatch.setattr(ledger, "force_portable", request.param == "portable")
    return request.param


def _account(world) -> CreditAccount:
    return CreditAccount.objects.get(tenant=world.tenant)


def test_reserve_settle_charges_actual_cost_and_frees_the_rest(world, path):
    before = _account(world).balance_micros
    hold = ledger.credit_reserve(
        tenant_id=world.tenant.pk, amount_micros=500, source="req:a", ttl_seconds=60
    )
    assert _account(world).reserved_micros == 500
    settled = ledger.credit_settle(
        hold=hold, cost_micros=120, units=3, model_slug="echo", source="req:a"
    )
    assert settled is not None
    account = _account(world)
    assert account.balance_micros == before - 120
    assert account.reserved_micros == 0
    assert ledger.account_check(account=account) == []
    entry = LedgerEntry.objects.get(kind="usage", source="req:a")
    assert (entry.amount_micros, entry.units, entry.model_slug) == (-120, 3, "echo")
    assert UsageRecord.objects.get(ledger_entry=entry).cost_micros == 120


def test_a_second_settle_or_release_changes_nothing(world, path):
    hold = ledger.credit_reserve(
        tenant_id=world.tenant.pk, amount_micros=100, source="req:b", ttl_seconds=60
    )
    assert ledger.credit_settle(hold=hold, cost_micros=100, units=1, model_slug="m", source="req:b")
    balance = _account(world).balance_micros
    assert (
        ledger.credit_settle(hold=hold, cost_micros=100, units=1, model_slug="m", source="req:b")
        is None
    )
    assert ledger.credit_release(reservation_id=hold.reservation_id) is False
    assert _account(world).balance_micros == balance
    assert LedgerEntry.objects.filter(source="req:b").count() == 1


def test_charge_is_clamped_to_the_hold(world, path):
    hold = ledger.credit_reserve(
        tenant_id=world.tenant.pk, amount_micros=50, source="req:c", ttl_seconds=60
    )
    ledger.credit_settle(hold=hold, cost_micros=80, units=1, model_slug="m", source="req:c")
    assert LedgerEntry.objects.get(source="req:c").amount_micros == -50


def test_insufficient_credit_writes_nothing(world, path):
    available = _account(world).available_micros
    with pytest.raises(InsufficientCredits):
        ledger.credit_reserve(
            tenant_id=world.tenant.pk, amount_micros=available + 1, source="req:d", ttl_seconds=60
        )
    assert not Reservation.objects.filter(source="req:d").exists()
    assert _account(world).reserved_micros == 0


def test_release_frees_the_hold(world, path):
    hold = ledger.credit_reserve(
        tenant_id=world.tenant.pk, amount_micros=70, source="req:e", ttl_seconds=60
    )
    assert ledger.credit_release(reservation_id=hold.reservation_id)
    account = _account(world)
    assert account.reserved_micros == 0
    assert ledger.account_check(account=account) == []


def test_key_cap_counts_spend_and_open_holds(world, monkeypatch):
    key_id = world.key.pk
    first = ledger.credit_reserve(
        tenant_id=world.tenant.pk,
        amount_micros=60,
        source="req:f1",
        ttl_seconds=60,
        api_key_id=key_id,
        key_cap_micros=100,
    )
    with pytest.raises(KeyBudgetExceeded):
        ledger.credit_reserve(
            tenant_id=world.tenant.pk,
            amount_micros=50,
            source="req:f2",
            ttl_seconds=60,
            api_key_id=key_id,
            key_cap_micros=100,
        )
    assert _account(world).reserved_micros == 60  # the refused hold left nothing behind
    ledger.credit_settle(hold=first, cost_micros=30, units=1, model_slug="m", source="req:f1")
    ledger.credit_reserve(
        tenant_id=world.tenant.pk,
        amount_micros=70,
        source="req:f3",
        ttl_seconds=60,
        api_key_id=key_id,
        key_cap_micros=100,
    )
    with pytest.raises(KeyBudgetExceeded):
        ledger.credit_reserve(
            tenant_id=world.tenant.pk,
            amount_micros=1,
            source="req:f4",
            ttl_seconds=60,
            api_key_id=key_id,
            key_cap_micros=100,
        )


def test_expired_holds_are_released(world, path):
    hold = ledger.credit_reserve(
        tenant_id=world.tenant.pk, amount_micros=40, source="req:g", ttl_seconds=60
    )
    Reservation.objects.filter(pk=hold.reservation_id).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert ledger.reservations_release_expired() == 1
    assert Reservation.objects.get(pk=hold.reservation_id).status == "released"
    assert _account(world).reserved_micros == 0


def test_entry_book_is_idempotent_per_source(world):
    balance = _account(world).balance_micros
    first, created = ledger.entry_book(
        tenant_id=world.tenant.pk,
        kind=LedgerEntry.Kind.PURCHASE,
        source="purchase:9",
        amount_micros=5_000_000,
    )
    again, created_again = ledger.entry_book(
        tenant_id=world.tenant.pk,
        kind=LedgerEntry.Kind.PURCHASE,
        source="purchase:9",
        amount_micros=5_000_000,
    )
    assert created
    assert not created_again
    assert first.pk == again.pk
    assert _account(world).balance_micros == balance + 5_000_000


def test_low_balance_signal_once_per_crossing(world, path, django_capture_on_commit_callbacks):
    received = []

    def receiver(**kwargs):
        received.append(kwargs["available_micros"])

    ledger.low_balance.connect(receiver, weak=False)
    try:
        account = _account(world)
        account.low_balance_threshold_micros = account.balance_micros - 100
        account.save()
        for index in range(3):
            hold = ledger.credit_reserve(
                tenant_id=world.tenant.pk, amount_micros=80, source=f"req:h{index}", ttl_seconds=60
            )
            with django_capture_on_commit_callbacks(execute=True):
                ledger.credit_settle(
                    hold=hold, cost_micros=80, units=1, model_slug="m", source=f"req:h{index}"
                )
        assert len(received) == 1
        ledger.entry_book(
            tenant_id=world.tenant.pk,
            kind=LedgerEntry.Kind.PURCHASE,
            source="purchase:top",
            amount_micros=10_000,
        )
        assert _account(world).low_balance_alerted is False  # the top-up re-arms the alert
    finally:
        ledger.low_balance.disconnect(receiver)


def test_hot_statements_are_prepared_on_the_server(world):
    """Django turns psycopg's preparing off unless told; then ``prepare=True`` is ignored
    and every sync call pays for parsing and planning the settle again."""
    from django.db import connection

    for source in ("req:p1", "req:p2"):
        hold = ledger.credit_reserve(
            tenant_id=world.tenant.pk, amount_micros=10, source=source, ttl_seconds=60
        )
        ledger.credit_settle(hold=hold, cost_micros=5, units=1, model_slug="m", source=source)
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [row[0] for row in cursor.fetchall()]
    assert any("INSERT INTO billing_reservation" in text for text in prepared), prepared
    assert any("INSERT INTO billing_usagerecord" in text for text in prepared), prepared


def test_settle_and_release_find_their_hold_by_primary_key(world):
    """The settle must not walk an index of open holds: after a busy hour of settled,
    not yet vacuumed holds, such a walk made every sync call slower (``bench/billing.py``
    drifted within a run). The expiry sweep still reads only unclosed holds."""
    from django.db import connection

    for index in range(300):
        hold = ledger.credit_reserve(
            tenant_id=world.tenant.pk, amount_micros=10, source=f"req:k{index}", ttl_seconds=60
        )
        ledger.credit_settle(
            hold=hold, cost_micros=5, units=1, model_slug="m", source=f"req:k{index}"
        )
    open_hold = ledger.credit_reserve(
        tenant_id=world.tenant.pk, amount_micros=10, source="req:open", ttl_seconds=60
    )
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE billing_reservation")
        plans = {}
        queries: list[tuple[str, str, dict[str, Any]]] = [
            (
                "settle",
                ledger._SETTLE_SQL,
                {
                    "cost": 5,
                    "now": now,
                    "reservation": open_hold.reservation_id,
                    "source": "req:open",
                    "model": "m",
                    "site": "site-1",
                    "units": 1,
                    "ahead": 5,
                    "ahead_floor": 50,
                    "ahead_source": "req:next",
                    "ahead_expires": now,
                },
            ),
            ("release", ledger._RELEASE_SQL, {"now": now, "reservation": open_hold.reservation_id}),
        ]
        for name, sql, params in queries:
            cursor.execute("EXPLAIN " + sql, params)
            plans[name] = "\n".join(row[0] for row in cursor.fetchall())
        sweep = Reservation.objects.filter(closed_at__isnull=True, expires_at__lt=now)
        cursor.execute("SET LOCAL enable_seqscan = off")
        plans["sweep"] = sweep.explain()
    for name in ("settle", "release"):
        assert "billing_reservation_pkey" in plans[name], plans[name]
        assert "reservation_unclosed_expiry" not in plans[name], plans[name]
    assert "reservation_unclosed_expiry" in plans["sweep"], plans["sweep"]


def _ahead(amount: int, source: str = "req:next") -> ledger.Ahead:
    return ledger.Ahead(source=source, amount_micros=amount, ttl_seconds=60)


def test_settle_holds_the_next_call_when_credit_is_to_spare(world, settings):
    settings.SYNC_HOLD_AHEAD_MIN_CALLS = 10
    available = _account(world).available_micros
    hold = ledger.credit_reserve(
        tenant_id=world.tenant.pk, amount_micros=100, source="req:first", ttl_seconds=60
    )
    settled = ledger.credit_settle(
        hold=hold, cost_micros=40, units=1, model_slug="m", source="req:first", ahead=_ahead(100)
    )
    assert settled is not None
    assert settled.next_hold is not None
    assert settled.next_hold.source == "req:next"
    account = _account(world)
    assert account.available_micros == available - 40 - 100  # the next call's hold
    assert account.reserved_micros == 100
    assert ledger.account_check(account=account) == []
    reservation = Reservation.objects.get(pk=settled.next_hold.reservation_id)
    assert (reservation.status, reservation.amount_micros, reservation.source) == (
        "open",
        100,
        "req:next",
    )
    # The next call settles on it, under its source, and may hold for the one after.
    again = ledger.credit_settle(
        hold=settled.next_hold,
        cost_micros=60,
        units=1,
        model_slug="m",
        source=settled.next_hold.source,
        ahead=_ahead(100, "req:third"),
    )
    assert again is not None
    assert again.next_hold is not None
    assert LedgerEntry.objects.get(kind="usage", source="req:next").amount_micros == -60
    account = _account(world)
    assert account.available_micros == available - 40 - 60 - 100
    assert ledger.account_check(account=account) == []
    # Released (unused, after its expiry) it gives the credit back.
    assert ledger.credit_release(reservation_id=again.next_hold.reservation_id)
    account = _account(world)
    assert (account.available_micros, account.reserved_micros) == (available - 100, 0)


def test_no_hold_ahead_unless_the_floor_of_calls_stays_covered(world, settings):
    """Near exhaustion every call holds for itself: a hold parked in one web process
    must never be what refuses a call another process could have run."""
    available = _account(world).available_micros
    settings.SYNC_HOLD_AHEAD_MIN_CALLS = 10

    def call(source: str, *, cost: int, ahead: int) -> ledger.Settled:
        hold = ledger.credit_reserve(
            tenant_id=world.tenant.pk, amount_micros=100, source=source, ttl_seconds=60
        )
        settled = ledger.credit_settle(
            hold=hold,
            cost_micros=cost,
            units=1,
            model_slug="m",
            source=source,
            ahead=_ahead(ahead),
        )
        assert settled is not None
        return settled

    # After a charge of 100 the account covers 1 + 10 holds of (available - 100) // 11,
    # but not of one µ$ more.
    per_call = (available - 100) // 11
    assert call("req:a", cost=100, ahead=per_call + 1).next_hold is None
    assert _account(world).reserved_micros == 0
    assert call("req:b", cost=0, ahead=per_call).next_hold is not None
    assert ledger.account_check(account=_account(world)) == []


def test_no_hold_ahead_for_a_capped_key(world, settings):
    """A capped key's month is held call by call (``KeySpend``): nothing is held ahead."""
    settings.SYNC_HOLD_AHEAD_MIN_CALLS = 1
    hold = ledger.credit_reserve(
        tenant_id=world.tenant.pk,
        amount_micros=10,
        source="req:capped",
        ttl_seconds=60,
        api_key_id=world.key.pk,
        key_cap_micros=1_000_000,
    )
    settled = ledger.credit_settle(
        hold=hold, cost_micros=5, units=1, model_slug="m", source="req:capped", ahead=_ahead(10)
    )
    assert settled is not None
    assert settled.next_hold is None
    assert _account(world).reserved_micros == 0


def test_closed_holds_are_purged_after_their_retention_open_ones_never(world):
    def hold(source: str) -> ledger.Hold:
        return ledger.credit_reserve(
            tenant_id=world.tenant.pk, amount_micros=10, source=source, ttl_seconds=60
        )

    settled = hold("req:old-settled")
    ledger.credit_settle(
        hold=settled, cost_micros=5, units=1, model_slug="m", source="req:old-settled"
    )
    released = hold("req:old-released")
    ledger.credit_release(reservation_id=released.reservation_id)
    recent = hold("req:recent")
    ledger.credit_settle(hold=recent, cost_micros=5, units=1, model_slug="m", source="req:recent")
    still_open = hold("req:open")
    long_ago = timezone.now() - timedelta(days=31)
    Reservation.objects.exclude(source="req:recent").update(created_at=long_ago)
    Reservation.objects.filter(source__startswith="req:old").update(closed_at=long_ago)

    assert ledger.reservations_purge_closed(older_than_days=30, batch=1) == 2
    assert set(Reservation.objects.values_list("source", flat=True)) == {"req:recent", "req:open"}
    assert LedgerEntry.objects.filter(kind="usage", source="req:old-settled").exists()
    assert ledger.account_check(account=_account(world)) == []
    assert ledger.credit_release(reservation_id=still_open.reservation_id)


def test_beat_runs_the_closed_holds_purge(world, settings):
    from billing import tasks
    from config.celery import app as celery_app

    entry = settings.CELERY_BEAT_SCHEDULE["reservations-purge"]
    celery_app.loader.import_default_modules()
    assert entry["task"] == tasks.reservations_purge.name
    assert entry["task"] in celery_app.tasks
    closed = ledger.credit_reserve(
        tenant_id=world.tenant.pk, amount_micros=10, source="req:gone", ttl_seconds=60
    )
    ledger.credit_release(reservation_id=closed.reservation_id)
    Reservation.objects.update(closed_at=timezone.now() - timedelta(days=2))
    settings.RESERVATION_RETENTION_DAYS = 0  # keep forever
    tasks.reservations_purge()
    assert Reservation.objects.exists()
    settings.RESERVATION_RETENTION_DAYS = 1
    tasks.reservations_purge()
    assert not Reservation.objects.exists()
