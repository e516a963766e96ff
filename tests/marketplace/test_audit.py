"""The audit log: every audited action writes exactly one event with actor, target,
tenant and time; no secret ever enters one; owners see their own tenant's events
(page and CSV), staff see everyone's at /ops/audit/, and nobody else sees either."""

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html import unescape
from typing import Any

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db import connection
from django.forms import BaseForm, MultiWidget
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing import ledger
from billing.models import CreditAccount
from marketplace import services
from marketplace.models import AuditEvent, CatalogModel, Invitation, Membership, Role, Tenant, User
from tests.factories import MembershipFactory, UserFactory
from tests.mfa import staff_force_login
from workers.models import Deployment, Site, TritonServer

pytestmark = pytest.mark.django_db


# ---- Helpers --------------------------------------------------------------------


@pytest.fixture
def staff() -> User:
    return UserFactory.create(is_staff=True, is_superuser=True)


@pytest.fixture
def staff_client(staff: User) -> Client:
    return staff_force_login(Client(), staff)


def _client(user: User) -> Client:
    if user.is_staff:
        return staff_force_login(Client(), user)
    client = Client()
    client.force_login(user)
    return client


def _form_data(form: BaseForm) -> dict[str, Any]:
    """What a browser would submit for ``form`` as rendered (unchanged)."""
    data: dict[str, Any] = {}
    for name, field in form.fields.items():
        if field.disabled:
            continue
        key = form.add_prefix(name)
        value = form[name].value()
        if isinstance(field.widget, MultiWidget):
            parts: list[Any] = field.widget.decompress(value) or []
            for i, part in enumerate(parts):
                data[f"{key}_{i}"] = "" if part is None else str(part)
                if field.show_hidden_initial:
                    data[f"{form.add_initial_prefix(name)}_{i}"] = data[f"{key}_{i}"]
        elif value is None:
            data[key] = ""
        elif isinstance(value, bool):
            if value:
                data[key] = "on"
        elif isinstance(value, list | tuple):
            data[key] = [str(v) for v in value]
        else:
            data[key] = str(value)
        if field.show_hidden_initial and key in data:
            # Rendered as a hidden input for fields with a callable default.
            data[form.add_initial_prefix(name)] = data[key]
    return data


def _admin_page_data(client: Client, url: str) -> dict[str, Any]:
    """The change page's form and inline formsets, as submitted without edits."""
    page = client.get(url)
    assert page.status_code == 200, page.status_code
    data = _form_data(page.context["adminform"].form)
    for inline in page.context["inline_admin_formsets"]:
        formset = inline.formset
        data.update(_form_data(formset.management_form))
        for form in formset.forms:
            data.update(_form_data(form))
    return data


def _streamed(response: Any) -> str:
    return b"".join(response.streaming_content).decode()


def _events(**filters: Any) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(**filters).order_by("id"))


def _assert_one_event(before: int, action: str, *, actor: User | None, tenant: Tenant | None):
    """Exactly one new event, this one, with who, what, for whom and when."""
    new = list(AuditEvent.objects.filter(pk__gt=before).order_by("id"))
    assert [e.action for e in new] == [action], [e.action for e in new]
    event = new[0]
    assert event.actor == actor
    assert event.actor_label == (actor.email if actor else "system")
    assert event.tenant == tenant
    assert event.target_type
    assert event.target_id
    assert abs(event.created_at - timezone.now()) < timedelta(minutes=1)
    return event


def _last_id() -> int:
    last = AuditEvent.objects.order_by("-id").first()
    return last.pk if last else 0


@pytest.fixture
def site() -> Site:
    site = Site.objects.create(slug="site-a", name="Site A", region="us-tx")
    server = TritonServer.objects.create(
        site=site, name="triton-1", http_url="http://10.0.0.5:8000", auth_header="X-K: hunter2"
    )
    model = CatalogModel.objects.create(slug="echo", name="Echo", price_micros=10)
    Deployment.objects.create(model=model, server=server, triton_model_name="echo")
    return site


