"""The portal's Billing page: balance, buying credit, settings, ledger pages, CSV, invoices."""

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing import ledger, payments, selectors, stripe_gateway
from billing.models import CreditAccount, Invoice, LedgerEntry, Purchase
from marketplace.models import Role
from tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db


def _client(world, role: str = Role.OWNER) -> Client:
    membership = (
        world.membership
        if role == Role.OWNER
        else MembershipFactory.create(tenant=world.tenant, role=role)
    )
    client = Client()
    client.force_login(membership.user)
    return client


def _usage(world, *, cost: int, at: datetime | None = None, model: str = "echo") -> LedgerEntry:
    source = f"req_{LedgerEntry.objects.count()}"
    hold = ledger.credit_reserve(
        tenant_id=world.tenant.pk,
        amount_micros=cost,
        source=source,
        ttl_seconds=60,
        api_key_id=world.key.pk,
    )
    ledger.credit_settle(hold=hold, cost_micros=cost, units=3, model_slug=model, source=source)
    entry = LedgerEntry.objects.get(tenant=world.tenant, source=source)
    if at is not None:
        LedgerEntry.objects.filter(pk=entry.pk).update(created_at=at)
        entry.refresh_from_db()
    return entry


def _entries(world, count: int) -> None:
    """``count`` usage entries, one second apart, in bulk (the page must not care how many)."""
    account = ledger.account_open(tenant_id=world.tenant.pk)
    start = timezone.now() - timedelta(days=1)
    LedgerEntry.objects.bulk_create(
        LedgerEntry(
            account=account,
            tenant=world.tenant,
            kind=LedgerEntry.Kind.USAGE,
            source=f"bulk:{i}",
            amount_micros=-123,
            model_slug="echo",
            units=1,
        )
        for i in range(count)
    )
    for i, pk in enumerate(
        LedgerEntry.objects.filter(source__startswith="bulk:")
        .order_by("id")
        .values_list("pk", flat=True)
    ):
        LedgerEntry.objects.filter(pk=pk).update(created_at=start + timedelta(seconds=i))


@pytest.fixture
def checkout_calls(monkeypatch) -> list[dict[str, object]]:
    calls: list[dict[str, object]] = []

    def fake_checkout_start(**kwargs: object) -> str:
        calls.append(kwargs)
        return "https://checkout.stripe.test/c/pay/cs_test_123"

    monkeypatch.setattr(payments, "checkout_start", fake_checkout_start)
    return calls


# ---- Access ------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.OWNER, Role.ADMIN, Role.BILLING])
def test_billing_page_renders_for_roles_that_manage_billing(world, role):
    _usage(world, cost=1_234)
    response = _client(world, role).get("/billing/")
    assert response.status_code == 200
    html = response.content.decode()
    assert html.count("$99.998766") == 2  # available and balance, to the micro-dollar
    assert "$0.001234" in html  # spent this month, sub-cent
    assert "-$0.001234" in html  # the usage entry in the ledger
    assert "+$100.00" in html  # the grant
    assert 'name="csrfmiddlewaretoken"' in html
    assert "<script>" not in html
    assert "style=" not in html


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/billing/"),
        ("post", "/billing/checkout/"),
        ("post", "/billing/settings/"),
        ("get", "/billing/ledger.csv"),
        ("get", "/billing/success/?session_id=cs_1"),
        ("get", "/billing/cancel/"),
    ],
)
def test_developers_get_403_on_every_billing_page(world, checkout_calls, method, path):
    response = getattr(_client(world, Role.DEVELOPER), method)(path, {"pack_cents": 1000})
    assert response.status_code == 403
    assert checkout_calls == []


def test_anonymous_visitors_are_sent_to_log_in(client):
    response = client.get("/billing/")
    assert response.status_code == 302
    assert response.url.startswith("/accounts/login/")


def test_developers_do_not_see_the_billing_link(world):
    html = _client(world, Role.DEVELOPER).get("/").content.decode()
    assert 'href="/billing/"' not in html


# ---- Buying credit -----------------------------------------------------------


def test_a_pack_redirects_to_stripe_checkout_with_303(world, checkout_calls):
    response = _client(world).post("/billing/checkout/", {"pack_cents": "5000"})
    assert response.status_code == 303
    assert response["Location"] == "https://checkout.stripe.test/c/pay/cs_test_123"
    assert checkout_calls == [
        {
            "tenant_id": world.tenant.pk,
            "tenant_name": world.tenant.name,
            "email": world.owner.email,
            "amount_cents": 5000,
            "success_url": "http://testserver/billing/success/?session_id={CHECKOUT_SESSION_ID}",
            "cancel_url": "http://testserver/billing/cancel/",
        }
    ]


