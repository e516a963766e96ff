"""Holds taken ahead: a sync call's settle holds credit for the caller's next call.

Through ``marketplace.inference._charged`` with the site call faked; the integration
tests (``tests/integration/test_spend_control.py``) run the same over real HTTP.
"""

from datetime import timedelta

import pytest
from django.utils import timezone

from billing import ahead, ledger
from billing.models import CreditAccount, LedgerEntry, Reservation
from marketplace import inference
from marketplace.models import CatalogModel
from tests.factories import api_key_make, dispatched_make, sync_charge
from workers import triton
from workers.dispatch import Dispatched

pytestmark = pytest.mark.django_db(transaction=True)  # holds use their own connection

PRICE = 10


@pytest.fixture
def model(monkeypatch) -> CatalogModel:
    monkeypatch.setattr(inference, "dispatch", lambda **kwargs: dispatched_make())
    return CatalogModel.objects.create(slug="ahead-echo", name="echo", price_micros=PRICE)


@pytest.fixture
def own_holds(monkeypatch) -> list[str]:
    """The sources of the holds calls took for themselves (not ahead)."""
    taken: list[str] = []
    reserve = ledger.credit_reserve

    def counted(**kwargs: object) -> ledger.Hold:
        hold = reserve(**kwargs)  # type: ignore[arg-type]
        taken.append(hold.source)
        return hold

    monkeypatch.setattr(ledger, "credit_reserve", counted)
    return taken


def _call(world, model: CatalogModel, key=None) -> None:
    sync_charge(world.tenant, key or world.key, model)


def _account(world) -> CreditAccount:
    return CreditAccount.objects.get(tenant=world.tenant)


def test_each_call_after_the_first_runs_on_the_hold_its_predecessor_took(world, model, own_holds):
    balance = _account(world).balance_micros
    for _ in range(5):
        _call(world, model)
    assert len(own_holds) == 1  # only the first call held for itself
    usage = LedgerEntry.objects.filter(tenant=world.tenant, kind="usage")
    assert usage.count() == 5
    assert len(set(usage.values_list("source", flat=True))) == 5
    (parked,) = Reservation.objects.filter(tenant=world.tenant, status="open")
    account = _account(world)
    assert (account.balance_micros, account.reserved_micros) == (balance - 5 * PRICE, PRICE)
    assert parked.amount_micros == PRICE
    assert ledger.account_check(account=account) == []


def test_a_failed_call_releases_the_hold_it_ran_on_and_takes_none(world, model, monkeypatch):
    _call(world, model)
    assert _account(world).reserved_micros == PRICE  # parked for the next call

    def unavailable(**kwargs: object) -> Dispatched:
        raise triton.TritonUnavailable("site down")

    monkeypatch.setattr(inference, "dispatch", unavailable)
    with pytest.raises(triton.TritonUnavailable):
        _call(world, model)
    account = _account(world)
    assert account.reserved_micros == 0
    assert ledger.account_check(account=account) == []
    assert Reservation.objects.filter(tenant=world.tenant, status="released").count() == 1


def test_near_exhaustion_every_call_holds_for_itself(world, model, own_holds, settings):
    """Below SYNC_HOLD_AHEAD_MIN_CALLS more calls' worth, nothing is parked in a process
    where another process's call could not use it."""
    settings.SYNC_HOLD_AHEAD_MIN_CALLS = _account(world).available_micros // PRICE
    for _ in range(3):
        _call(world, model)
    assert len(own_holds) == 3
    assert _account(world).reserved_micros == 0


def test_no_hold_ahead_when_turned_off(world, model, own_holds, settings):
    settings.SYNC_HOLD_AHEAD_MIN_CALLS = 0
    for _ in range(3):
        _call(world, model)
    assert len(own_holds) == 3
    assert _account(world).reserved_micros == 0


def test_no_hold_ahead_for_a_capped_key(world, model, own_holds):
    """A capped key's month is held call by call."""
    key, _ = api_key_make(world.tenant, monthly_spend_cap_micros=1_000_000)
    for _ in range(3):
        _call(world, model, key=key)
    assert len(own_holds) == 3
    assert _account(world).reserved_micros == 0


def test_a_hold_past_its_usable_time_is_left_to_the_expiry_sweep(world, model, own_holds, settings):
    settings.SYNC_HOLD_AHEAD_SECONDS = 0  # parked holds are stale at once
    _call(world, model)
    _call(world, model)
    assert len(own_holds) == 2  # the second call could not use the first's
    assert _account(world).reserved_micros == 2 * PRICE  # both parked holds still held
    Reservation.objects.filter(tenant=world.tenant, status="open").update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert ledger.reservations_release_expired() == 2
    account = _account(world)
    assert account.reserved_micros == 0
    assert ledger.account_check(account=account) == []


# ---- The shelf -------------------------------------------------------------------------


def _hold(pk: int, amount: int) -> ledger.Hold:
    return ledger.Hold(reservation_id=pk, amount_micros=amount, source=f"req:{pk}")


def test_the_shelf_hands_out_a_hold_that_covers_the_call_once():
    ahead.clear()
    caller = (1, 2)
    ahead.put(caller, _hold(1, 5), usable_seconds=60)
    ahead.put(caller, _hold(2, 50), usable_seconds=60)
    assert ahead.take(caller, 20) == _hold(2, 50)
    assert ahead.take(caller, 20) is None  # the 5 µ$ hold does not cover it...
    assert ahead.take((1, None), 1) is None  # ...nor is another caller's taken
    assert ahead.take(caller, 5) == _hold(1, 5)
    assert ahead.take(caller, 5) is None


def test_the_shelf_is_bounded_and_not_inherited_by_a_forked_child(monkeypatch):
    ahead.clear()
    caller = (1, None)
    for pk in range(ahead.PER_CALLER):
        assert ahead.has_room(caller)
        ahead.put(caller, _hold(pk, 5), usable_seconds=60)
    assert not ahead.has_room(caller)
    monkeypatch.setattr(ahead._shelf, "pid", -1)  # as seen from a forked child
    assert ahead.take(caller, 5) is None
    assert ahead.has_room(caller)
