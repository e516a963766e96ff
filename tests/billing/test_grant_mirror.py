"""Free credit reaches Stripe as promotional credit grants, so invoices count it.

Against the project's Stripe-compatible server, through the official library.
"""

import json
import time
import urllib.parse
import urllib.request

import pytest

from billing import ledger, metering, money, payments, stripe_gateway
from billing.models import GrantMirror, LedgerEntry

pytestmark = pytest.mark.django_db


def _grants(customer_id: str) -> list:
    return list(stripe_gateway.client().v1.billing.credit_grants.list({"customer": customer_id}))


def _book(world, kind: LedgerEntry.Kind, source: str, micros: int) -> LedgerEntry:
    entry, _ = ledger.entry_book(
        tenant_id=world.tenant.pk, kind=kind, source=source, amount_micros=micros
    )
    return entry


def test_free_credit_gets_an_outbox_row_with_its_entry_and_nothing_else_does(world):
    grant = _book(world, LedgerEntry.Kind.GRANT, "staff:g1", 7_505_000)
    _book(world, LedgerEntry.Kind.GRANT, "staff:g1", 7_505_000)  # a replay books nothing
    raise_ = _book(world, LedgerEntry.Kind.ADJUSTMENT, "staff:a1", 2_000_000)
    _book(world, LedgerEntry.Kind.ADJUSTMENT, "staff:a2", -3_000_000)
    _book(world, LedgerEntry.Kind.PURCHASE, "purchase:1", 10_000_000)
    _book(world, LedgerEntry.Kind.GRANT, "staff:tiny", 4_000)  # rounds to 0 cents

    mirrors = {m.ledger_entry_id: m.amount_cents for m in GrantMirror.objects.all()}
    world_grant = LedgerEntry.objects.get(source="test-grant").pk  # the fixture's $100
    assert mirrors == {world_grant: 10_000, grant.pk: 751, raise_.pk: 200}
    assert money.micros_to_cents(7_505_000) == 751


def test_mirrors_wait_for_a_customer_then_go_once_as_promotional_grants(world, stripe_server):
    entry = _book(world, LedgerEntry.Kind.GRANT, "staff:g2", 5_000_000)
    assert payments.grants_mirror() == {"sent": 0, "failed": 0}  # no Stripe customer yet

    account = payments.customer_ensure(
        tenant_id=world.tenant.pk, tenant_name=world.tenant.name, email="o@example.com"
    )
    assert payments.grants_mirror() == {"sent": 2, "failed": 0}  # the fixture's and this
    assert payments.grants_mirror() == {"sent": 0, "failed": 0}

    grants = {g.metadata["ledger_entry_id"]: g for g in _grants(account.stripe_customer_id)}
    assert set(grants) == {str(entry.pk), str(LedgerEntry.objects.get(source="test-grant").pk)}
    mirrored = grants[str(entry.pk)]
    assert mirrored.category == "promotional"
    assert mirrored.amount.monetary.value == 500
    mirror = GrantMirror.objects.get(ledger_entry=entry)
    assert (mirror.stripe_credit_grant_id, mirror.attempts) == (mirrored.id, 0)


def test_a_failed_mirror_is_counted_and_retried(world, stripe_server, settings):
    payments.customer_ensure(
        tenant_id=world.tenant.pk, tenant_name=world.tenant.name, email="o@example.com"
    )
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"  # nothing listens there
    stripe_gateway.client.cache_clear()
    assert payments.grants_mirror() == {"sent": 0, "failed": 1}
    mirror = GrantMirror.objects.get()
    assert (mirror.attempts, mirror.stripe_credit_grant_id) == (1, "")
    assert mirror.last_error

    settings.STRIPE_API_BASE = stripe_server.url
    stripe_gateway.client.cache_clear()
    assert payments.grants_mirror() == {"sent": 1, "failed": 0}


@pytest.mark.django_db(transaction=True)  # usage_send tidies connections as a task does
def test_usage_paid_with_granted_credit_leaves_nothing_to_pay_on_the_invoice(world, stripe_server):
    """The fixture granted $100; the tenant also buys nothing. Its usage is invoiced
    and entirely covered by the mirrored grant, as the ledger says it was."""
    account = payments.customer_ensure(
        tenant_id=world.tenant.pk, tenant_name=world.tenant.name, email="o@example.com"
    )
    started = int(time.time()) - 5
    for n in range(3):
        hold = ledger.credit_reserve(
            tenant_id=world.tenant.pk, amount_micros=2_000_000, source=f"req:{n}", ttl_seconds=60
        )
        ledger.credit_settle(
            hold=hold, cost_micros=1_250_000, units=1, model_slug="echo", source=f"req:{n}"
        )
    while metering.usage_send()["sent"]:
        pass
    assert payments.grants_mirror()["sent"] == 1

    request = urllib.request.Request(
        f"{stripe_server.url}/_test/billing/close_period",
        data=urllib.parse.urlencode(
            {
                "customer": account.stripe_customer_id,
                "period_start": started,
                "period_end": int(time.time()) + 60,
            }
        ).encode(),
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        (invoice,) = json.loads(response.read())["data"]
    assert invoice["subtotal"] == 375  # 3 × $1.25
    assert invoice["amount_due"] == 0