# ---- Coverage: staff edits in the admin -------------------------------------------


def test_catalog_price_change_is_audited_with_old_and_new_price(staff, staff_client, site):
    model = CatalogModel.objects.get(slug="echo")
    url = f"/admin/marketplace/catalogmodel/{model.pk}/change/"
    data = _admin_page_data(staff_client, url)
    before = _last_id()
    response = staff_client.post(url, {**data, "price_micros": "25"})
    assert response.status_code == 302, response.context["adminform"].form.errors
    model.refresh_from_db()
    assert model.price_micros == 25
    event = _assert_one_event(before, "catalog_model.changed", actor=staff, tenant=None)
    assert event.target_type == "CatalogModel"
    assert event.target_id == str(model.pk)
    assert event.metadata["changes"] == {"price_micros": {"from": 10, "to": 25}}


def test_saving_an_unchanged_admin_form_records_nothing(staff_client, site):
    model = CatalogModel.objects.get(slug="echo")
    url = f"/admin/marketplace/catalogmodel/{model.pk}/change/"
    data = _admin_page_data(staff_client, url)
    before = _last_id()
    assert staff_client.post(url, data).status_code == 302
    assert _events(pk__gt=before) == []


def test_site_edit_with_inline_servers_audits_each_row_once(staff, staff_client, site):
    url = f"/admin/workers/site/{site.pk}/change/"
    data = _admin_page_data(staff_client, url)
    data["name"] = "Site A (Texas)"
    data["servers-0-http_url"] = "http://10.0.0.6:8000"
    data.update(
        {
            "servers-TOTAL_FORMS": "2",
            "servers-1-name": "triton-2",
            "servers-1-http_url": "http://10.0.0.7:8000",
            "servers-1-enabled": "on",
            "servers-1-site": str(site.pk),
        }
    )
    before = _last_id()
    response = staff_client.post(url, data)
    assert response.status_code == 302
    new = _events(pk__gt=before)
    assert sorted(e.action for e in new) == ["server.changed", "server.created", "site.changed"]
    assert all(e.actor == staff and e.tenant is None for e in new)
    by_action = {e.action: e for e in new}
    assert by_action["site.changed"].metadata["changes"] == {
        "name": {"from": "Site A", "to": "Site A (Texas)"}
    }
    assert by_action["server.changed"].metadata["changes"]["http_url"]["to"] == (
        "http://10.0.0.6:8000"
    )
    created = TritonServer.objects.get(name="triton-2")
    assert by_action["server.created"].target_id == str(created.pk)


def test_server_auth_header_change_is_audited_without_its_value(staff, staff_client, site):
    server = TritonServer.objects.get(name="triton-1")
    url = f"/admin/workers/tritonserver/{server.pk}/change/"
    data = _admin_page_data(staff_client, url)
    before = _last_id()
    response = staff_client.post(url, {**data, "auth_header": "X-K: correct-horse-7"})
    assert response.status_code == 302
    event = _assert_one_event(before, "server.changed", actor=staff, tenant=None)
    assert event.metadata["changes"] == {"auth_header": services.AUDIT_REDACTED}
    text = json.dumps(event.metadata)
    assert "correct-horse-7" not in text
    assert "hunter2" not in text


def test_server_auth_header_is_write_only_in_the_admin(staff_client, site):
    server = TritonServer.objects.get(name="triton-1")
    url = f"/admin/workers/tritonserver/{server.pk}/change/"
    assert "hunter2" not in staff_client.get(url).content.decode()
    data = {**_admin_page_data(staff_client, url), "auth_header": ""}
    before = _last_id()
    assert staff_client.post(url, data).status_code == 302  # blank: kept, nothing changed
    server.refresh_from_db()
    assert server.auth_header == "X-K: hunter2"
    assert _last_id() == before
    assert staff_client.post(url, {**data, "auth_header_clear": "on"}).status_code == 302
    server.refresh_from_db()
    assert server.auth_header == ""