def test_a_custom_amount_in_dollars_is_sent_in_cents(world, checkout_calls):
    response = _client(world).post("/billing/checkout/", {"amount_dollars": "123.45"})
    assert response.status_code == 303
    assert checkout_calls[0]["amount_cents"] == 12345


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        ("4.99", "between $5.00 and $5,000.00"),
        ("5000.01", "between $5.00 and $5,000.00"),
        ("12.345", "2 decimal places"),
        ("ten", "Enter a number"),
        ("", "Choose a pack or enter an amount"),
    ],
)
def test_custom_amount_errors_are_shown_next_to_the_field(world, checkout_calls, amount, message):
    response = _client(world).post("/billing/checkout/", {"amount_dollars": amount})
    assert response.status_code == 400
    errors = response.context["purchase_form"].errors
    assert list(errors) == ["amount_dollars"]
    assert message in errors["amount_dollars"][0]
    assert message.replace("$", "") in response.content.decode().replace("$", "")
    assert 'aria-invalid="true"' in response.content.decode()
    assert checkout_calls == []


def test_the_custom_limits_are_inclusive(world, checkout_calls):
    client = _client(world)
    assert client.post("/billing/checkout/", {"amount_dollars": "5"}).status_code == 303
    assert client.post("/billing/checkout/", {"amount_dollars": "5000.00"}).status_code == 303
    assert [c["amount_cents"] for c in checkout_calls] == [500, 500_000]


def test_a_pack_that_is_not_offered_is_refused(world, checkout_calls):
    response = _client(world).post("/billing/checkout/", {"pack_cents": "1"})
    assert response.status_code == 400
    assert "pack_cents" in response.context["purchase_form"].errors
    assert checkout_calls == []


def test_an_amount_refused_by_checkout_start_is_shown_on_the_form(world, monkeypatch):
    def refuse(**kwargs: object) -> str:
        raise payments.AmountInvalid("Choose an amount between $5.00 and $5,000.00.")

    monkeypatch.setattr(payments, "checkout_start", refuse)
    response = _client(world).post("/billing/checkout/", {"amount_dollars": "20"})
    assert response.status_code == 400
    assert response.context["purchase_form"].errors["amount_dollars"]


def test_stripe_unavailable_is_a_503_page_that_charges_nothing(world, monkeypatch):
    def down(**kwargs: object) -> str:
        raise stripe_gateway.GatewayError("connection refused")

    monkeypatch.setattr(payments, "checkout_start", down)
    response = _client(world).post("/billing/checkout/", {"pack_cents": "1000"})
    assert response.status_code == 503
    assert "nothing was charged" in response.content.decode()


def test_checkout_needs_post(world, checkout_calls):
    assert _client(world).get("/billing/checkout/").status_code == 405


def test_checkout_needs_the_csrf_token(world, checkout_calls):
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.owner)
    assert client.post("/billing/checkout/", {"pack_cents": "1000"}).status_code == 403
    assert checkout_calls == []


def test_success_page_refreshes_until_the_purchase_is_paid(world):
    account = ledger.account_open(tenant_id=world.tenant.pk)
    purchase = Purchase.objects.create(
        account=account, tenant=world.tenant, amount_cents=2000, stripe_checkout_session_id="cs_1"
    )
    client = _client(world)
    pending = client.get("/billing/success/", {"session_id": "cs_1"}).content.decode()
    assert "credits appear within seconds; this page refreshes" in pending
    assert 'http-equiv="refresh"' in pending
    assert "session_id=cs_1&amp;n=1" in pending
    assert "$100.00" in pending

    Purchase.objects.filter(pk=purchase.pk).update(status=Purchase.Status.PAID)
    ledger.entry_book(
        tenant_id=world.tenant.pk,
        kind=LedgerEntry.Kind.PURCHASE,
        source=purchase.ledger_source,
        amount_micros=20_000_000,
    )
    paid = client.get("/billing/success/", {"session_id": "cs_1", "n": "3"}).content.decode()
    assert "http-equiv" not in paid
    assert "$20.00 of credit has been added" in paid
    assert "$120.00" in paid


def test_success_page_stops_refreshing_after_a_while(world):
    account = ledger.account_open(tenant_id=world.tenant.pk)
    Purchase.objects.create(
        account=account, tenant=world.tenant, amount_cents=2000, stripe_checkout_session_id="cs_1"
    )
    html = _client(world).get("/billing/success/", {"session_id": "cs_1", "n": "40"}).content
    assert b"http-equiv" not in html


def test_success_page_ignores_another_tenants_checkout_session(world, other_world):
    account = ledger.account_open(tenant_id=other_world.tenant.pk)
    Purchase.objects.create(
        account=account,
        tenant=other_world.tenant,
        amount_cents=77_00,
        stripe_checkout_session_id="cs_theirs",
    )
    html = _client(world).get("/billing/success/", {"session_id": "cs_theirs"}).content.decode()
    assert "$77.00" not in html
    assert "http-equiv" not in html


