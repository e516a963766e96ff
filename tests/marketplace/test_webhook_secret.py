"""The webhook signing secret on the Keys page: members who manage keys reveal and
rotate it; it is shown only in the answer to that POST, never on a GET, and the
audit log records who did it without the secret."""

import json
import re
import time
from datetime import datetime, timedelta
from html import unescape
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone

from marketplace import services
from marketplace.models import AuditEvent, Membership, Role, Tenant
from tests.factories import MembershipFactory
from workers import webhooks

pytestmark = pytest.mark.django_db

URL = "/keys/webhook-secret/"
SHOWN_SECRET = re.compile(r'<code id="webhook-secret">([^<]*)</code>')


def _client(membership: Membership, **kwargs: Any) -> Client:
    client = Client(**kwargs)
    client.force_login(membership.user)
    return client


def _shown_secret(html: str) -> str | None:
    found = SHOWN_SECRET.search(html)
    return unescape(found.group(1)) if found else None


def _form_current(client: Client) -> str:
    """The secret's fingerprint that the Keys page's rotate form carries."""
    html = client.get("/keys/").content.decode()
    match = re.search(r'name="current" value="([0-9a-f]{16})"', html)
    assert match, "the rotate form names the current secret"
    return match.group(1)


def _rotate(client: Client) -> Any:
    """Press "Rotate secret" on the Keys page as it is now."""
    return client.post(URL, {"action": "rotate", "current": _form_current(client)})


def _assert_both_refused_with_403(client: Client, tenant: Tenant) -> None:
    """Reveal and rotate both get 403, show no secret, and change and audit nothing."""
    before = _secrets_of(tenant)
    for action in ("reveal", "rotate"):
        response = client.post(URL, {"action": action})
        assert response.status_code == 403
        assert tenant.webhook_secret not in response.content.decode()
    assert _secrets_of(tenant) == before
    assert not _secret_events(tenant)


def _secret_events(tenant: Tenant) -> list[AuditEvent]:
    return list(
        AuditEvent.objects.filter(tenant=tenant, action__startswith="webhook_secret.").order_by(
            "id"
        )
    )


def _secrets_of(tenant: Tenant) -> tuple[str, str, datetime | None]:
    tenant.refresh_from_db()
    return (
        tenant.webhook_secret,
        tenant.webhook_secret_previous,
        tenant.webhook_secret_previous_until,
    )


# ---- Reveal ---------------------------------------------------------------------


def test_reveal_shows_the_secret_in_that_answer_only_and_is_audited(world):
    client = _client(world.membership)
    secret = world.tenant.webhook_secret
    before = _secrets_of(world.tenant)

    response = client.post(URL, {"action": "reveal"})

    assert response.status_code == 200
    html = response.content.decode()
    assert _shown_secret(html) == secret
    assert 'data-copy-target="#webhook-secret" hidden' in html
    assert html.count(secret) == 1
    assert "no-store" in response["Cache-Control"]
    assert _secrets_of(world.tenant) == before  # revealing changes nothing
    [event] = _secret_events(world.tenant)
    assert event.action == "webhook_secret.revealed"
    assert event.actor == world.owner
    assert (event.target_type, event.target_id) == ("Tenant", str(world.tenant.pk))
    assert event.metadata == {}

    page = client.get("/keys/")
    assert page.status_code == 200
    assert "Webhook signing secret" in page.content.decode()
    assert secret not in page.content.decode()
    assert _shown_secret(page.content.decode()) is None


def test_the_answer_is_the_keys_page_with_the_same_keys_and_an_empty_form(world):
    client = _client(world.membership)
    page = client.get("/keys/")
    revealed = client.post(URL, {"action": "reveal"})
    assert [k.pk for k in revealed.context["keys"]] == [k.pk for k in page.context["keys"]]
    assert not revealed.context["form"].is_bound
    assert revealed.context["nav"] == "keys"
    assert revealed.context["created_token"] is None


def test_reading_the_page_never_holds_the_secret_nor_does_a_get_of_the_action(world):
    client = _client(world.membership)
    secret = world.tenant.webhook_secret
    assert secret not in client.get("/keys/").content.decode()
    response = client.get(URL, {"action": "reveal"})
    assert response.status_code == 405
    assert secret not in response.content.decode()
    assert not _secret_events(world.tenant)


@pytest.mark.parametrize("role", [Role.ADMIN, Role.DEVELOPER])
def test_admins_and_developers_may_reveal_and_rotate(world, role):
    member = MembershipFactory.create(tenant=world.tenant, role=role)
    client = _client(member)
    assert client.post(URL, {"action": "reveal"}).status_code == 200
    assert _rotate(client).status_code == 200
    assert [e.actor for e in _secret_events(world.tenant)] == [member.user, member.user]