def test_deployment_edit_and_delete_are_audited(staff, staff_client, site):
    deployment = Deployment.objects.get()
    url = f"/admin/workers/deployment/{deployment.pk}/change/"
    data = _admin_page_data(staff_client, url)
    before = _last_id()
    assert staff_client.post(url, {**data, "max_concurrency": "2"}).status_code == 302
    event = _assert_one_event(before, "deployment.changed", actor=staff, tenant=None)
    assert event.metadata["changes"] == {"max_concurrency": {"from": 8, "to": 2}}

    before = _last_id()
    response = staff_client.post(
        f"/admin/workers/deployment/{deployment.pk}/delete/", {"post": "yes"}
    )
    assert response.status_code == 302
    event = _assert_one_event(before, "deployment.deleted", actor=staff, tenant=None)
    assert event.target_id == str(deployment.pk)
    assert not Deployment.objects.exists()


def test_tenant_edit_is_audited_to_the_tenant_without_the_webhook_secret(
    world, staff, staff_client
):
    old_secret = world.tenant.webhook_secret
    url = f"/admin/marketplace/tenant/{world.tenant.pk}/change/"
    data = _admin_page_data(staff_client, url)
    before = _last_id()
    response = staff_client.post(
        url, {**data, "region_pin": "us-tx", "webhook_secret": "whsec_new-and-secret"}
    )
    assert response.status_code == 302
    event = _assert_one_event(before, "tenant.changed", actor=staff, tenant=world.tenant)
    assert event.metadata["changes"] == {
        "region_pin": {"from": "", "to": "us-tx"},
        "webhook_secret": services.AUDIT_REDACTED,
    }
    text = json.dumps(event.metadata)
    assert old_secret not in text
    assert "whsec_new-and-secret" not in text


def test_tenant_webhook_secrets_are_write_only_in_the_admin(world, staff, staff_client):
    """Neither the secret nor the one kept after a rotation is ever on the page; a
    blank box keeps the secret, and an unchanged submission records nothing."""
    old = world.tenant.webhook_secret
    new = services.webhook_secret_rotate(tenant=world.tenant, actor=None)
    url = f"/admin/marketplace/tenant/{world.tenant.pk}/change/"
    page = staff_client.get(url).content.decode()
    assert old not in page
    assert new not in page
    data = _admin_page_data(staff_client, url)
    assert "webhook_secret_previous" not in data

    before = _last_id()
    assert staff_client.post(url, {**data, "webhook_secret": ""}).status_code == 302
    assert staff_client.post(url, data).status_code == 302
    assert _last_id() == before
    world.tenant.refresh_from_db()
    assert world.tenant.webhook_secrets() == [new, old]

    # After a leak staff end the overlap: the previous secret stops signing at once.
    cleared = {**data, "webhook_secret_previous_until_0": "", "webhook_secret_previous_until_1": ""}
    assert staff_client.post(url, cleared).status_code == 302
    world.tenant.refresh_from_db()
    assert world.tenant.webhook_secrets() == [new]
    event = _assert_one_event(before, "tenant.changed", actor=staff, tenant=world.tenant)
    assert old not in json.dumps(event.metadata)


def test_staff_rotate_webhook_secrets_with_the_overlap_and_never_see_them(
    world, other_world, staff, staff_client
):
    old = world.tenant.webhook_secret
    before = _last_id()
    response = staff_client.post(
        "/admin/marketplace/tenant/",
        {"action": "rotate_webhook_secret", ACTION_CHECKBOX_NAME: [world.tenant.pk]},
        follow=True,
    )
    assert response.status_code == 200
    world.tenant.refresh_from_db()
    assert world.tenant.webhook_secret != old
    assert world.tenant.webhook_secrets() == [world.tenant.webhook_secret, old]
    assert world.tenant.webhook_secret not in response.content.decode()
    event = _assert_one_event(before, "webhook_secret.rotated", actor=staff, tenant=world.tenant)
    assert set(event.metadata) == {"previous_valid_until"}
    other_world.tenant.refresh_from_db()
    assert other_world.tenant.webhook_secret_previous == ""


