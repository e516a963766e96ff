"""The portal: sign-up to key, team management, suspension notice, escaping."""

import re

import pytest
from django.core import mail
from django.test import Client

from marketplace import services
from marketplace.models import ApiKey, AuditEvent, Membership, Role, Tenant, User
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db

PASSWORD = "a long enough passphrase 42"


def _signup(client: Client, email: str, organisation: str = "Acme"):
    return client.post(
        "/accounts/signup/",
        {
            "email": email,
            "password1": PASSWORD,
            "password2": PASSWORD,
            "organisation": organisation,
        },
    )


def _confirm_from_mail(client: Client) -> None:
    link = re.search(r"http://\S+/accounts/confirm-email/\S+/", str(mail.outbox[-1].body))
    assert link is not None, mail.outbox[-1].body
    path = link.group(0).split("://", 1)[1].split("/", 1)[1]
    assert client.post("/" + path).status_code == 302


def _logged_in(membership: Membership) -> Client:
    client = Client()
    client.force_login(membership.user)
    return client


def test_signup_verify_login_create_key_and_call_the_api(client):
    response = _signup(client, "founder@acme.example", "Acme <Analytics>")
    assert response.status_code == 302
    user = User.objects.get(email="founder@acme.example")
    tenant = Tenant.objects.get(memberships__user=user)
    assert tenant.name == "Acme <Analytics>"
    assert Membership.objects.get(user=user).role == Role.OWNER

    # Unverified: logging in is refused until the e-mailed link is followed.
    login = {"login": "founder@acme.example", "password": PASSWORD}
    assert client.post("/accounts/login/", login).url.startswith("/accounts/confirm-email")
    _confirm_from_mail(client)
    assert client.post("/accounts/login/", login).status_code == 302

    page = client.get("/")
    assert page.status_code == 200
    assert "Acme &lt;Analytics&gt;" in page.content.decode()

    created = client.post("/keys/", {"name": "prod server"})
    assert created.status_code == 200
    html = created.content.decode()
    match = re.search(r"cango_sk_[a-z2-7]{12}_[A-Za-z0-9_-]{43}", html)
    assert match is not None
    token = match.group(0)
    assert created.headers["Cache-Control"].startswith("max-age=0")
    # Shown once: the list page afterwards has the prefix but never the secret.
    listing = client.get("/keys/").content.decode()
    assert token not in listing
    assert token[: len("cango_sk_") + 12] in listing

    api = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    me = api.get("/v1/me").json()
    assert me["tenant"]["id"] == tenant.pk


def test_signup_requires_an_organisation_and_names_the_field(client):
    response = _signup(client, "x@example.com", organisation="")
    assert response.status_code == 200
    assert "organisation" in response.context["form"].errors
    assert not User.objects.filter(email="x@example.com").exists()


@pytest.mark.parametrize(
    "email", ["josé@exämple.com", "用户@例子.广告", "o'brien+tag@example.co.uk"]
)
def test_unicode_and_unusual_emails_never_500(client, email):
    response = _signup(client, email)
    assert response.status_code in (200, 302)
    if response.status_code == 302:
        assert User.objects.filter(email__iexact=email).exists() or User.objects.count() == 1


def test_overlong_and_html_key_names_are_rejected_or_escaped(world):
    client = _logged_in(world.membership)
    too_long = client.post("/keys/", {"name": "k" * 101})
    assert too_long.status_code == 400
    assert "name" in too_long.context["form"].errors
    assert ApiKey.objects.filter(tenant=world.tenant).count() == 1

    html_name = '<img src=x onerror="alert(1)">'
    ok = client.post("/keys/", {"name": html_name})
    assert ok.status_code == 200
    body = ok.content.decode()
    assert html_name not in body
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in body


def test_the_key_form_sent_twice_makes_one_key(world):
    """A refresh of the answer page resends the form: the second send finds the key
    the first made and says so, without a second key or its token."""
    client = _logged_in(world.membership)
    page = client.get("/keys/").content.decode()
    match = re.search(r'name="token" value="([0-9a-f-]{36})"', page)
    assert match, "the form carries its one-time token"
    form = {"name": "deploy bot", "token": match.group(1)}
    first = client.post("/keys/", form)
    assert first.status_code == 200
    token = re.search(r"cango_sk_[a-z2-7]{12}_[A-Za-z0-9_-]{43}", first.content.decode())
    assert token is not None

    again = client.post("/keys/", form)

    assert again.status_code == 409
    html = again.content.decode()
    assert "already sent: the key “deploy bot” was created then" in html
    assert token.group(0) not in html
    assert ApiKey.objects.filter(tenant=world.tenant, name="deploy bot").count() == 1
    created = AuditEvent.objects.filter(
        tenant=world.tenant, action="api_key.created", metadata__name="deploy bot"
    )
    assert created.count() == 1
    # The answer's form has a new token: a second key on purpose is one click away.
    fresh = re.search(r'name="token" value="([0-9a-f-]{36})"', html)
    assert fresh
    assert fresh.group(1) != match.group(1)
    assert client.post("/keys/", {"name": "deploy bot", "token": fresh.group(1)}).status_code == 200
    assert ApiKey.objects.filter(tenant=world.tenant, name="deploy bot").count() == 2


def test_key_form_validates_each_field(world):
    client = _logged_in(world.membership)
    response = client.post(
        "/keys/",
        {
            "name": "k",
            "expires_on": "2001-01-01",
            "allowed_models": "echo, bad model!",
            "monthly_spend_cap_dollars": "-5",
        },
    )
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert set(errors) == {"expires_on", "allowed_models", "monthly_spend_cap_dollars"}


