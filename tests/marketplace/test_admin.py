"""Staff admin: suspend / reactivate with a reason, audited; keys' hashes never shown."""

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.test import Client

from marketplace.models import AuditEvent, Tenant
from tests.factories import UserFactory
from tests.mfa import staff_force_login

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client() -> Client:
    return staff_force_login(Client(), UserFactory.create(is_staff=True, is_superuser=True))


def test_suspend_action_asks_for_a_reason_then_audits(world, staff_client):
    url = "/admin/marketplace/tenant/"
    data = {"action": "suspend", ACTION_CHECKBOX_NAME: [world.tenant.pk]}
    page = staff_client.post(url, data)
    assert page.status_code == 200
    assert "Reason" in page.content.decode()
    world.tenant.refresh_from_db()
    assert world.tenant.status == Tenant.Status.ACTIVE

    staff_client.post(url, {**data, "apply": "1", "reason": "fraud review"})
    world.tenant.refresh_from_db()
    assert world.tenant.status == Tenant.Status.SUSPENDED
    event = AuditEvent.objects.get(tenant=world.tenant, action="tenant.suspended")
    assert event.reason == "fraud review"
    assert event.actor is not None
    assert event.actor.is_staff
    assert world.api.get("/v1/me").status_code == 403


def test_tenant_list_search_and_filter(world, other_world, staff_client):
    response = staff_client.get("/admin/marketplace/tenant/", {"q": world.tenant.name})
    assert world.tenant.slug in response.content.decode()
    response = staff_client.get("/admin/marketplace/tenant/", {"status__exact": "suspended"})
    assert world.tenant.slug not in response.content.decode()


def test_key_admin_never_shows_the_hash(world, staff_client):
    response = staff_client.get(f"/admin/marketplace/apikey/{world.key.pk}/change/")
    assert response.status_code == 200
    assert world.key.secret_hash not in response.content.decode()


def test_key_admin_revoke_action(world, staff_client):
    staff_client.post(
        "/admin/marketplace/apikey/",
        {"action": "revoke", ACTION_CHECKBOX_NAME: [world.key.pk]},
    )
    world.key.refresh_from_db()
    assert world.key.revoked_at is not None
    assert world.api.get("/v1/me").status_code == 401


def test_non_staff_cannot_reach_admin(world):
    client = Client()
    client.force_login(world.owner)
    assert client.get("/admin/marketplace/tenant/").status_code == 302