def test_member_role_change_in_the_admin_goes_through_the_service(world, staff, staff_client):
    member = MembershipFactory.create(tenant=world.tenant, role=Role.DEVELOPER)
    url = f"/admin/marketplace/membership/{member.pk}/change/"
    data = _admin_page_data(staff_client, url)
    before = _last_id()
    assert staff_client.post(url, {**data, "role": Role.ADMIN}).status_code == 302
    event = _assert_one_event(before, "membership.role_changed", actor=staff, tenant=world.tenant)
    assert event.metadata == {"user": member.user.email, "from": "developer", "to": "admin"}


def test_admin_cannot_demote_the_last_owner_and_records_nothing(world, staff_client):
    url = f"/admin/marketplace/membership/{world.membership.pk}/change/"
    data = _admin_page_data(staff_client, url)
    before = _last_id()
    response = staff_client.post(url, {**data, "role": Role.DEVELOPER})
    assert response.status_code == 200
    assert "at least one owner" in response.context["adminform"].form.errors["role"][0]
    world.membership.refresh_from_db()
    assert world.membership.role == Role.OWNER
    assert _events(pk__gt=before) == []


def test_member_removed_in_the_admin_is_audited_once(world, staff, staff_client):
    member = MembershipFactory.create(tenant=world.tenant, role=Role.BILLING)
    before = _last_id()
    response = staff_client.post(
        f"/admin/marketplace/membership/{member.pk}/delete/", {"post": "yes"}
    )
    assert response.status_code == 302
    _assert_one_event(before, "membership.removed", actor=staff, tenant=world.tenant)
    assert not Membership.objects.filter(pk=member.pk).exists()


def test_invitation_deleted_in_the_admin_is_audited(world, staff, staff_client):
    invitation = services.invitation_create(
        tenant=world.tenant, actor=world.owner, email="new@example.com", role=Role.DEVELOPER
    )
    before = _last_id()
    response = staff_client.post(
        "/admin/marketplace/invitation/",
        {"action": "delete_selected", ACTION_CHECKBOX_NAME: [invitation.pk], "post": "yes"},
    )
    assert response.status_code == 302
    _assert_one_event(before, "invitation.deleted", actor=staff, tenant=world.tenant)
    assert not Invitation.objects.filter(pk=invitation.pk).exists()


