"""Credit services: reserve before a call, settle or release after, book other movements.

Be careful changing this module: it is where money is kept exact. Every function
keeps the invariants in ``billing/models.py`` in one transaction, and every write
of a ledger entry is idempotent on (account, kind, source).

On PostgreSQL, reserving (for keys without a monthly cap), settling and releasing
are each one SQL statement — one round trip on the hot path of every sync request —
run prepared by ``billing.statements``. A sync settle may also hold for the caller's
next call (``Ahead``; ``billing.ahead`` keeps it), which then needs no reserve.
Elsewhere (the SQLite demo, capped keys) the same effects are made by the ORM in a
transaction; the tests run both.
"""

import functools
import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import django.dispatch
from django.conf import settings
from django.db import IntegrityError, connections, transaction
from django.db.models import F, Sum
from django.utils import timezone

from . import money, statements
from .exceptions import InsufficientCredits, KeyBudgetExceeded
from .models import (
    CreditAccount,
    GrantMirror,
    KeySpend,
    LedgerEntry,
    Reservation,
    UsageRecord,
)

logger = logging.getLogger(__name__)

# Sent after commit when an account's available balance first falls below its
# threshold (once per crossing). ``marketplace`` listens and e-mails the tenant.
low_balance = django.dispatch.Signal()  # kwargs: tenant_id, available_micros, threshold_micros

#: Set by tests to run the portable path on PostgreSQL too.
force_portable = False


@dataclass(frozen=True, slots=True)
class Hold:
    """An open reservation, as the caller needs it to settle or release."""

    reservation_id: int
    amount_micros: int
    source: str = ""


@dataclass(frozen=True, slots=True)
class Ahead:
    """Ask a settle to hold ``amount_micros`` for the caller's next call as well.

    Taken only while the account would still have ``SYNC_HOLD_AHEAD_MIN_CALLS`` more
    such holds' worth available afterwards, so near exhaustion every call holds
    for itself and "exactly K of N calls run" stays exact.
    """

    source: str
    amount_micros: int
    ttl_seconds: float


@dataclass(frozen=True, slots=True)
class Settled:
    usage_record_id: int | None
    account_id: int
    tenant_id: int
    balance_micros: int
    reserved_micros: int
    threshold_micros: int
    alerted: bool
    next_hold: Hold | None = None


def _fast() -> bool:
    return _on_postgresql() and not force_portable


@functools.cache
def _on_postgresql() -> bool:
    return connections["default"].vendor == "postgresql"


def _month(now: datetime) -> date:
    return date(now.year, now.month, 1)


def account_open(*, tenant_id: int) -> CreditAccount:
    """The tenant's account, created (empty) if it has none."""
    account, _ = CreditAccount.objects.get_or_create(tenant_id=tenant_id)
    return account


_RESERVE_SQL = """
WITH acct AS (
    UPDATE billing_creditaccount
       SET reserved_micros = reserved_micros + %(amount)s
     WHERE tenant_id = %(tenant)s AND balance_micros - reserved_micros >= %(amount)s
 RETURNING id
)
INSERT INTO billing_reservation
       (account_id, tenant_id, source, amount_micros, api_key_id, key_month, status,
        created_at, expires_at)
SELECT id, %(tenant)s, %(source)s, %(amount)s, %(key)s, NULL, 'open', %(now)s, %(expires)s
  FROM acct
RETURNING id
"""


def credit_reserve(
    *,
    tenant_id: int,
    amount_micros: int,
    source: str,
    ttl_seconds: float,
    api_key_id: int | None = None,
    key_cap_micros: int | None = None,
    using: str = "default",
) -> Hold:
    """Hold ``amount_micros`` of the tenant's available credit (and of the key's cap).

    Raises ``InsufficientCredits`` when balance − open reservations does not cover it,
    ``KeyBudgetExceeded`` when the key's spend this month plus its open reservations
    would pass its cap. Either way nothing is written. ``using="holds"`` writes the
    hold without waiting for the WAL flush (see ``config.settings.base.databases``);
    only for holds outside any transaction of the default connection.
    """
    if amount_micros < 0:
        raise ValueError("a reservation cannot be negative")
    now = timezone.now()
    expires = now + timedelta(seconds=ttl_seconds)
    if _fast() and key_cap_micros is None:
        row = statements.run(
            using,
            _RESERVE_SQL,
            {
                "amount": amount_micros,
                "tenant": tenant_id,
                "source": source,
                "key": api_key_id,
                "now": now,
                "expires": expires,
            },
        )
        if row is None:
            raise InsufficientCredits("Not enough credit for this call; buy more credits.")
        return Hold(reservation_id=row[0], amount_micros=amount_micros, source=source)
    return _reserve_portable(
        tenant_id=tenant_id,
        amount_micros=amount_micros,
        source=source,
        expires=expires,
        api_key_id=api_key_id,
        key_cap_micros=key_cap_micros,
        now=now,
    )


