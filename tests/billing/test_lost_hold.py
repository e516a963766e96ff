"""A sync call whose hold vanished before its charge is not served for free.

Holds are written without waiting for the WAL flush; a PostgreSQL crash can lose
one while the call runs (or a stalled process can outlive its expiry). The settle
then finds nothing to charge against: the call answers 503 and nothing is booked.
"""

import pytest

from billing import ledger
from billing.models import CreditAccount, LedgerEntry, Reservation, UsageRecord
from marketplace import inference
from marketplace.exceptions import ChargeNotRecorded
from marketplace.models import CatalogModel
from tests.factories import dispatched_make, sync_charge
from workers.dispatch import Dispatched

pytestmark = pytest.mark.django_db(transaction=True)  # holds use their own connection


def test_a_call_whose_hold_was_lost_is_refused_and_books_nothing(world, monkeypatch):
    model = CatalogModel.objects.create(slug="lost-echo", name="echo", price_micros=10)
    balance = CreditAccount.objects.get(tenant=world.tenant).balance_micros

    def dispatch_while_the_hold_is_lost(**kwargs: object) -> Dispatched:
        (hold,) = Reservation.objects.filter(tenant=world.tenant, status="open")
        assert ledger.credit_release(reservation_id=hold.pk)  # as expiry would
        return dispatched_make()

    monkeypatch.setattr(inference, "dispatch", dispatch_while_the_hold_is_lost)
    with pytest.raises(ChargeNotRecorded):
        sync_charge(world.tenant, world.key, model)

    account = CreditAccount.objects.get(tenant=world.tenant)
    assert (account.balance_micros, account.reserved_micros) == (balance, 0)
    assert not LedgerEntry.objects.filter(tenant=world.tenant, kind="usage").exists()
    assert not UsageRecord.objects.filter(tenant=world.tenant).exists()


def test_an_ordinary_call_is_charged_once(world, monkeypatch):
    model = CatalogModel.objects.create(slug="kept-echo", name="echo", price_micros=10)
    monkeypatch.setattr(inference, "dispatch", lambda **kwargs: dispatched_make())
    _, usage, _ = sync_charge(world.tenant, world.key, model)
    entry = LedgerEntry.objects.get(tenant=world.tenant, kind="usage")
    assert entry.amount_micros == -usage.cost_micros
    assert entry.site_slug == dispatched_make().candidate.site_slug  # revenue per site


def test_the_api_answers_it_with_503_and_retry_after():
    from marketplace.api.errors import exception_handler

    response = exception_handler(ChargeNotRecorded("not charged"), {})
    assert response is not None
    assert (response.status_code, response.headers["Retry-After"]) == (503, "1")
    assert response.data["error"]["code"] == "service_unavailable"