def test_making_a_user_staff_is_audited_without_any_password(staff, staff_client):
    response = staff_client.post(
        "/admin/marketplace/user/add/",
        {
            "email": "ops2@example.com",
            "password1": "Tr0ub4dor&3-long-enough",
            "password2": "Tr0ub4dor&3-long-enough",
            "usable_password": "true",
        },
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    user = User.objects.get(email="ops2@example.com")
    created = AuditEvent.objects.get(action="user.created")
    assert created.target_id == str(user.pk)
    assert "Tr0ub4dor" not in json.dumps(created.metadata)

    url = f"/admin/marketplace/user/{user.pk}/change/"
    data = _admin_page_data(staff_client, url)
    before = _last_id()
    assert staff_client.post(url, {**data, "is_staff": "on"}).status_code == 302
    event = _assert_one_event(before, "user.changed", actor=staff, tenant=None)
    assert event.metadata["changes"] == {"is_staff": {"from": False, "to": True}}


def test_password_set_by_staff_is_audited_without_the_password(world, staff, staff_client):
    url = f"/admin/marketplace/user/{world.owner.pk}/password/"
    before = _last_id()
    refused = staff_client.post(url, {"password1": "a-Long-pass-1", "password2": "other"})
    assert refused.status_code == 200
    assert _events(pk__gt=before) == []
    response = staff_client.post(
        url,
        {"password1": "a-Long-pass-1", "password2": "a-Long-pass-1", "set_usable_password": "true"},
    )
    assert response.status_code == 302
    event = _assert_one_event(before, "user.password_changed", actor=staff, tenant=None)
    assert event.target_id == str(world.owner.pk)
    assert "a-Long-pass-1" not in json.dumps(event.metadata)
    world.owner.refresh_from_db()
    assert world.owner.check_password("a-Long-pass-1")


def test_account_settings_changed_in_the_admin_are_audited(world, staff, staff_client):
    account = CreditAccount.objects.get(tenant=world.tenant)
    url = f"/admin/billing/creditaccount/{account.pk}/change/"
    data = _admin_page_data(staff_client, url)
    before = _last_id()
    response = staff_client.post(url, {**data, "low_balance_threshold_micros": "7000000"})
    assert response.status_code == 302
    event = _assert_one_event(before, "billing.settings_changed", actor=staff, tenant=world.tenant)
    assert event.metadata["changes"]["low_balance_threshold_micros"]["to"] == 7_000_000


# ---- Coverage: the portal -------------------------------------------------------


def test_portal_billing_settings_change_is_audited_once_with_what_changed(world):
    ledger.account_open(tenant_id=world.tenant.pk)
    client = _client(world.owner)
    before = _last_id()
    response = client.post(
        "/billing/settings/",
        {
            "low_balance_threshold_dollars": "12.50",
            "auto_topup_threshold_dollars": "5",
            "auto_topup_amount_dollars": "20",
            "auto_topup_daily_limit_dollars": "100",
        },
    )
    assert response.status_code == 302
    event = _assert_one_event(
        before, "billing.settings_changed", actor=world.owner, tenant=world.tenant
    )
    changes = event.metadata["changes"]
    assert changes["low_balance_threshold_dollars"]["to"] == "12.50"
    assert "auto_topup_enabled" not in changes


def test_key_creation_in_the_portal_never_records_the_token(world):
    client = _client(world.owner)
    response = client.post("/keys/", {"name": "ci"})
    token = response.context["created_token"]
    assert token
    event = AuditEvent.objects.filter(action="api_key.created").latest("id")
    assert event.actor == world.owner
    assert token not in json.dumps(event.metadata)
    # The secret itself may contain "_" (token_urlsafe): cut off the known prefix.
    secret_part = token.removeprefix(f"cango_sk_{response.context['created_key'].public_id}_")
    assert len(secret_part) >= 40
    for row in AuditEvent.objects.all():
        assert secret_part not in json.dumps(row.metadata)
        assert secret_part not in row.reason
    page = client.get("/audit/").content.decode()
    assert secret_part not in page
    assert response.context["created_key"].public_id in page  # the key's public id names it


def test_audit_changes_masks_every_secret_looking_field():
    until = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
    changes = services.audit_changes(
        fields=[
            "password1",
            "api_token",
            "webhook_secret",
            "auth_header",
            "name",
            "webhook_secret_previous_until",
        ],
        before={"name": "a", "webhook_secret_previous_until": None},
        after={
            "password1": "p",
            "api_token": "t",
            "webhook_secret": "s",
            "auth_header": "h",
            "name": Decimal("1.50"),
            "webhook_secret_previous_until": until,
        },
    )
    assert changes == {
        "password1": services.AUDIT_REDACTED,
        "api_token": services.AUDIT_REDACTED,
        "webhook_secret": services.AUDIT_REDACTED,
        "auth_header": services.AUDIT_REDACTED,
        "name": {"from": "a", "to": "1.50"},
        # a time, not a secret: when the previous secret stops signing
        "webhook_secret_previous_until": {"from": None, "to": until.isoformat()},
    }


# ---- The portal's audit page ------------------------------------------------------


def _audit(tenant: Tenant | None, action: str, n: int = 1, actor: User | None = None) -> None:
    for i in range(n):
        services.audit_record(
            action=action,
            actor=actor,
            target=tenant or Site(pk=1),
            tenant=tenant,
            metadata={"n": i},
        )


def test_owner_sees_only_their_tenants_events_newest_first(world, other_world):
    _audit(other_world.tenant, "api_key.revoked", 3)
    _audit(None, "site.status_changed", 2)
    services.api_key_create(tenant=world.tenant, actor=world.owner, name="newest")
    response = _client(world.owner).get("/audit/")
    assert response.status_code == 200
    events = response.context["events"]
    mine = AuditEvent.objects.filter(tenant=world.tenant).count()
    assert len(events) == mine == 2  # the fixture's key and this one
    assert events[0]["action"] == "api_key.created"
    assert "newest" in events[0]["details"]
    times = [e["created_at"] for e in events]
    assert times == sorted(times, reverse=True)
    assert {e["action"] for e in events} == {"api_key.created"}
    assert other_world.tenant.name not in response.content.decode()


def test_audit_csv_holds_only_the_tenants_events(world, other_world):
    _audit(other_world.tenant, "credit.adjusted", 2)
    _audit(None, "site.changed", 1)
    _audit(world.tenant, "credit.adjusted", 2)
    response = _client(world.owner).get("/audit.csv")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(_streamed(response))))
    assert len(rows) == AuditEvent.objects.filter(tenant=world.tenant).count()
    assert {r["action"] for r in rows} <= {"api_key.created", "credit.adjusted"}
    assert [r["action"] for r in rows].count("credit.adjusted") == 2

    filtered = _client(world.owner).get("/audit.csv", {"action": "credit.adjusted"})
    body = _streamed(filtered)
    assert [r["action"] for r in csv.DictReader(io.StringIO(body))] == ["credit.adjusted"] * 2