def _reserve_portable(
    *,
    tenant_id: int,
    amount_micros: int,
    source: str,
    expires: datetime,
    api_key_id: int | None,
    key_cap_micros: int | None,
    now: datetime,
) -> Hold:
    capped = key_cap_micros is not None and api_key_id is not None
    month = _month(now) if capped else None
    if capped and month is not None and api_key_id is not None and key_cap_micros is not None:
        KeySpend.objects.bulk_create(
            [KeySpend(api_key_id=api_key_id, month=month)], ignore_conflicts=True
        )
    # Lock order everywhere: the account row, then the key's month row. Settling
    # and releasing take them in the same order, so these can never deadlock.
    with transaction.atomic():
        covered = CreditAccount.objects.filter(
            tenant_id=tenant_id,
            balance_micros__gte=F("reserved_micros") + amount_micros,
        ).update(reserved_micros=F("reserved_micros") + amount_micros)
        if not covered:
            raise InsufficientCredits("Not enough credit for this call; buy more credits.")
        if month is not None and api_key_id is not None and key_cap_micros is not None:
            within_cap = KeySpend.objects.filter(
                api_key_id=api_key_id,
                month=month,
                spent_micros__lte=key_cap_micros - amount_micros - F("reserved_micros"),
            ).update(reserved_micros=F("reserved_micros") + amount_micros)
            if not within_cap:
                raise KeyBudgetExceeded("This API key has reached its monthly spend cap.")
        reservation = Reservation.objects.create(
            account=CreditAccount.objects.only("pk").get(tenant_id=tenant_id),
            tenant_id=tenant_id,
            source=source,
            amount_micros=amount_micros,
            api_key_id=api_key_id,
            key_month=month,
            expires_at=expires,
        )
    return Hold(reservation_id=reservation.pk, amount_micros=amount_micros, source=source)


_SETTLE_SQL = """
WITH r AS (
    UPDATE billing_reservation
       SET status = 'settled', settled_micros = %(cost)s, closed_at = %(now)s
     WHERE id = %(reservation)s AND status = 'open'
 RETURNING account_id, tenant_id, amount_micros, api_key_id, key_month
), o AS (
    -- The account as it stands, locked (so the update below writes from the same
    -- row): does it cover the next call's hold and then ahead_floor more of them?
    SELECT c.id,
           %(ahead)s > 0 AND r.key_month IS NULL
           AND c.balance_micros - %(cost)s - (c.reserved_micros - r.amount_micros)
               >= %(ahead)s + %(ahead_floor)s AS ahead
      FROM billing_creditaccount c JOIN r ON c.id = r.account_id
       FOR NO KEY UPDATE OF c
), e AS (
    INSERT INTO billing_ledgerentry
           (account_id, tenant_id, kind, source, amount_micros, model_slug, site_slug,
            api_key_id, units, reason, created_at)
    SELECT account_id, tenant_id, 'usage', %(source)s, -%(cost)s, %(model)s, %(site)s,
           api_key_id, %(units)s, '', %(now)s
      FROM r
 RETURNING id, account_id, tenant_id, api_key_id
), a AS (
    UPDATE billing_creditaccount c
       SET balance_micros = c.balance_micros - %(cost)s,
           reserved_micros = c.reserved_micros - r.amount_micros
                             + CASE WHEN o.ahead THEN %(ahead)s ELSE 0 END
      FROM r, e, o
     WHERE c.id = r.account_id
 RETURNING c.id, c.tenant_id, c.balance_micros, c.reserved_micros,
           c.low_balance_threshold_micros, c.low_balance_alerted
), n AS (
    INSERT INTO billing_reservation
           (account_id, tenant_id, source, amount_micros, api_key_id, key_month, status,
            created_at, expires_at)
    SELECT r.account_id, r.tenant_id, %(ahead_source)s, %(ahead)s, r.api_key_id, NULL,
           'open', %(now)s, %(ahead_expires)s
      FROM r, o, a
     WHERE o.ahead
 RETURNING id
), k AS (
    UPDATE billing_keyspend s
       SET spent_micros = s.spent_micros + %(cost)s,
           reserved_micros = s.reserved_micros - r.amount_micros
      FROM r, a
     WHERE s.api_key_id = r.api_key_id AND s.month = r.key_month
 RETURNING 1
), u AS (
    INSERT INTO billing_usagerecord
           (account_id, tenant_id, ledger_entry_id, model_slug, api_key_id, units,
            cost_micros, created_at, attempts, last_error)
    SELECT account_id, tenant_id, id, %(model)s, api_key_id, %(units)s, %(cost)s, %(now)s,
           0, ''
      FROM e
 RETURNING id
)
SELECT a.id, a.tenant_id, a.balance_micros, a.reserved_micros,
       a.low_balance_threshold_micros, a.low_balance_alerted, (SELECT id FROM u),
       (SELECT count(*) FROM k), (SELECT id FROM n)
  FROM a
"""