def test_cancel_page_says_nothing_was_charged(world):
    response = _client(world).get("/billing/cancel/")
    assert response.status_code == 200
    assert "Nothing was charged" in response.content.decode()


# ---- Settings ----------------------------------------------------------------

SETTINGS = {
    "low_balance_threshold_dollars": "12.50",
    "auto_topup_enabled": "on",
    "auto_topup_threshold_dollars": "10",
    "auto_topup_amount_dollars": "50",
    "auto_topup_daily_limit_dollars": "150",
}


def test_settings_are_saved_on_the_credit_account(world):
    client = _client(world, Role.BILLING)
    response = client.post("/billing/settings/", SETTINGS)
    assert response.status_code == 302
    account = CreditAccount.objects.get(tenant=world.tenant)
    assert account.low_balance_threshold_micros == 12_500_000
    assert account.auto_topup_enabled is True
    assert account.auto_topup_threshold_micros == 10_000_000
    assert account.auto_topup_amount_cents == 5_000
    assert account.auto_topup_daily_limit_cents == 15_000
    assert account.balance_micros == 100_000_000
    page = client.get("/billing/").content.decode()
    assert "Billing settings saved." in page
    assert "a card is saved with your next purchase" in page
    assert 'value="12.50"' in page


def test_no_card_notice_once_a_card_is_saved(world):
    client = _client(world)
    client.post("/billing/settings/", SETTINGS)
    CreditAccount.objects.filter(tenant=world.tenant).update(stripe_payment_method_id="pm_1")
    assert "a card is saved with your next purchase" not in client.get("/billing/").content.decode()


def test_settings_errors_are_shown_next_to_their_fields(world):
    bad = {
        **SETTINGS,
        "low_balance_threshold_dollars": "-1",
        "auto_topup_amount_dollars": "1",
        "auto_topup_daily_limit_dollars": "",
    }
    response = _client(world).post("/billing/settings/", bad)
    assert response.status_code == 400
    errors = response.context["settings_form"].errors
    assert set(errors) == {
        "low_balance_threshold_dollars",
        "auto_topup_amount_dollars",
        "auto_topup_daily_limit_dollars",
    }
    assert CreditAccount.objects.get(tenant=world.tenant).low_balance_threshold_micros == 5_000_000


def test_daily_limit_below_the_top_up_amount_is_refused(world):
    bad = {**SETTINGS, "auto_topup_daily_limit_dollars": "49.99"}
    response = _client(world).post("/billing/settings/", bad)
    assert response.status_code == 400
    assert "auto_topup_daily_limit_dollars" in response.context["settings_form"].errors


def test_saving_settings_keeps_a_concurrent_charge(world):
    """The settings are written with an UPDATE of their columns, never the whole row."""
    _usage(world, cost=1_000)
    _client(world).post("/billing/settings/", SETTINGS)
    account = CreditAccount.objects.get(tenant=world.tenant)
    assert ledger.account_check(account=account) == []


def test_a_lower_threshold_rearms_the_low_balance_alert(world):
    CreditAccount.objects.filter(tenant=world.tenant).update(low_balance_alerted=True)
    _client(world).post("/billing/settings/", SETTINGS)
    assert CreditAccount.objects.get(tenant=world.tenant).low_balance_alerted is False


# ---- Ledger pages, CSV, invoices ---------------------------------------------


def test_ledger_is_paged_with_older_and_newer_links(world):
    _entries(world, 60)
    client = _client(world)
    first = client.get("/billing/")
    rows = first.context["ledger"]
    assert len(rows) == 50
    assert first.context["ledger_newer"] is None
    older = first.context["ledger_older"]
    assert f"?before={older}#ledger" in first.content.decode()
    second = client.get("/billing/", {"before": older})
    assert len(second.context["ledger"]) == 11  # 10 bulk entries and the grant
    assert second.context["ledger_older"] is None
    assert second.context["ledger_newer"] is not None
    back = client.get("/billing/", {"after": second.context["ledger_newer"]})
    assert back.context["ledger"] == rows


def test_billing_page_queries_do_not_grow_with_the_ledger(world):
    client = _client(world)
    client.get("/billing/")
    with CaptureQueriesContext(connection) as small:
        client.get("/billing/")
    _entries(world, 150)
    Invoice.objects.bulk_create(
        Invoice(
            tenant=world.tenant,
            stripe_invoice_id=f"in_{i}",
            status="paid",
            period_start=timezone.now(),
            period_end=timezone.now(),
            stripe_event_created=timezone.now(),
        )
        for i in range(5)
    )
    with CaptureQueriesContext(connection) as large:
        response = client.get("/billing/")
    with CaptureQueriesContext(connection) as paged:
        client.get("/billing/", {"before": response.context["ledger_older"]})
    assert len(small) == len(large) == len(paged) <= 8
    sql = " ".join(q["sql"] for q in large.captured_queries).upper()
    assert "OFFSET" not in sql
    assert "COUNT(" not in sql