def test_audit_csv_cells_cannot_run_as_formulas(world):
    services.audit_record(
        action="credit.adjusted",
        actor=None,
        target=world.tenant,
        tenant=world.tenant,
        reason="=HYPERLINK('http://evil')",
    )
    body = _streamed(_client(world.owner).get("/audit.csv"))
    reasons = [r["reason"] for r in csv.DictReader(io.StringIO(body)) if r["reason"]]
    assert reasons == ["'=HYPERLINK('http://evil')"]


def test_audit_filter_by_action(world):
    _audit(world.tenant, "credit.granted", 2)
    response = _client(world.owner).get("/audit/", {"action": "credit.granted"})
    assert [e["action"] for e in response.context["events"]] == ["credit.granted"] * 2


@pytest.mark.parametrize(
    ("params", "field"),
    [({"action": "site.changed"}, "action"), ({"before": "not-a-cursor"}, "before")],
)
def test_bad_audit_filters_answer_400_naming_the_field(world, params, field):
    for url in ("/audit/", "/audit.csv"):
        response = _client(world.owner).get(url, params)
        assert response.status_code == 400
        assert field in response.context["form"].errors


@pytest.mark.parametrize("role", [Role.ADMIN, Role.DEVELOPER, Role.BILLING])
def test_members_without_the_owner_role_get_403_and_no_link(world, role):
    member = MembershipFactory.create(tenant=world.tenant, role=role)
    client = _client(member.user)
    assert client.get("/audit/").status_code == 403
    assert client.get("/audit.csv").status_code == 403
    assert 'href="/audit/"' not in client.get("/").content.decode()
    assert 'href="/audit/"' in _client(world.owner).get("/").content.decode()


def test_signed_out_visitors_are_sent_to_log_in(world):
    response = Client().get("/audit/")
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]


def test_audit_pages_by_keyset_and_keeps_the_filter(world):
    _audit(world.tenant, "credit.granted", 60)
    client = _client(world.owner)
    first = client.get("/audit/", {"action": "credit.granted"})
    assert len(first.context["events"]) == 50
    assert first.context["newer_url"] is None
    older_url = first.context["older_url"]
    assert older_url.startswith("?action=credit.granted&before=")
    second = client.get("/audit/" + older_url)
    assert len(second.context["events"]) == 10
    assert second.context["older_url"] is None
    seen = {e["details"] for e in first.context["events"] + second.context["events"]}
    assert len(seen) == 60
    back = client.get("/audit/" + unescape(second.context["newer_url"]))
    assert [e["details"] for e in back.context["events"]] == [
        e["details"] for e in first.context["events"]
    ]


