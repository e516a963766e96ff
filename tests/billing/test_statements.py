"""The ledger's statement pool: warm connections reused, dead ones dropped, and
transactions left to Django's connection."""

import pytest
from django.db import OperationalError, connection, transaction

from billing import ledger, statements
from billing.models import CreditAccount, LedgerEntry


def _hold_and_settle(world, source: str) -> None:
    hold = ledger.credit_reserve(
        tenant_id=world.tenant.pk,
        amount_micros=100,
        source=source,
        ttl_seconds=60,
        using="holds",
    )
    ledger.credit_settle(hold=hold, cost_micros=40, units=1, model_slug="m", source=source)


def _backend(alias: str) -> int:
    (cursor,) = statements._pools[alias].idle
    return cursor.connection.info.backend_pid


@pytest.mark.django_db(transaction=True)
def test_calls_outside_a_transaction_reuse_one_warm_connection_per_alias(world):
    _hold_and_settle(world, "req:s1")
    holds, default = _backend("holds"), _backend("default")
    assert holds != default != connection.connection.info.backend_pid
    _hold_and_settle(world, "req:s2")
    assert (_backend("holds"), _backend("default")) == (holds, default)
    account = CreditAccount.objects.get(tenant=world.tenant)
    assert (account.reserved_micros, ledger.account_check(account=account)) == (0, [])
    assert LedgerEntry.objects.filter(kind="usage", source__startswith="req:s").count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_dead_connection_fails_one_call_as_an_outage_then_the_pool_reconnects(world):
    _hold_and_settle(world, "req:d1")
    dead = _backend("holds")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [dead])
    with pytest.raises(OperationalError):  # Django's: the API answers it with 503
        _hold_and_settle(world, "req:d2")
    assert statements._pools["holds"].idle == []
    _hold_and_settle(world, "req:d3")
    assert _backend("holds") != dead
    assert not LedgerEntry.objects.filter(source="req:d2").exists()


def _charge_then_fail(world) -> None:
    with transaction.atomic():
        hold = ledger.credit_reserve(
            tenant_id=world.tenant.pk, amount_micros=100, source="req:t1", ttl_seconds=60
        )
        ledger.credit_settle(hold=hold, cost_micros=40, units=1, model_slug="m", source="req:t1")
        raise RuntimeError("the caller's transaction fails after the charge")


@pytest.mark.django_db(transaction=True)
def test_inside_a_transaction_statements_roll_back_with_it(world):
    before = CreditAccount.objects.get(tenant=world.tenant).balance_micros
    with pytest.raises(RuntimeError):
        _charge_then_fail(world)
    assert CreditAccount.objects.get(tenant=world.tenant).balance_micros == before
    assert not LedgerEntry.objects.filter(source="req:t1").exists()
    assert "default" not in statements._pools


@pytest.mark.django_db(transaction=True)
def test_a_connection_older_than_conn_max_age_is_replaced(world, monkeypatch):
    _hold_and_settle(world, "req:m1")
    pool = statements._pools["default"]
    old = _backend("default")
    monkeypatch.setattr(pool, "max_age", 0.0)  # as if CONN_MAX_AGE had passed
    _hold_and_settle(world, "req:m2")
    assert pool.idle == []  # given back expired: closed, not kept
    monkeypatch.setattr(pool, "max_age", 300.0)
    _hold_and_settle(world, "req:m3")
    assert _backend("default") != old
