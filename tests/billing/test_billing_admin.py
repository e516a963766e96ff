"""Staff admin for credit: audited grants and adjustments, read-only history, money columns."""

import re
from datetime import timedelta

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing import ledger
from billing.models import CreditAccount, LedgerEntry, Reservation, UsageRecord
from marketplace.models import AuditEvent
from tests.factories import MembershipFactory, UserFactory
from tests.mfa import staff_force_login

pytestmark = pytest.mark.django_db

ACCOUNTS = "/admin/billing/creditaccount/"


@pytest.fixture
def staff():
    return UserFactory.create(is_staff=True, is_superuser=True)


@pytest.fixture
def staff_client(staff) -> Client:
    return staff_force_login(Client(), staff)


def _account(world) -> CreditAccount:
    return CreditAccount.objects.get(tenant=world.tenant)


def _form_token(html: str) -> str:
    match = re.search(r'name="token" value="([0-9a-f-]{36})"', html)
    assert match is not None, html
    return match.group(1)


def _apply(staff_client, action: str, account: CreditAccount, **data: str):
    selection = {"action": action, ACTION_CHECKBOX_NAME: [account.pk]}
    page = staff_client.post(ACCOUNTS, selection)
    assert page.status_code == 200
    token = _form_token(page.content.decode())
    return staff_client.post(ACCOUNTS, {**selection, "apply": "1", "token": token, **data})


def test_grant_asks_for_amount_and_reason_then_books_and_audits(world, staff, staff_client):
    account = _account(world)
    page = staff_client.post(
        ACCOUNTS, {"action": "grant_credit", ACTION_CHECKBOX_NAME: [account.pk]}
    )
    html = page.content.decode()
    assert "Amount (USD)" in html
    assert "Reason" in html
    assert LedgerEntry.objects.filter(tenant=world.tenant).count() == 1  # nothing booked yet

    response = _apply(
        staff_client, "grant_credit", account, amount_dollars="25.50", reason="Launch promotion"
    )
    assert response.status_code == 302
    entry = LedgerEntry.objects.get(
        tenant=world.tenant, kind=LedgerEntry.Kind.GRANT, created_by=staff
    )
    assert entry.amount_micros == 25_500_000
    assert entry.reason == "Launch promotion"
    assert entry.source.startswith("staff:")
    account.refresh_from_db()
    assert account.balance_micros == 125_500_000
    assert ledger.account_check(account=account) == []
    event = AuditEvent.objects.get(action="credit.granted")
    assert event.tenant == world.tenant
    assert event.actor == staff
    assert event.reason == "Launch promotion"
    assert event.target_type == "CreditAccount"
    assert event.target_id == str(account.pk)
    assert event.metadata == {"amount_micros": 25_500_000, "ledger_entry_id": entry.pk}


def test_adjustment_may_be_negative_and_sub_cent(world, staff, staff_client):
    account = _account(world)
    _apply(
        staff_client,
        "adjust_credit",
        account,
        amount_dollars="-1.000001",
        reason="Double-charged job 42",
    )
    entry = LedgerEntry.objects.get(tenant=world.tenant, kind=LedgerEntry.Kind.ADJUSTMENT)
    assert entry.amount_micros == -1_000_001
    assert entry.created_by == staff
    account.refresh_from_db()
    assert account.balance_micros == 98_999_999
    event = AuditEvent.objects.get(action="credit.adjusted")
    assert event.metadata["amount_micros"] == -1_000_001


@pytest.mark.parametrize(
    ("action", "data", "field"),
    [
        ("grant_credit", {"amount_dollars": "10", "reason": "   "}, "reason"),
        ("grant_credit", {"amount_dollars": "10"}, "reason"),
        ("grant_credit", {"amount_dollars": "-10", "reason": "oops"}, "amount_dollars"),
        ("adjust_credit", {"amount_dollars": "0", "reason": "nothing"}, "amount_dollars"),
        ("adjust_credit", {"amount_dollars": "1.0000001", "reason": "x"}, "amount_dollars"),
    ],
)
def test_invalid_credit_forms_book_nothing(world, staff_client, action, data, field):
    response = _apply(staff_client, action, _account(world), **data)
    assert response.status_code == 200
    assert field in response.context["form"].errors
    assert LedgerEntry.objects.filter(tenant=world.tenant).count() == 1
    assert not AuditEvent.objects.filter(action__startswith="credit.").exists()


def test_submitting_the_same_grant_form_twice_books_once(world, staff_client):
    account = _account(world)
    selection = {"action": "grant_credit", ACTION_CHECKBOX_NAME: [account.pk]}
    token = _form_token(staff_client.post(ACCOUNTS, selection).content.decode())
    data = {**selection, "apply": "1", "token": token, "amount_dollars": "5", "reason": "promo"}
    staff_client.post(ACCOUNTS, data)
    staff_client.post(ACCOUNTS, data)
    assert LedgerEntry.objects.filter(tenant=world.tenant, kind=LedgerEntry.Kind.GRANT).count() == 2
    assert AuditEvent.objects.filter(action="credit.granted").count() == 1
    account.refresh_from_db()
    assert account.balance_micros == 105_000_000


def test_grant_to_several_accounts_books_one_entry_each(world, other_world, staff_client):
    accounts = [_account(world), _account(other_world)]
    selection = {"action": "grant_credit", ACTION_CHECKBOX_NAME: [a.pk for a in accounts]}
    token = _form_token(staff_client.post(ACCOUNTS, selection).content.decode())
    staff_client.post(
        ACCOUNTS,
        {**selection, "apply": "1", "token": token, "amount_dollars": "1", "reason": "outage"},
    )
    for account in accounts:
        account.refresh_from_db()
        assert account.balance_micros == 101_000_000
    assert AuditEvent.objects.filter(action="credit.granted").count() == 2