def test_audit_page_queries_do_not_grow_with_events(world):
    client = _client(world.owner)
    client.get("/audit/")
    with CaptureQueriesContext(connection) as small:
        client.get("/audit/")
    _audit(world.tenant, "credit.granted", 120, actor=world.owner)
    with CaptureQueriesContext(connection) as large:
        response = client.get("/audit/")
    with CaptureQueriesContext(connection) as paged:
        client.get("/audit/" + response.context["older_url"])
    assert len(small) == len(large) == len(paged) <= 6
    sql = " ".join(q["sql"] for q in large.captured_queries).upper()
    assert "OFFSET" not in sql
    assert "COUNT(" not in sql


# ---- The operator console -----------------------------------------------------------


def test_ops_audit_is_404_for_everyone_but_staff(world):
    assert Client().get("/ops/audit/").status_code == 404
    assert _client(world.owner).get("/ops/audit/").status_code == 404


def test_ops_audit_lists_every_tenant_and_operator_events(world, other_world, staff_client):
    _audit(world.tenant, "credit.granted", 1)
    _audit(other_world.tenant, "credit.adjusted", 1)
    _audit(None, "site.status_changed", 1)
    response = staff_client.get("/ops/audit/")
    assert response.status_code == 200
    actions = [e["action"] for e in response.context["events"]]
    assert actions[:3] == ["site.status_changed", "credit.adjusted", "credit.granted"]
    html = response.content.decode()
    assert world.tenant.name in html
    assert other_world.tenant.name in html


def test_ops_audit_filters_by_tenant_and_action(world, other_world, staff_client):
    _audit(world.tenant, "credit.granted", 2)
    _audit(other_world.tenant, "credit.granted", 3)
    _audit(None, "site.status_changed", 1)
    by_tenant = staff_client.get("/ops/audit/", {"tenant": other_world.tenant.slug})
    assert {e["tenant"] for e in by_tenant.context["events"]} == {other_world.tenant}
    both = staff_client.get(
        "/ops/audit/", {"tenant": world.tenant.slug, "action": "credit.granted"}
    )
    assert len(both.context["events"]) == 2
    by_action = staff_client.get("/ops/audit/", {"action": "site.status_changed"})
    assert [e["tenant"] for e in by_action.context["events"]] == [None]


@pytest.mark.parametrize(
    ("params", "field"),
    [({"tenant": "no-such-tenant"}, "tenant"), ({"action": "nonsense"}, "action")],
)
def test_ops_audit_bad_filters_answer_400_naming_the_field(staff_client, params, field):
    response = staff_client.get("/ops/audit/", params)
    assert response.status_code == 400
    assert field in response.context["form"].errors


def test_ops_audit_queries_do_not_grow_with_events(world, other_world, staff_client):
    staff_client.get("/ops/audit/")
    _audit(world.tenant, "credit.granted", 2)
    with CaptureQueriesContext(connection) as small:
        staff_client.get("/ops/audit/")
    _audit(other_world.tenant, "credit.granted", 60)
    _audit(None, "site.changed", 60)
    with CaptureQueriesContext(connection) as large:
        response = staff_client.get("/ops/audit/")
    with CaptureQueriesContext(connection) as paged:
        staff_client.get("/ops/audit/" + response.context["older_url"])
    assert len(small) == len(large) == len(paged) <= 5


def test_the_admin_audit_list_is_read_only(world, staff_client):
    event = AuditEvent.objects.filter(tenant=world.tenant).first()
    assert event is not None
    assert staff_client.get("/admin/marketplace/auditevent/").status_code == 200
    assert staff_client.get("/admin/marketplace/auditevent/add/").status_code == 403
    url = f"/admin/marketplace/auditevent/{event.pk}/change/"
    staff_client.post(url, {"action": "forged"})
    event.refresh_from_db()
    assert event.action != "forged"
    response = staff_client.post(
        f"/admin/marketplace/auditevent/{event.pk}/delete/", {"post": "yes"}
    )
    assert response.status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()