def credit_settle(
    *,
    hold: Hold,
    cost_micros: int,
    units: int,
    model_slug: str,
    source: str,
    site_slug: str = "",
    ahead: Ahead | None = None,
) -> Settled | None:
    """Charge the actual cost of a finished call and free the rest of its hold.

    Writes the usage ledger entry, its meter-event outbox row and the account in one
    statement (or transaction). The charge is clamped to the hold, which was the
    call's worst case. Returns None if the hold was already settled or released, so
    a second settle of the same call charges nothing.

    With ``ahead`` (a sync caller without a monthly key cap, on PostgreSQL) the same
    statement also holds credit for the caller's next call, returned as
    ``next_hold``, when the account covers it with ``SYNC_HOLD_AHEAD_MIN_CALLS``
    more to spare: the next call then starts without a round trip of its own.
    """
    cost = max(0, min(cost_micros, hold.amount_micros))
    now = timezone.now()
    if _fast():
        ahead_micros = ahead.amount_micros if ahead else 0
        row = statements.run(
            "default",
            _SETTLE_SQL,
            {
                "cost": cost,
                "now": now,
                "reservation": hold.reservation_id,
                "source": source,
                "model": model_slug,
                "site": site_slug,
                "units": units,
                "ahead": ahead_micros,
                "ahead_floor": ahead_micros * settings.SYNC_HOLD_AHEAD_MIN_CALLS,
                "ahead_source": ahead.source if ahead else "",
                "ahead_expires": now + timedelta(seconds=ahead.ttl_seconds if ahead else 0),
            },
        )
        if row is None:
            return None
        next_hold = None
        if ahead is not None and row[8] is not None:
            next_hold = Hold(
                reservation_id=row[8], amount_micros=ahead.amount_micros, source=ahead.source
            )
        settled = Settled(
            usage_record_id=row[6],
            account_id=row[0],
            tenant_id=row[1],
            balance_micros=row[2],
            reserved_micros=row[3],
            threshold_micros=row[4],
            alerted=row[5],
            next_hold=next_hold,
        )
    else:
        settled_or_none = _settle_portable(
            hold=hold,
            cost=cost,
            units=units,
            model_slug=model_slug,
            site_slug=site_slug,
            source=source,
            now=now,
        )
        if settled_or_none is None:
            return None
        settled = settled_or_none
    _low_balance_check(settled)
    return settled