def test_key_with_expiry_models_and_cap(world):
    client = _logged_in(world.membership)
    client.post(
        "/keys/",
        {
            "name": "limited",
            "expires_on": "2099-01-01",
            "allowed_models": "minilm, echo",
            "monthly_spend_cap_dollars": "12.50",
        },
    )
    key = ApiKey.objects.get(tenant=world.tenant, name="limited")
    assert key.allowed_models == ["echo", "minilm"]
    assert key.monthly_spend_cap_micros == 12_500_000
    assert key.expires_at is not None
    assert key.expires_at.year == 2099


def test_revoke_from_portal_and_other_tenants_keys_are_404(world, other_world):
    client = _logged_in(world.membership)
    assert client.post(f"/keys/{other_world.key.pk}/revoke/").status_code == 404
    other_world.key.refresh_from_db()
    assert other_world.key.revoked_at is None
    assert client.post(f"/keys/{world.key.pk}/revoke/").status_code == 302
    assert world.api.get("/v1/me").status_code == 401


def test_billing_role_cannot_manage_keys(world):
    member = MembershipFactory.create(tenant=world.tenant, role=Role.BILLING)
    client = _logged_in(member)
    assert client.get("/keys/").status_code == 403
    assert client.post("/keys/", {"name": "x"}).status_code == 403
    assert client.get("/billing/").status_code == 200


def test_invite_by_email_link_then_join(world, client, django_capture_on_commit_callbacks):
    owner = _logged_in(world.membership)
    with django_capture_on_commit_callbacks(execute=True):
        response = owner.post("/team/", {"email": "dev@acme.example", "role": Role.DEVELOPER})
    assert response.status_code == 302
    match = re.search(r"/invitations/[^/\s]+/", str(mail.outbox[-1].body))
    assert match is not None
    link = match.group(0)

    page = client.get(link)
    assert page.status_code == 200
    assert world.tenant.name in page.content.decode()
    # The invitee signs up without naming an organisation and joins the inviting one.
    client.post(
        "/accounts/signup/",
        {"email": "dev@acme.example", "password1": PASSWORD, "password2": PASSWORD},
    )
    user = User.objects.get(email="dev@acme.example")
    membership = Membership.objects.get(user=user)
    assert membership.tenant == world.tenant
    assert membership.role == Role.DEVELOPER
    assert Tenant.objects.filter(memberships__user=user).count() == 1


def test_owner_changes_roles_and_removes_members_last_owner_stays(world):
    member = MembershipFactory.create(tenant=world.tenant, role=Role.DEVELOPER)
    client = _logged_in(world.membership)
    client.post(f"/team/members/{member.pk}/role/", {"role": Role.ADMIN})
    member.refresh_from_db()
    assert member.role == Role.ADMIN

    response = client.post(f"/team/members/{world.membership.pk}/remove/", follow=True)
    assert "last owner" in response.content.decode()
    assert Membership.objects.filter(pk=world.membership.pk).exists()

    client.post(f"/team/members/{member.pk}/remove/")
    assert not Membership.objects.filter(pk=member.pk).exists()
    assert AuditEvent.objects.filter(action="membership.removed", tenant=world.tenant).exists()


def test_developers_cannot_change_roles_or_remove_others(world):
    dev = MembershipFactory.create(tenant=world.tenant, role=Role.DEVELOPER)
    client = _logged_in(dev)
    assert (
        client.post(
            f"/team/members/{world.membership.pk}/role/", {"role": Role.BILLING}
        ).status_code
        == 403
    )
    assert client.post(f"/team/members/{world.membership.pk}/remove/").status_code == 403
    # but may leave
    assert client.post(f"/team/members/{dev.pk}/remove/").status_code == 302
    assert not Membership.objects.filter(pk=dev.pk).exists()


def test_team_actions_on_another_tenants_member_are_404(world, other_world):
    client = _logged_in(world.membership)
    target = other_world.membership
    assert client.post(f"/team/members/{target.pk}/role/", {"role": "admin"}).status_code == 404
    assert client.post(f"/team/members/{target.pk}/remove/").status_code == 404
    assert Membership.objects.filter(pk=target.pk, role=Role.OWNER).exists()


def test_suspended_tenant_users_see_the_notice(world):
    services.tenant_suspend(tenant=world.tenant, actor=None, reason="Payment overdue")
    client = _logged_in(world.membership)
    for path in ("/", "/keys/", "/team/"):
        response = client.get(path)
        assert response.status_code == 403
        assert "suspended" in response.content.decode().lower()
        assert "Payment overdue" in response.content.decode()


def test_user_without_tenant_is_sent_to_onboarding():
    user = UserFactory.create()
    client = Client()
    client.force_login(user)
    assert client.get("/").headers["Location"] == "/onboarding/"
    assert client.post("/onboarding/", {"name": ""}).status_code == 200
    client.post("/onboarding/", {"name": "Second Org"})
    assert Membership.objects.get(user=user).tenant.name == "Second Org"


def test_anonymous_portal_pages_redirect_to_login(client):
    response = client.get("/keys/")
    assert response.status_code == 302
    assert response.url.startswith("/accounts/login/")


def test_password_reset_sends_mail(world, client):
    client.post("/accounts/password/reset/", {"email": world.owner.email})
    assert any("password" in m.subject.lower() for m in mail.outbox)