def _csv(response) -> list[list[str]]:
    body = b"".join(response.streaming_content).decode()
    return list(csv.reader(io.StringIO(body)))


def test_csv_export_streams_every_row_of_the_period_and_nothing_else(world, other_world):
    inside = _usage(world, cost=1_234, at=datetime(2026, 2, 10, 8, 30, tzinfo=UTC))
    _usage(world, cost=99, at=datetime(2026, 3, 1, tzinfo=UTC))  # the end: excluded
    _usage(other_world, cost=555, at=datetime(2026, 2, 11, tzinfo=UTC))
    LedgerEntry.objects.filter(tenant=world.tenant, kind=LedgerEntry.Kind.GRANT).update(
        created_at=datetime(2026, 2, 1, tzinfo=UTC)
    )
    response = _client(world).get(
        "/billing/ledger.csv", {"start": "2026-02-01", "end": "2026-03-01"}
    )
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == (
        f'attachment; filename="cango-ledger-{world.tenant.slug}-20260201-20260301.csv"'
    )
    rows = _csv(response)
    assert rows[0] == [
        "created_at",
        "kind",
        "source",
        "model",
        "api_key_id",
        "units",
        "amount_micros",
        "amount_usd",
    ]
    assert rows[1] == [
        "2026-02-01T00:00:00+00:00",
        "grant",
        "test-grant",
        "",
        "",
        "",
        "100000000",
        "100.000000",
    ]
    assert rows[2] == [
        "2026-02-10T08:30:00+00:00",
        "usage",
        inside.source,
        "echo",
        str(world.key.pk),
        "3",
        "-1234",
        "-0.001234",
    ]
    assert len(rows) == 3


def test_csv_export_defaults_to_this_month(world):
    _usage(world, cost=10)
    rows = _csv(_client(world).get("/billing/ledger.csv"))
    assert [row[1] for row in rows[1:]] == ["grant", "usage"] or [row[1] for row in rows[1:]] == [
        "usage"
    ]


def test_csv_export_neutralises_spreadsheet_formulas(world):
    ledger.entry_book(
        tenant_id=world.tenant.pk,
        kind=LedgerEntry.Kind.ADJUSTMENT,
        source="=HYPERLINK(1)",
        amount_micros=1,
    )
    today = timezone.now().date()
    rows = _csv(
        _client(world).get(
            "/billing/ledger.csv",
            {"start": today.isoformat(), "end": (today + timedelta(days=1)).isoformat()},
        )
    )
    assert "'=HYPERLINK(1)" in [row[2] for row in rows]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"start": "2026-02-01", "end": "2026-02-01"}, "end"),
        ({"start": "2024-01-01", "end": "2026-01-01"}, "end"),
        ({"start": "nope", "end": "2026-01-01"}, "start"),
        ({"start": "2026-01-01"}, "end"),
    ],
)
def test_csv_export_with_a_bad_period_shows_the_error_on_the_page(world, params, field):
    response = _client(world).get("/billing/ledger.csv", params)
    assert response.status_code == 400
    assert field in response.context["export_form"].errors


def test_invoices_empty_state(world):
    html = _client(world).get("/billing/").content.decode()
    assert "No invoices yet — usage is invoiced monthly" in html


def test_invoices_are_listed_with_their_links(world, other_world):
    for tenant, number in ((world.tenant, "CANGO-0001"), (other_world.tenant, "THEIRS-0001")):
        Invoice.objects.create(
            tenant=tenant,
            stripe_invoice_id=f"in_{number}",
            number=number,
            status="paid",
            period_start=datetime(2026, 1, 1, tzinfo=UTC),
            period_end=datetime(2026, 2, 1, tzinfo=UTC),
            total_cents=1234,
            hosted_invoice_url="https://invoice.stripe.test/i/1",
            invoice_pdf_url="https://invoice.stripe.test/i/1.pdf",
            stripe_event_created=timezone.now(),
        )
    html = _client(world).get("/billing/").content.decode()
    assert "CANGO-0001" in html
    assert "$12.34" in html
    assert 'href="https://invoice.stripe.test/i/1.pdf"' in html
    assert "THEIRS-0001" not in html


def test_another_tenants_ledger_never_shows(world, other_world):
    _usage(other_world, cost=4_321, model="their-model")
    html = _client(world).get("/billing/").content.decode()
    assert "their-model" not in html
    assert "$0.004321" not in html
    assert selectors.month_to_date_usage(world.tenant.pk) == 0
