"""The portal in a real browser: headless Chromium against granian, real sites,
workers and the Stripe-compatible server.

Each test fails on any console error or uncaught page error (``browser_errors``).
Screenshots of the main pages go to docs/screenshots/ (overwritten on every run).
"""

import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from playwright.sync_api import Page, expect

from billing.models import CreditAccount, Invoice, Purchase, UsageRecord
from marketplace.models import Job, Tenant
from tests.browser.conftest import PHONE_VIEWPORT, VIEWPORT, confirmation_link, screenshot
from tests.factories import MembershipFactory, UserFactory, api_key_make
from tests.integration.conftest import usage_send_all, wait_for
from tests.mfa import totp_code, totp_enable

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    pytest.mark.django_db(transaction=True),
]

PASSWORD = "a long enough passphrase 42"
FACTORY_PASSWORD = "correct horse battery"
TOKEN_RE = re.compile(r"cango_sk_[a-z2-7]{12}_[A-Za-z0-9_-]{43}")


def _submit(page: Page, field: str) -> None:
    """Click the submit button of the form that has an input named ``field``."""
    page.locator(f"main form:has([name='{field}']) [type=submit]").first.click()


def _log_in(page: Page, base: str, email: str, password: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.locator("input[name='login']").fill(email)
    page.locator("input[name='password']").fill(password)
    _submit(page, "password")
    page.wait_for_url(lambda url: "/accounts/login/" not in url)


def _api(base: str, token: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{base}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _close_billing_period(stripe_url: str, customer: str) -> None:
    """The Stripe-compatible server's test hook: invoice the period's metered usage."""
    now = datetime.now(UTC)
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    data = {
        "customer": customer,
        "period_start": int(start.timestamp()),
        "period_end": int(time.time()) + 60,
    }
    request = urllib.request.Request(
        f"{stripe_url}/_test/billing/close_period", data=urllib.parse.urlencode(data).encode()
    )
    urllib.request.urlopen(request, timeout=10).close()


def test_sign_up_buy_run_chart_and_invoice(portal, browser_stripe, browser_errors, new_page):
    base = portal.url
    # The stand-in's checkout page links no icon; its 404 is not the portal's.
    browser_errors.allow(f"{browser_stripe.url}/favicon.ico")
    email = "founder@browser.example"
    page: Page = new_page()

    # Sign up with an organisation, confirm the address from the e-mail, log in.
    page.goto(f"{base}/accounts/signup/")
    page.locator("input[name='email']").fill(email)
    page.locator("input[name='password1']").fill(PASSWORD)
    page.locator("input[name='password2']").fill(PASSWORD)
    page.locator("input[name='organisation']").fill("Browser Analytics")
    _submit(page, "password2")
    page.wait_for_url(lambda url: "/accounts/signup/" not in url)
    page.goto(confirmation_link(portal, email))
    page.locator("main form [type=submit]").first.click()
    page.wait_for_load_state()
    _log_in(page, base, email, PASSWORD)
    expect(page.locator("h1")).to_have_text("Dashboard")
    tenant = Tenant.objects.get(memberships__user__email=email)

    # An API key: its secret shows once, then never again.
    page.goto(f"{base}/keys/")
    page.locator("input[name='name']").fill("browser")
    _submit(page, "name")
    secret = page.locator("#new-key")
    expect(secret).to_be_visible()
    expect(page.get_by_role("button", name="Copy", exact=True)).to_be_visible()
    token_match = TOKEN_RE.fullmatch(secret.inner_text().strip())
    assert token_match is not None
    token = token_match.group(0)
    page.goto(f"{base}/keys/")
    expect(page.locator("#new-key")).to_have_count(0)
    assert token not in page.content()
    screenshot(page, "api-keys")

    # Billing: the $10 pack, paid on the stand-in's checkout page.
    page.goto(f"{base}/billing/")
    page.get_by_role("button", name="Buy $10", exact=True).click()
    page.wait_for_url(f"{browser_stripe.url}/**")
    page.get_by_role("button", name="Pay 10.00 USD", exact=True).click()
    page.wait_for_url(re.compile(re.escape(f"{base}/billing/success/")))
    expect(page.locator("p.balance-figure")).to_have_text("$10.00", timeout=30_000)

    # Models, then the echo model's playground: a real, charged call.
    page.goto(f"{base}/models/")
    expect(page.locator("a[href='/models/echo/']").first).to_be_visible()
    screenshot(page, "models")
    page.locator("a[href='/models/echo/']").first.click()
    page.locator("form.playground-form [type=submit]").click()
    expect(page.locator("#playground-output")).to_be_visible()
    expect(page.locator("#playground-output")).not_to_be_empty()
    results = page.locator("dl:has(dt:text-is('Site'))")
    expect(results.locator("div:has(dt:text-is('Cost')) dd")).to_have_text(re.compile(r"^\$"))
    expect(results.locator("div:has(dt:text-is('Site')) dd")).to_have_text(re.compile(r"\S"))
    screenshot(page, "model-playground")

    # An async job through the API, so the jobs list has a row.
    status, job = _api(
        base,
        token,
        "/v1/jobs",
        {
            "model": "echo",
            "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}],
        },
    )
    assert status in (200, 201, 202), job
    wait_for(
        lambda: Job.objects.filter(tenant=tenant, status=Job.Status.SUCCEEDED).exists(),
        timeout=30,
    )
    page.goto(f"{base}/jobs/")
    expect(page.locator("main table tbody tr")).to_have_count(1)
    screenshot(page, "jobs")

    # The dashboard draws the usage chart from its data island.
    page.goto(f"{base}/")
    chart = page.locator("figure.usage-chart svg[role='img']")
    expect(chart).to_be_visible()
    assert page.locator("figure.usage-chart rect.chart-bar").count() >= 1
    expect(chart).to_have_attribute("aria-label", re.compile(r"echo \$"))
    expect(page.locator("figure.usage-chart .chart-legend li")).to_have_text(["echo"])
    screenshot(page, "dashboard")
    page.set_viewport_size(PHONE_VIEWPORT)
    page.reload()  # the chart is drawn for the width it has when the page loads
    expect(page.locator("figure.usage-chart rect.chart-bar").first).to_be_visible()
    screenshot(page, "dashboard-phone")
    page.set_viewport_size(VIEWPORT)

    # Invoice: the usage goes to Stripe as meter events, the period closes, the
    # invoice webhook reaches the portal and Billing lists it.
    wait_for(
        lambda: Purchase.objects.filter(tenant=tenant).exclude(stripe_credit_grant_id="").exists(),
        timeout=30,
    )
    usage_send_all(tenant)
    assert not UsageRecord.objects.filter(tenant=tenant, sent_at__isnull=True).exists()
    customer = CreditAccount.objects.get(tenant=tenant).stripe_customer_id
    _close_billing_period(browser_stripe.url, customer)
    # Stripe sends invoice.created (a draft, no number) then invoice.finalized; wait
    # for the second, or the page may show a number the draft row did not have yet.
    invoice = wait_for(
        lambda: Invoice.objects.filter(tenant=tenant).exclude(number="").first(), timeout=30
    )
    page.goto(f"{base}/billing/")
    invoices = page.locator("#invoices tbody tr")
    expect(invoices).to_have_count(1)
    expect(invoices.first.locator("th")).to_have_text(invoice.number)
    screenshot(page, "billing")

    page.goto(f"{base}/team/")
    expect(page.locator("main")).to_contain_text(email)
    screenshot(page, "team")


def test_staff_suspends_a_tenant_and_its_key_and_portal_stop(
    portal, browser_errors, new_page: Callable[[], Page]
):
    base = portal.url
    # A suspended tenant's pages answer 403 by design; Chromium logs that status.
    browser_errors.allow(f"{base}/", "status of 403")
    membership = MembershipFactory.create(tenant__name="Northwind Robotics")
    tenant = membership.tenant
    _, token = api_key_make(tenant)
    assert _api(base, token, "/v1/me")[0] == 200
    staff = UserFactory.create(email="operator@cango.example", is_staff=True, is_superuser=True)
    secret = totp_enable(staff)

    ops = new_page()
    ops.on("dialog", lambda dialog: dialog.accept())  # the form's "Suspend …?" confirmation
    _log_in(ops, base, staff.email, FACTORY_PASSWORD)
    # Staff must pass the second factor: the login continues with the code.
    expect(ops.locator("h1")).to_have_text("Two-Factor Authentication")
    ops.locator("input[name='code']").fill(totp_code(secret))
    _submit(ops, "code")
    ops.wait_for_url(lambda url: "/accounts/2fa/" not in url)
    # The admin runs under the same Content-Security-Policy (no console errors).
    ops.goto(f"{base}/admin/marketplace/tenant/")
    expect(ops.locator("#result_list")).to_contain_text(tenant.name)
    ops.goto(f"{base}/admin/marketplace/tenant/{tenant.pk}/change/")
    expect(ops.locator("#content h1")).to_contain_text("Change")
    ops.goto(f"{base}/ops/")
    expect(ops.locator("main")).to_contain_text("br-1")
    screenshot(ops, "ops-sites")
    ops.goto(f"{base}/ops/tenants/")
    expect(ops.locator("main")).to_contain_text(tenant.name)
    screenshot(ops, "ops-tenants")

    ops.goto(f"{base}/ops/tenants/{tenant.slug}/")
    reason = "Unpaid invoices, browser test"
    ops.locator("form:has(button:text-is('Suspend')) [name='reason']").fill(reason)
    ops.get_by_role("button", name="Suspend", exact=True).click()
    expect(ops.locator("main .badge-revoked").first).to_have_text("Suspended")

    status, body = _api(base, token, "/v1/me")
    assert status == 403, body

    owner = new_page()
    _log_in(owner, base, membership.user.email, FACTORY_PASSWORD)
    owner.goto(f"{base}/")
    expect(owner.locator("h1")).to_have_text(f"{tenant.name} is suspended")
    expect(owner.locator("main")).to_contain_text(reason)


def test_member_enrols_two_factor_and_logs_in_with_a_code(
    portal, browser_errors, new_page: Callable[[], Page]
):
    """Two-factor from the portal's header link to the next login, under the CSP:
    the QR code (a data: image on that page only) and the recovery codes' script."""
    base = portal.url
    membership = MembershipFactory.create(tenant__name="Fabrikam Vision")
    email = membership.user.email
    page = new_page()
    _log_in(page, base, email, FACTORY_PASSWORD)

    page.get_by_role("link", name="Two-factor").click()
    expect(page.locator("h1")).to_have_text("Two-Factor Authentication")
    screenshot(page, "two-factor")
    page.get_by_role("link", name="Activate").click()
    # allauth asks for the password again before a factor is added.
    page.locator("input[name='password']").fill(FACTORY_PASSWORD)
    _submit(page, "password")
    expect(page.locator("h1")).to_have_text("Activate Authenticator App")
    qr = page.locator("img.qr-code")
    expect(qr).to_be_visible()
    assert qr.evaluate("img => img.naturalWidth") > 0, "the QR code did not load"
    secret = page.locator("#authenticator_secret").input_value()
    screenshot(page, "two-factor-activate")
    page.locator("input[name='code']").fill(totp_code(secret))
    _submit(page, "code")
    expect(page.locator("h1")).to_have_text("Recovery Codes")
    expect(page.locator("#recovery_codes")).to_be_visible()
    screenshot(page, "two-factor-recovery-codes")

    page.get_by_role("button", name="Log out").first.click()
    page.wait_for_url(lambda url: "/accounts/logout/" not in url)
    _log_in(page, base, email, FACTORY_PASSWORD)
    expect(page.locator("h1")).to_have_text("Two-Factor Authentication")
    page.locator("input[name='code']").fill("000000")
    _submit(page, "code")
    expect(page.locator("main")).to_contain_text("Incorrect code")
    page.locator("input[name='code']").fill(totp_code(secret))
    _submit(page, "code")
    page.wait_for_url(f"{base}/")
    expect(page.locator("main")).to_contain_text("Fabrikam Vision")


def test_api_docs_render_under_the_content_security_policy(
    portal, browser_errors, new_page: Callable[[], Page]
):
    page = new_page()
    page.goto(f"{portal.url}/api/docs/")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Cango Inference Marketplace API")
    expect(page.locator(".opblock-summary-path").first).to_be_visible()
    page.locator(".opblock-summary").first.click()
    expect(page.locator(".opblock-body").first).to_be_visible()
    screenshot(page, "api-docs")
