"""Two-factor authentication: tenant users may enrol, staff must.

Logins here go through the real forms (password, then the code), never
``force_login``, except where a test is about a session that skipped the code.
"""

import pytest
from allauth.mfa.models import Authenticator
from django.test import Client

from tests.factories import MembershipFactory, UserFactory
from tests.mfa import recovery_codes, staff_force_login, totp_code, totp_enable

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery"
STAFF_PAGES = ["/ops/", "/ops/tenants/", "/admin/", "/admin/marketplace/tenant/"]


def _password_step(client: Client, email: str, next_url: str = ""):
    data = {"login": email, "password": PASSWORD}
    url = "/accounts/login/" + (f"?next={next_url}" if next_url else "")
    return client.post(url, data)


def _open_with_password_check(client: Client, path: str):
    """GET ``path``, confirming the password first where allauth asks for it again
    (enrolling a factor always does)."""
    response = client.get(path)
    if response.status_code == 302 and response["Location"].startswith("/accounts/reauthenticate/"):
        confirmed = client.post(response["Location"], {"password": PASSWORD})
        assert confirmed.status_code == 302
        assert confirmed["Location"] == path
        response = client.get(path)
    return response


def _is_logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def test_a_tenant_user_enrols_an_authenticator_app_from_the_portal():
    membership = MembershipFactory.create()
    client = Client()
    assert _password_step(client, membership.user.email).status_code == 302

    dashboard = client.get("/").content.decode()
    assert 'href="/accounts/2fa/"' in dashboard
    index = client.get("/accounts/2fa/")
    assert index.status_code == 200
    assert "Authenticator App" in index.content.decode()
    assert "css/app.css" in index.content.decode()

    page = _open_with_password_check(client, "/accounts/2fa/totp/activate/")
    assert page.status_code == 200
    secret = client.session["mfa.totp.secret"]
    assert secret in page.content.decode()  # shown for manual entry beside the QR code
    assert "data:image/svg+xml" in page.content.decode()

    wrong = client.post("/accounts/2fa/totp/activate/", {"code": "000000"})
    assert wrong.status_code == 200
    assert "Incorrect code" in wrong.content.decode()
    assert not Authenticator.objects.filter(user=membership.user).exists()

    response = client.post("/accounts/2fa/totp/activate/", {"code": totp_code(secret)})
    assert response.status_code == 302
    assert response["Location"] == "/accounts/2fa/recovery-codes/"
    types = set(Authenticator.objects.filter(user=membership.user).values_list("type", flat=True))
    assert types == {Authenticator.Type.TOTP, Authenticator.Type.RECOVERY_CODES}
    codes_page = client.get("/accounts/2fa/recovery-codes/").content.decode()
    for code in recovery_codes(membership.user):
        assert code in codes_page


def test_login_asks_for_the_code_and_refuses_a_wrong_one():
    membership = MembershipFactory.create()
    secret = totp_enable(membership.user)
    client = Client()

    response = _password_step(client, membership.user.email)
    assert response.status_code == 302
    assert response["Location"] == "/accounts/2fa/authenticate/"
    assert not _is_logged_in(client)
    assert client.get("/").status_code == 302  # still on the way in

    right = totp_code(secret)
    wrong = str((int(right) + 1) % 1_000_000).zfill(6)
    refused = client.post("/accounts/2fa/authenticate/", {"code": wrong})
    assert refused.status_code == 200
    assert "Incorrect code" in refused.content.decode()
    assert not _is_logged_in(client)

    accepted = client.post("/accounts/2fa/authenticate/", {"code": right})
    assert accepted.status_code == 302
    assert _is_logged_in(client)
    assert client.get("/").status_code == 200


def test_a_recovery_code_works_once():
    membership = MembershipFactory.create()
    totp_enable(membership.user)
    code = recovery_codes(membership.user)[0]

    first = Client()
    _password_step(first, membership.user.email)
    assert first.post("/accounts/2fa/authenticate/", {"code": code}).status_code == 302
    assert _is_logged_in(first)
    assert code not in recovery_codes(membership.user)

    second = Client()
    _password_step(second, membership.user.email)
    refused = second.post("/accounts/2fa/authenticate/", {"code": code})
    assert refused.status_code == 200
    assert not _is_logged_in(second)


@pytest.mark.parametrize("path", STAFF_PAGES)
def test_staff_without_two_factor_are_sent_to_set_it_up(path):
    staff = UserFactory.create(is_staff=True, is_superuser=True)
    client = Client()
    assert _password_step(client, staff.email).status_code == 302
    assert _is_logged_in(client)
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"] == "/accounts/2fa/totp/activate/"
    page = _open_with_password_check(client, response["Location"])
    assert page.status_code == 200
    assert "Staff accounts need two-factor authentication" in page.content.decode()
    assert "Activate Authenticator App" in page.content.decode()


@pytest.mark.parametrize("path", STAFF_PAGES)
def test_a_staff_session_that_skipped_the_code_must_enter_one(path):
    staff = UserFactory.create(is_staff=True, is_superuser=True)
    secret = totp_enable(staff)
    client = Client()
    client.force_login(staff)  # e.g. a session from before the factor was enrolled
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/2fa/reauthenticate/?next=")

    entered = client.post(response["Location"], {"code": totp_code(secret)})
    assert entered.status_code == 302
    assert entered["Location"] == path
    assert client.get(path).status_code == 200


def test_staff_who_log_in_with_the_code_get_into_the_console_and_the_admin():
    staff = UserFactory.create(is_staff=True, is_superuser=True)
    secret = totp_enable(staff)
    client = Client()
    response = _password_step(client, staff.email, next_url="/ops/")
    assert response["Location"] == "/accounts/2fa/authenticate/"
    response = client.post("/accounts/2fa/authenticate/", {"code": totp_code(secret)})
    assert response.status_code == 302
    assert response["Location"] == "/ops/"
    for path in STAFF_PAGES:
        assert client.get(path).status_code == 200, path


def test_the_admin_login_form_is_replaced_by_the_portal_login():
    """Django's own admin login would skip the rate limits and the second factor."""
    response = Client().get("/admin/login/?next=/admin/billing/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=%2Fadmin%2Fbilling%2F"
    staff = UserFactory.create(is_staff=True, is_superuser=True)
    posted = Client().post("/admin/login/", {"username": staff.email, "password": PASSWORD})
    assert posted.status_code == 302
    assert posted["Location"].startswith("/accounts/login/")

    member = Client()
    member.force_login(MembershipFactory.create().user)
    assert member.get("/admin/login/").status_code == 404


def test_non_staff_are_not_asked_for_a_code_and_still_get_404_on_the_console():
    membership = MembershipFactory.create()
    client = Client()
    _password_step(client, membership.user.email)
    assert client.get("/").status_code == 200
    assert client.get("/ops/").status_code == 404


def test_the_staff_test_login_helper_passes_the_staff_check():
    client = staff_force_login(Client(), UserFactory.create(is_staff=True))
    assert client.get("/ops/").status_code == 200