def _settle_portable(
    *,
    hold: Hold,
    cost: int,
    units: int,
    model_slug: str,
    site_slug: str,
    source: str,
    now: datetime,
) -> Settled | None:
    with transaction.atomic():
        reservation = (
            Reservation.objects.select_for_update()
            .filter(pk=hold.reservation_id, status=Reservation.Status.OPEN)
            .first()
        )
        if reservation is None:
            return None
        reservation.status = Reservation.Status.SETTLED
        reservation.settled_micros = cost
        reservation.closed_at = now
        reservation.save(update_fields=["status", "settled_micros", "closed_at"])
        entry = LedgerEntry.objects.create(
            account_id=reservation.account_id,
            tenant_id=reservation.tenant_id,
            kind=LedgerEntry.Kind.USAGE,
            source=source,
            amount_micros=-cost,
            model_slug=model_slug,
            site_slug=site_slug,
            api_key_id=reservation.api_key_id,
            units=units,
        )
        CreditAccount.objects.filter(pk=reservation.account_id).update(
            balance_micros=F("balance_micros") - cost,
            reserved_micros=F("reserved_micros") - reservation.amount_micros,
        )
        if reservation.key_month is not None and reservation.api_key_id is not None:
            KeySpend.objects.filter(
                api_key_id=reservation.api_key_id, month=reservation.key_month
            ).update(
                spent_micros=F("spent_micros") + cost,
                reserved_micros=F("reserved_micros") - reservation.amount_micros,
            )
        usage = UsageRecord.objects.create(
            account_id=reservation.account_id,
            tenant_id=reservation.tenant_id,
            ledger_entry=entry,
            model_slug=model_slug,
            api_key_id=reservation.api_key_id,
            units=units,
            cost_micros=cost,
            created_at=now,
        )
        account = CreditAccount.objects.get(pk=reservation.account_id)
    return Settled(
        usage_record_id=usage.pk,
        account_id=account.pk,
        tenant_id=account.tenant_id,
        balance_micros=account.balance_micros,
        reserved_micros=account.reserved_micros,
        threshold_micros=account.low_balance_threshold_micros,
        alerted=account.low_balance_alerted,
    )


_RELEASE_SQL = """
WITH r AS (
    UPDATE billing_reservation SET status = 'released', closed_at = %(now)s
     WHERE id = %(reservation)s AND status = 'open'
 RETURNING account_id, amount_micros, api_key_id, key_month
), a AS (
    UPDATE billing_creditaccount c SET reserved_micros = c.reserved_micros - r.amount_micros
      FROM r WHERE c.id = r.account_id
 RETURNING 1
), k AS (
    UPDATE billing_keyspend s SET reserved_micros = s.reserved_micros - r.amount_micros
      FROM r, a WHERE s.api_key_id = r.api_key_id AND s.month = r.key_month
 RETURNING 1
)
SELECT (SELECT count(*) FROM a), (SELECT count(*) FROM k)
"""


def credit_release(*, reservation_id: int, using: str = "default") -> bool:
    """Free a hold without charging (the call failed or was canceled). Idempotent.

    A release lost to a crash (``using="holds"``) is redone by the expiry sweep.
    """
    now = timezone.now()
    if _fast():
        row = statements.run(using, _RELEASE_SQL, {"now": now, "reservation": reservation_id})
        return bool(row and row[0])
    with transaction.atomic():
        reservation = (
            Reservation.objects.select_for_update()
            .filter(pk=reservation_id, status=Reservation.Status.OPEN)
            .first()
        )
        if reservation is None:
            return False
        reservation.status = Reservation.Status.RELEASED
        reservation.closed_at = now
        reservation.save(update_fields=["status", "closed_at"])
        CreditAccount.objects.filter(pk=reservation.account_id).update(
            reserved_micros=F("reserved_micros") - reservation.amount_micros
        )
        if reservation.key_month is not None and reservation.api_key_id is not None:
            KeySpend.objects.filter(
                api_key_id=reservation.api_key_id, month=reservation.key_month
            ).update(reserved_micros=F("reserved_micros") - reservation.amount_micros)
    return True


def reservations_release_expired(*, limit: int = 1000) -> int:
    """Release holds whose call never settled (a crashed process). Run by beat."""
    expired = list(
        Reservation.objects.filter(closed_at__isnull=True, expires_at__lt=timezone.now())
        .order_by("expires_at")
        .values_list("pk", flat=True)[:limit]
    )
    released = sum(credit_release(reservation_id=pk) for pk in expired)
    if released:
        logger.warning("released %s abandoned reservations", released)
    return released