def test_billing_role_gets_403_and_nothing_changes(world):
    member = MembershipFactory.create(tenant=world.tenant, role=Role.BILLING)
    _assert_both_refused_with_403(_client(member), world.tenant)


def test_another_tenants_member_reaches_only_their_own_secret(world, other_world):
    mine = _secrets_of(world.tenant)
    client = _client(other_world.membership)
    session = client.session
    session["tenant_id"] = world.tenant.pk  # not theirs: the portal ignores it
    session.save()

    revealed = client.post(URL, {"action": "reveal"})
    rotated = _rotate(client)

    assert _shown_secret(revealed.content.decode()) == other_world.tenant.webhook_secret
    other_world.tenant.refresh_from_db()
    assert _shown_secret(rotated.content.decode()) == other_world.tenant.webhook_secret
    for response in (revealed, rotated):
        assert world.tenant.webhook_secret not in response.content.decode()
    assert _secrets_of(world.tenant) == mine
    assert not _secret_events(world.tenant)
    assert len(_secret_events(other_world.tenant)) == 2


def test_a_post_without_the_csrf_token_is_refused(world):
    client = _client(world.membership, enforce_csrf_checks=True)
    _assert_both_refused_with_403(client, world.tenant)

    client.get("/keys/")
    token = client.cookies[settings.CSRF_COOKIE_NAME].value
    response = client.post(URL, {"action": "reveal", "csrfmiddlewaretoken": token})
    assert response.status_code == 200  # the token was what was missing


# ---- Rotate ---------------------------------------------------------------------


def test_rotate_shows_a_new_secret_and_keeps_the_old_one_signing_for_24_hours(world):
    client = _client(world.membership)
    old = world.tenant.webhook_secret
    started = timezone.now()

    response = _rotate(client)

    assert response.status_code == 200
    new, previous, until = _secrets_of(world.tenant)
    assert new != old
    assert new.startswith("whsec_")
    assert previous == old
    assert until is not None
    assert started + timedelta(hours=24) <= until <= timezone.now() + timedelta(hours=24)
    assert world.tenant.webhook_secrets() == [new, old]
    html = response.content.decode()
    assert _shown_secret(html) == new
    assert old not in html
    assert f"{until:%Y-%m-%d %H:%M} UTC" in html
    assert "the previous secret also signs every delivery" in html

    [event] = _secret_events(world.tenant)
    assert event.action == "webhook_secret.rotated"
    assert event.actor == world.owner
    assert event.metadata == {"previous_valid_until": until.isoformat()}
    recorded = json.dumps(event.metadata) + event.reason + event.target_id
    assert old not in recorded
    assert new not in recorded

    page = client.get("/keys/").content.decode()
    assert new not in page
    assert old not in page
    assert "The previous secret also signs deliveries until" in unescape(page)


def test_rotating_twice_within_the_overlap_drops_the_oldest_secret(world):
    client = _client(world.membership)
    first = world.tenant.webhook_secret
    _rotate(client)
    second = _secrets_of(world.tenant)[0]
    response = _rotate(client)
    third, previous, _ = _secrets_of(world.tenant)

    assert len({first, second, third}) == 3
    assert previous == second
    assert world.tenant.webhook_secrets() == [third, second]
    assert first not in world.tenant.webhook_secrets()
    assert _shown_secret(response.content.decode()) == third
    assert [e.action for e in _secret_events(world.tenant)] == ["webhook_secret.rotated"] * 2


def test_the_same_rotate_form_sent_twice_rotates_once(world):
    """A refresh of the answer page resends the POST: it must not push out the
    secret that the first rotation kept signing."""
    client = _client(world.membership)
    first = world.tenant.webhook_secret
    form = {"action": "rotate", "current": _form_current(client)}
    assert client.post(URL, form).status_code == 200
    second = _secrets_of(world.tenant)[0]

    again = client.post(URL, form)

    assert again.status_code == 409
    assert "rotated after this page was loaded" in unescape(again.content.decode())
    assert second not in again.content.decode()
    assert _secrets_of(world.tenant)[:2] == (second, first)
    assert [e.action for e in _secret_events(world.tenant)] == ["webhook_secret.rotated"]


def test_rotate_without_naming_the_current_secret_is_400_naming_the_field(world):
    before = _secrets_of(world.tenant)
    response = _client(world.membership).post(URL, {"action": "rotate"})
    assert response.status_code == 400
    assert "The field “current” is required to rotate." in unescape(response.content.decode())
    assert _secrets_of(world.tenant) == before


