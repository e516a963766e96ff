"""The meter-event sender runs alone: a second run while one sends sends nothing."""

import psycopg
import pytest
from django.db import connection

from billing import ledger, metering, payments
from billing.models import UsageRecord

pytestmark = pytest.mark.django_db(transaction=True)  # usage_send tidies connections


def _charge(world, source: str) -> None:
    hold = ledger.credit_reserve(
        tenant_id=world.tenant.pk, amount_micros=1_000, source=source, ttl_seconds=60
    )
    ledger.credit_settle(hold=hold, cost_micros=700, units=1, model_slug="echo", source=source)


def test_a_run_while_another_sends_sends_nothing_and_the_next_sends_all(world, stripe_server):
    payments.customer_ensure(
        tenant_id=world.tenant.pk, tenant_name=world.tenant.name, email="o@example.com"
    )
    for n in range(3):
        _charge(world, f"req:{n}")
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    with psycopg.connect(**params, autocommit=True) as other_sender:
        other_sender.execute("SELECT pg_advisory_lock(%s)", [metering.SEND_LOCK_KEY])
        assert metering.usage_send() == {"sent": 0, "failed": 0, "busy": 1}
        assert UsageRecord.objects.filter(sent_at__isnull=True).count() == 3
        other_sender.execute("SELECT pg_advisory_unlock(%s)", [metering.SEND_LOCK_KEY])

    assert metering.usage_send() == {"sent": 3, "failed": 0}
    assert not UsageRecord.objects.filter(sent_at__isnull=True).exists()
    with connection.cursor() as cursor:  # the lock was given back
        cursor.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        assert cursor.fetchone() == (0,)