def reservations_purge_closed(
    *, older_than_days: int, batch: int = 5_000, max_batches: int = 20
) -> int:
    """Delete holds closed more than ``older_than_days`` ago, oldest first; return how many.

    A closed hold is history the ledger keeps anyway (what it charged is a usage
    entry); kept forever, the table would grow by a row with every sync call. Open
    holds are never touched. Run by beat (``RESERVATION_RETENTION_DAYS``).
    """
    cutoff = timezone.now() - timedelta(days=older_than_days)
    purged = 0
    for _ in range(max_batches):
        ids = list(
            Reservation.objects.filter(closed_at__lt=cutoff)
            .order_by("pk")
            .values_list("pk", flat=True)[:batch]
        )
        if not ids:
            break
        purged += Reservation.objects.filter(pk__in=ids, closed_at__lt=cutoff).delete()[0]
    return purged


#: Credit given rather than bought; mirrored in Stripe so invoices count it.
_FREE_CREDIT = frozenset({LedgerEntry.Kind.GRANT, LedgerEntry.Kind.ADJUSTMENT})


def entry_book(
    *,
    tenant_id: int,
    kind: LedgerEntry.Kind,
    source: str,
    amount_micros: int,
    reason: str = "",
    created_by_id: int | None = None,
) -> tuple[LedgerEntry, bool]:
    """Book a purchase, refund, adjustment, grant or expiry exactly once per source.

    Returns the entry and whether it is new; a second call with the same
    (kind, source) changes nothing. Free credit (a grant, a positive adjustment) gets
    its Stripe mirror's outbox row in the same transaction.
    """
    account = account_open(tenant_id=tenant_id)
    with transaction.atomic():
        try:
            with transaction.atomic():
                entry = LedgerEntry.objects.create(
                    account=account,
                    tenant_id=tenant_id,
                    kind=kind,
                    source=source,
                    amount_micros=amount_micros,
                    reason=reason,
                    created_by_id=created_by_id,
                )
        except IntegrityError:
            return LedgerEntry.objects.get(account=account, kind=kind, source=source), False
        CreditAccount.objects.filter(pk=account.pk).update(
            balance_micros=F("balance_micros") + amount_micros
        )
        free_cents = money.micros_to_cents(amount_micros) if kind in _FREE_CREDIT else 0
        if free_cents > 0:
            GrantMirror.objects.create(ledger_entry=entry, account=account, amount_cents=free_cents)
        if amount_micros > 0:
            # Topped up: the next fall below the threshold alerts again.
            CreditAccount.objects.filter(
                pk=account.pk,
                low_balance_alerted=True,
                balance_micros__gte=F("reserved_micros") + F("low_balance_threshold_micros"),
            ).update(low_balance_alerted=False)
    return entry, True


def _low_balance_check(settled: Settled) -> None:
    """Alert once when the available balance first falls below the threshold."""
    available = settled.balance_micros - settled.reserved_micros
    if settled.alerted or available >= settled.threshold_micros:
        return
    flipped = CreditAccount.objects.filter(pk=settled.account_id, low_balance_alerted=False).update(
        low_balance_alerted=True
    )
    if flipped:
        transaction.on_commit(
            lambda: low_balance.send(
                sender=CreditAccount,
                tenant_id=settled.tenant_id,
                available_micros=available,
                threshold_micros=settled.threshold_micros,
            )
        )


def account_check(*, account: CreditAccount) -> list[str]:
    """Differences between the cached columns and the rows they summarise (empty: none)."""
    problems = []
    ledger_sum = account.entries.aggregate(total=Sum("amount_micros"))["total"] or 0
    if ledger_sum != account.balance_micros:
        problems.append(f"balance {account.balance_micros} != ledger sum {ledger_sum}")
    open_sum = (
        Reservation.objects.filter(account=account, status=Reservation.Status.OPEN).aggregate(
            total=Sum("amount_micros")
        )["total"]
        or 0
    )
    if open_sum != account.reserved_micros:
        problems.append(f"reserved {account.reserved_micros} != open reservations {open_sum}")
    return problems