def test_the_service_rotates_and_returns_the_new_secret(world):
    old = world.tenant.webhook_secret
    new = services.webhook_secret_rotate(tenant=world.tenant, actor=None)
    assert world.tenant.webhook_secret == new  # the caller's object is up to date
    assert world.tenant.webhook_secret_previous == old
    assert services.webhook_secret_reveal(tenant=world.tenant, actor=None) == new
    assert [e.actor_label for e in _secret_events(world.tenant)] == ["system", "system"]


def test_the_previous_secret_stops_counting_when_its_overlap_ends(world):
    old = world.tenant.webhook_secret
    new = services.webhook_secret_rotate(tenant=world.tenant, actor=None)
    until = world.tenant.webhook_secret_previous_until
    assert until is not None
    assert world.tenant.webhook_secrets(now=until - timedelta(seconds=1)) == [new, old]
    assert world.tenant.webhook_secrets(now=until) == [new]
    assert world.tenant.webhook_secrets(now=until + timedelta(days=1)) == [new]

    Tenant.objects.filter(pk=world.tenant.pk).update(
        webhook_secret_previous_until=timezone.now() - timedelta(seconds=1)
    )
    page = _client(world.membership).post(URL, {"action": "reveal"}).content.decode()
    assert "previous secret also signs" not in unescape(page)


@pytest.mark.parametrize("data", [{"action": "delete"}, {"action": ""}, {}])
def test_anything_but_reveal_or_rotate_is_400_naming_the_field_and_changes_nothing(world, data):
    client = _client(world.membership)
    before = _secrets_of(world.tenant)
    response = client.post(URL, data)
    assert response.status_code == 400
    html = unescape(response.content.decode())
    assert "The field “action” must be “reveal” or “rotate”." in html
    assert world.tenant.webhook_secret not in html
    assert _shown_secret(html) is None
    assert _secrets_of(world.tenant) == before
    assert not _secret_events(world.tenant)


# ---- The page's guidance and the audit pages ------------------------------------


def test_the_keys_page_explains_the_header_and_offers_both_forms(world):
    html = unescape(_client(world.membership).get("/keys/").content.decode())
    assert "Cango-Signature: t=<unix time>,v1=<hex>" in html
    assert f'action="{URL}"' in html
    assert '<input type="hidden" name="action" value="reveal">' in html
    assert '<input type="hidden" name="action" value="rotate">' in html
    assert 'data-confirm="Rotate the webhook signing secret? For 24 hours' in html
    assert html.count("csrfmiddlewaretoken") >= 3  # create, reveal, rotate


def test_the_verification_code_on_the_page_accepts_either_secret_and_nothing_else(world):
    """The snippet tenants copy really verifies what ``deliver`` sends."""
    html = _client(world.membership).get("/keys/").content.decode()
    found = re.search(r'<code id="webhook-verify">(.*?)</code>', html, re.DOTALL)
    assert found is not None
    namespace: dict[str, Any] = {}
    exec(unescape(found.group(1)), namespace)  # noqa: S102 - our own page's sample
    valid = namespace["cango_signature_valid"]

    old = world.tenant.webhook_secret
    new = services.webhook_secret_rotate(tenant=world.tenant, actor=None)
    body = b'{"id":"job_1","status":"succeeded"}'
    now = int(time.time())
    header = webhooks.signature_header(world.tenant.webhook_secrets(), now, body)
    assert valid(header, body, new)
    assert valid(header, body, old)
    assert not valid(header, body, "whsec_someone-else")
    assert not valid(header, body + b" ", new)
    assert not valid(webhooks.signature_header([new], now - 600, body), body, new)
    assert not valid("v1=" + header.split("v1=")[1], body, new)  # no timestamp


def test_the_audit_pages_name_and_filter_the_two_actions(world, other_world):
    services.webhook_secret_reveal(tenant=world.tenant, actor=world.owner)
    services.webhook_secret_rotate(tenant=world.tenant, actor=world.owner)
    services.webhook_secret_rotate(tenant=other_world.tenant, actor=other_world.owner)
    client = _client(world.membership)

    page = client.get("/audit/").content.decode()
    assert "Webhook signing secret revealed" in page
    assert "Webhook signing secret rotated" in page
    assert 'value="webhook_secret.rotated"' in page  # offered by the filter

    rotated = client.get("/audit/", {"action": "webhook_secret.rotated"})
    assert rotated.status_code == 200
    assert [e["action"] for e in rotated.context["events"]] == ["webhook_secret.rotated"]
    assert "previous_valid_until" in rotated.content.decode()
    assert world.tenant.webhook_secret not in rotated.content.decode()