def test_account_list_shows_money_columns(world, staff_client):
    ledger.credit_reserve(
        tenant_id=world.tenant.pk, amount_micros=1_500_000, source="r", ttl_seconds=60
    )
    html = staff_client.get(ACCOUNTS).content.decode()
    assert "$100.000000" in html  # balance
    assert "$1.500000" in html  # reserved
    assert "$98.500000" in html  # available


def test_account_change_page_never_writes_money_columns(world, staff_client):
    account = _account(world)
    page = staff_client.get(f"{ACCOUNTS}{account.pk}/change/").content.decode()
    assert 'name="balance_micros"' not in page
    assert 'name="reserved_micros"' not in page
    # A charge lands while the page is open; saving the settings must not undo it.
    LedgerEntry.objects.create(
        account=account,
        tenant=world.tenant,
        kind=LedgerEntry.Kind.USAGE,
        source="meanwhile",
        amount_micros=-7,
    )
    CreditAccount.objects.filter(pk=account.pk).update(balance_micros=99_999_993)
    response = staff_client.post(
        f"{ACCOUNTS}{account.pk}/change/",
        {
            "low_balance_threshold_micros": "1000000",
            "auto_topup_threshold_micros": "5000000",
            "auto_topup_amount_cents": "2000",
            "auto_topup_daily_limit_cents": "20000",
            "balance_micros": "999999999999",
        },
    )
    assert response.status_code == 302
    account.refresh_from_db()
    assert account.low_balance_threshold_micros == 1_000_000
    assert account.balance_micros == 99_999_993
    assert ledger.account_check(account=account) == []


def test_accounts_cannot_be_added_or_deleted(world, staff_client):
    account = _account(world)
    assert staff_client.get(f"{ACCOUNTS}add/").status_code == 403
    assert staff_client.post(f"{ACCOUNTS}{account.pk}/delete/", {"post": "yes"}).status_code == 403


@pytest.mark.parametrize(
    ("model", "obj"),
    [("ledgerentry", "entry"), ("reservation", "reservation"), ("usagerecord", "usage")],
)
def test_history_is_read_only(world, staff_client, model, obj):
    hold = ledger.credit_reserve(
        tenant_id=world.tenant.pk, amount_micros=10, source="req_1", ttl_seconds=60
    )
    ledger.credit_settle(hold=hold, cost_micros=4, units=1, model_slug="echo", source="req_1")
    objects = {
        "entry": LedgerEntry.objects.filter(tenant=world.tenant).first(),
        "reservation": Reservation.objects.filter(tenant=world.tenant).first(),
        "usage": UsageRecord.objects.filter(tenant=world.tenant).first(),
    }
    pk = objects[obj].pk  # type: ignore[union-attr]
    base = f"/admin/billing/{model}/"
    assert staff_client.get(base).status_code == 200
    assert staff_client.get(f"{base}add/").status_code == 403
    view = staff_client.get(f"{base}{pk}/change/")
    assert view.status_code == 200
    assert 'name="_save"' not in view.content.decode()
    assert staff_client.post(f"{base}{pk}/change/", {}).status_code == 403
    assert staff_client.post(f"{base}{pk}/delete/", {"post": "yes"}).status_code == 403


def test_ledger_admin_filters_by_kind_and_searches_by_source_and_tenant(
    world, other_world, staff_client
):
    ledger.entry_book(
        tenant_id=world.tenant.pk,
        kind=LedgerEntry.Kind.ADJUSTMENT,
        source="ticket-8812",
        amount_micros=5,
    )
    base = "/admin/billing/ledgerentry/"
    by_kind = staff_client.get(base, {"kind__exact": "adjustment"}).content.decode()
    assert "ticket-8812" in by_kind
    assert "test-grant" not in by_kind
    assert "ticket-8812" in staff_client.get(base, {"q": "ticket-8812"}).content.decode()
    by_tenant = staff_client.get(base, {"q": other_world.tenant.name}).content.decode()
    assert "ticket-8812" not in by_tenant


def test_tenant_list_shows_balance_and_month_to_date_usage_in_one_query(
    world, other_world, staff_client
):
    hold = ledger.credit_reserve(
        tenant_id=world.tenant.pk, amount_micros=2_500, source="req_1", ttl_seconds=60
    )
    ledger.credit_settle(hold=hold, cost_micros=2_345, units=1, model_slug="echo", source="req_1")
    LedgerEntry.objects.filter(source="req_1").update(created_at=timezone.now())
    old = LedgerEntry.objects.create(
        account=_account(other_world),
        tenant=other_world.tenant,
        kind=LedgerEntry.Kind.USAGE,
        source="last-month",
        amount_micros=-9_999,
    )
    LedgerEntry.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=40))
    url = "/admin/marketplace/tenant/"
    html = staff_client.get(url).content.decode()
    assert "month-to-date usage" in html.lower()
    assert "$99.997655" not in html  # balances show cents
    assert "$100.00" in html
    assert "$0.002345" in html
    assert "$0.009999" not in html  # last month's usage is not this month's

    with CaptureQueriesContext(connection) as few:
        staff_client.get(url)
    for _ in range(5):
        MembershipFactory.create()
    with CaptureQueriesContext(connection) as many:
        staff_client.get(url)
    assert len(many) == len(few)


def test_non_staff_cannot_reach_the_billing_admin(world):
    client = Client()
    client.force_login(world.owner)
    assert client.get(ACCOUNTS).status_code == 302
