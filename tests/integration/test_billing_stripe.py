"""Billing against the Stripe-compatible server, through the official stripe library.

Webhooks travel over HTTP from that server to the marketplace under granian.
"""

import hashlib
import hmac
import io
import json
import re
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime

import pytest
from django.core import mail
from django.core.management import CommandError, call_command
from django.test import Client

from billing import ledger, money, payments
from billing.models import CreditAccount, Invoice, LedgerEntry, Purchase, StripeEvent, UsageRecord
from marketplace.models import AuditEvent, Tenant, User
from tests.integration.conftest import (
    STRIPE_WEBHOOK_SECRET,
    funded_tenant,
    usage_send_all,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _pay(checkout_url: str, method: str = "card") -> None:
    session_id = checkout_url.rstrip("/").rsplit("/", 1)[1]
    data = urllib.parse.urlencode({"method": method}).encode()
    request = urllib.request.Request(
        checkout_url.replace(f"/checkout/{session_id}", f"/checkout/{session_id}/pay"), data=data
    )
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        opener.open(request, timeout=10)
    except urllib.error.HTTPError as exc:
        assert exc.code == 303, exc.read()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _buy(tenant: Tenant, cents: int, method: str = "card") -> Purchase:
    url = payments.checkout_start(
        tenant_id=tenant.pk,
        tenant_name=tenant.name,
        email="owner@example.com",
        amount_cents=cents,
        success_url="http://127.0.0.1/billing/success/?session_id={CHECKOUT_SESSION_ID}",
        cancel_url="http://127.0.0.1/billing/cancel/",
    )
    _pay(url, method)
    return Purchase.objects.get(tenant=tenant, amount_cents=cents)


def _purchases(tenant: Tenant) -> int:
    return LedgerEntry.objects.filter(tenant=tenant, kind="purchase").count()


def _sign(payload: bytes, *, secret: str = STRIPE_WEBHOOK_SECRET, at: int | None = None) -> str:
    timestamp = at if at is not None else int(time.time())
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def _post_webhook(web_server: str, payload: bytes, signature: str) -> int:
    request = urllib.request.Request(
        f"http://{web_server}/billing/stripe/webhook",
        data=payload,
        headers={"Stripe-Signature": signature, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _events(server, type_: str) -> list[dict]:
    with urllib.request.urlopen(f"{server.url}/_test/events", timeout=10) as response:
        body = json.loads(response.read())
    return [e for e in body["data"] if e["type"] == type_]


def test_purchase_credited_once_despite_replays_order_forgery_and_staleness(
    stripe_webhooks, web_server, registered
):
    tenant, _, _, _ = funded_tenant(0)
    purchase = _buy(tenant, 5000)
    wait_for(lambda: _purchases(tenant) == 1, timeout=20)
    account = CreditAccount.objects.get(tenant=tenant)
    assert account.balance_micros == 50_000_000

    completed = next(
        e
        for e in _events(stripe_webhooks, "checkout.session.completed")
        if e["data"]["object"]["id"] == purchase.stripe_checkout_session_id
    )
    for _ in range(5):  # replayed five times by the server
        urllib.request.urlopen(
            urllib.request.Request(
                f"{stripe_webhooks.url}/_test/events/{completed['id']}/resend", data=b""
            ),
            timeout=10,
        )
    assert stripe_webhooks.wait_for_webhooks(20)
    assert _purchases(tenant) == 1
    assert CreditAccount.objects.get(tenant=tenant).balance_micros == 50_000_000

    # A delayed payment: "completed" (unpaid) then "async_payment_succeeded", delivered
    # here in the wrong order by hand, each signed properly.
    stripe_webhooks.configure_webhooks(None)
    delayed = _buy(tenant, 2000, method="delayed")
    urllib.request.urlopen(
        urllib.request.Request(
            f"{stripe_webhooks.url}/_test/checkout/{delayed.stripe_checkout_session_id}/settle",
            data=b"",
        ),
        timeout=10,
    )
    by_type = {
        kind: next(
            e
            for e in _events(stripe_webhooks, kind)
            if e["data"]["object"]["id"] == delayed.stripe_checkout_session_id
        )
        for kind in ("checkout.session.completed", "checkout.session.async_payment_succeeded")
    }
    for kind in ("checkout.session.async_payment_succeeded", "checkout.session.completed"):
        payload = json.dumps(by_type[kind]).encode()
        assert _post_webhook(web_server, payload, _sign(payload)) == 200
        assert _post_webhook(web_server, payload, _sign(payload)) == 200
    assert _purchases(tenant) == 2
    assert CreditAccount.objects.get(tenant=tenant).balance_micros == 70_000_000

    # Forged and stale signatures: 400, nothing written.
    events_before = StripeEvent.objects.count()
    forged_event = {**by_type["checkout.session.completed"], "id": "evt_forged"}
    forged_event["data"] = {"object": {**forged_event["data"]["object"], "id": "cs_forged"}}
    payload = json.dumps(forged_event).encode()
    assert _post_webhook(web_server, payload, _sign(payload, secret="whsec_wrong")) == 400
    assert _post_webhook(web_server, payload, _sign(payload, at=int(time.time()) - 3600)) == 400
    assert _post_webhook(web_server, payload, "t=1,v1=deadbeef") == 400
    assert _post_webhook(web_server, payload, "") == 400
    tampered = payload.replace(b"cs_forged", b"cs_tampered")
    assert _post_webhook(web_server, tampered, _sign(payload)) == 400
    assert StripeEvent.objects.count() == events_before
    assert _purchases(tenant) == 2


def test_refund_is_booked_once_from_its_webhook(stripe_webhooks, registered):
    tenant, _, _, _ = funded_tenant(0)
    purchase = _buy(tenant, 1000)
    wait_for(lambda: _purchases(tenant) == 1, timeout=20)
    purchase.refresh_from_db()
    payments.refund_purchase(purchase=purchase, amount_cents=400, key="first")
    payments.refund_purchase(purchase=purchase, amount_cents=400, key="first")  # a retry
    wait_for(lambda: LedgerEntry.objects.filter(tenant=tenant, kind="refund").exists(), timeout=20)
    assert stripe_webhooks.wait_for_webhooks(20)
    refunds = LedgerEntry.objects.filter(tenant=tenant, kind="refund")
    assert [e.amount_micros for e in refunds] == [-4_000_000]
    assert CreditAccount.objects.get(tenant=tenant).balance_micros == 6_000_000
    booked = AuditEvent.objects.filter(tenant=tenant, action="credit.refund_booked")
    assert [(e.actor_label, e.metadata["amount_cents"]) for e in booked] == [("stripe", 400)]


def _signup_and_key(web_client: Client) -> tuple[Tenant, str]:
    password = "a long enough passphrase 42"
    web_client.post(
        "/accounts/signup/",
        {
            "email": "founder@flow.example",
            "password1": password,
            "password2": password,
            "organisation": "Flow Analytics",
        },
    )
    link = re.search(r"/accounts/confirm-email/\S+/", str(mail.outbox[-1].body))
    assert link is not None
    web_client.post(link.group(0))
    assert (
        web_client.post(
            "/accounts/login/", {"login": "founder@flow.example", "password": password}
        ).status_code
        == 302
    )
    page = web_client.post("/keys/", {"name": "flow"}).content.decode()
    token = re.search(r"cango_sk_[a-z2-7]{12}_[A-Za-z0-9_-]{43}", page)
    assert token is not None
    tenant = Tenant.objects.get(memberships__user=User.objects.get(email="founder@flow.example"))
    return tenant, token.group(0)


def _call(web_server: str, token: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"http://{web_server}{path}",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_sign_up_buy_use_invoice_reconcile(stripe_webhooks, web_server, registered):
    tenant, token = _signup_and_key(Client())
    _buy(tenant, 5000)
    wait_for(lambda: _purchases(tenant) == 1, timeout=20)
    wait_for(
        lambda: Purchase.objects.filter(tenant=tenant).exclude(stripe_credit_grant_id="").exists(),
        timeout=30,
    )

    for _ in range(7):
        _call(
            web_server,
            token,
            "/v2/models/echo/infer",
            {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]},
        )
    for _ in range(3):
        _call(
            web_server,
            token,
            "/v2/models/counter_int64/infer",
            {
                "inputs": [
                    {
                        "name": "values",
                        "datatype": "INT64",
                        "shape": [2, 3],
                        "data": [1, 2, 3, 4, 5, 6],
                    }
                ]
            },
        )
    _call(
        web_server,
        token,
        "/v1/embeddings",
        {"model": "minilm", "input": ["a cat sits on the mat", "quarterly revenue grew 5%"]},
    )
    job = _call(
        web_server,
        token,
        "/v1/jobs",
        {
            "model": "classifier",
            "inputs": [
                {"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
            ],
        },
    )
    wait_for(
        lambda: LedgerEntry.objects.filter(source__startswith="job:", tenant=tenant).exists(),
        timeout=30,
    )
    assert job["status"] == "queued"

    usage_send_all(tenant)
    assert not UsageRecord.objects.filter(tenant=tenant, sent_at__isnull=True).exists()

    account = CreditAccount.objects.get(tenant=tenant)
    now = datetime.now(UTC)
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    request = urllib.request.Request(
        f"{stripe_webhooks.url}/_test/billing/close_period",
        data=urllib.parse.urlencode(
            {
                "customer": account.stripe_customer_id,
                "period_start": int(start.timestamp()),
                "period_end": int(time.time()) + 60,
            }
        ).encode(),
    )
    urllib.request.urlopen(request, timeout=10)
    assert stripe_webhooks.wait_for_webhooks(20)
    invoice = wait_for(lambda: Invoice.objects.filter(tenant=tenant).first(), timeout=20)

    usage: dict[str, int] = {}
    for entry in LedgerEntry.objects.filter(tenant=tenant, kind="usage"):
        usage[entry.model_slug] = usage.get(entry.model_slug, 0) - entry.amount_micros
    assert set(usage) == {"echo", "counter_int64", "minilm", "classifier"}
    from billing.models import BillingMeter

    prices = {m.stripe_price_id: m.model_slug for m in BillingMeter.objects.all()}
    lines = {prices[line["price"]]: line["amount_cents"] for line in invoice.lines}
    assert lines == {slug: money.micros_to_cents(total) for slug, total in usage.items()}
    subtotal = sum(lines.values())
    assert invoice.subtotal_cents == subtotal
    assert invoice.credit_cents == min(subtotal, 5000)
    assert invoice.total_cents == subtotal - invoice.credit_cents
    assert invoice.hosted_invoice_url
    assert invoice.invoice_pdf_url

    period = f"{now:%Y-%m}"
    out = io.StringIO()
    call_command("billing_reconcile", period=period, stdout=out)
    assert "No difference" in out.getvalue()

    # A meter event lost on the way: the outbox says sent, Stripe never had it.
    entry, _ = ledger.entry_book(
        tenant_id=tenant.pk, kind=LedgerEntry.Kind.USAGE, source="lost-call", amount_micros=-12_345
    )
    LedgerEntry.objects.filter(pk=entry.pk).update(model_slug="echo")
    UsageRecord.objects.create(
        account=account,
        tenant=tenant,
        ledger_entry=entry,
        model_slug="echo",
        units=1,
        cost_micros=12_345,
        created_at=entry.created_at,
        sent_at=entry.created_at,
    )
    out = io.StringIO()
    with pytest.raises(CommandError, match="1 difference"):
        call_command("billing_reconcile", period=period, stdout=out)
    assert f"tenant {tenant.pk} model echo" in out.getvalue()
    assert "$0.012345" in out.getvalue()


def test_auto_topup_charges_saved_card_then_switches_off_on_decline(stripe_webhooks, registered):
    tenant, _, _, _ = funded_tenant(0)
    _buy(tenant, 1000)
    wait_for(
        lambda: (
            CreditAccount.objects.filter(tenant=tenant)
            .exclude(stripe_payment_method_id="")
            .exists()
        ),
        timeout=30,
    )
    CreditAccount.objects.filter(tenant=tenant).update(
        auto_topup_enabled=True,
        auto_topup_threshold_micros=20_000_000,
        auto_topup_amount_cents=1500,
        auto_topup_daily_limit_cents=3000,
    )
    account = CreditAccount.objects.get(tenant=tenant)
    assert payments.auto_topup(account_id=account.pk) == "charged"
    assert CreditAccount.objects.get(tenant=tenant).balance_micros == 25_000_000
    assert payments.auto_topup(account_id=account.pk) == "not_needed"
    CreditAccount.objects.filter(pk=account.pk).update(auto_topup_threshold_micros=100_000_000)
    assert payments.auto_topup(account_id=account.pk) == "charged"
    assert payments.auto_topup(account_id=account.pk) == "daily_limit"  # 3000¢ a day

    CreditAccount.objects.filter(pk=account.pk).update(auto_topup_daily_limit_cents=100_000)
    urllib.request.urlopen(
        urllib.request.Request(
            f"{stripe_webhooks.url}/_test/customers/{account.stripe_customer_id}/decline_next",
            data=b"",
        ),
        timeout=10,
    )
    mail.outbox.clear()
    assert payments.auto_topup(account_id=account.pk) == "declined"
    assert CreditAccount.objects.get(pk=account.pk).auto_topup_enabled is False
    assert Purchase.objects.filter(tenant=tenant, status="failed").count() == 1
    assert _purchases(tenant) == 3
