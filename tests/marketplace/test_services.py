"""Team and key services: roles, the last-owner rule, invitations, audit rows."""

from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from marketplace import services
from marketplace.exceptions import InvitationInvalid, LastOwnerError
from marketplace.models import AuditEvent, Invitation, Membership, Role
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_tenant_create_makes_the_user_owner_and_audits(world):
    user = UserFactory.create()
    tenant = services.tenant_create(name="  Acme <b>Ltd</b> ", owner=user)
    assert tenant.name == "Acme <b>Ltd</b>"
    assert tenant.slug == "acme-bltdb"
    assert Membership.objects.get(tenant=tenant, user=user).role == Role.OWNER
    assert AuditEvent.objects.filter(tenant=tenant, action="tenant.created").exists()


def test_slugs_stay_unique(world):
    user = UserFactory.create()
    first = services.tenant_create(name="Same", owner=user)
    second = services.tenant_create(name="Same", owner=user)
    assert first.slug != second.slug


def test_last_owner_cannot_be_demoted_or_removed(world):
    with pytest.raises(LastOwnerError):
        services.membership_change_role(
            membership=world.membership, actor=world.owner, role=Role.DEVELOPER
        )
    with pytest.raises(LastOwnerError):
        services.membership_remove(membership=world.membership, actor=world.owner)
    world.membership.refresh_from_db()
    assert world.membership.role == Role.OWNER


def test_an_owner_can_leave_once_another_owner_exists(world):
    second = MembershipFactory.create(tenant=world.tenant, role=Role.DEVELOPER)
    services.membership_change_role(membership=second, actor=world.owner, role=Role.OWNER)
    services.membership_remove(membership=world.membership, actor=world.owner)
    assert not Membership.objects.filter(pk=world.membership.pk).exists()
    event = AuditEvent.objects.get(tenant=world.tenant, action="membership.left")
    assert event.actor == world.owner


def test_invitation_is_mailed_and_accepted_once(world, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        invitation = services.invitation_create(
            tenant=world.tenant,
            actor=world.owner,
            email="New.Person@Example.com",
            role=Role.BILLING,
        )
    assert invitation.email == "new.person@example.com"
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["new.person@example.com"]
    token = message.body.split("/invitations/")[1].split("/")[0]
    assert invitation.token_hash != token
    invitee = UserFactory.create(email="new.person@example.com")
    membership = services.invitation_accept(token=token, user=invitee)
    assert membership.role == Role.BILLING
    assert membership.tenant == world.tenant
    with pytest.raises(InvitationInvalid):
        services.invitation_accept(token=token, user=invitee)


def test_invitation_for_another_address_is_refused(world, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        services.invitation_create(
            tenant=world.tenant, actor=world.owner, email="a@example.com", role=Role.DEVELOPER
        )
    token = mail.outbox[0].body.split("/invitations/")[1].split("/")[0]
    with pytest.raises(InvitationInvalid, match=r"a@example\.com"):
        services.invitation_accept(token=token, user=UserFactory.create(email="b@example.com"))
    assert not Membership.objects.filter(tenant=world.tenant, user__email="b@example.com").exists()


def test_expired_and_replaced_invitations_are_invalid(world, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        first = services.invitation_create(
            tenant=world.tenant, actor=world.owner, email="x@example.com", role=Role.DEVELOPER
        )
        services.invitation_create(
            tenant=world.tenant, actor=world.owner, email="x@example.com", role=Role.ADMIN
        )
    first_token = mail.outbox[0].body.split("/invitations/")[1].split("/")[0]
    second_token = mail.outbox[1].body.split("/invitations/")[1].split("/")[0]
    first.refresh_from_db()
    assert first.revoked_at is not None
    with pytest.raises(InvitationInvalid):
        services.invitation_get_open(token=first_token)
    Invitation.objects.filter(revoked_at__isnull=True).update(
        expires_at=timezone.now() - timedelta(minutes=1)
    )
    with pytest.raises(InvitationInvalid):
        services.invitation_get_open(token=second_token)


def test_suspension_is_audited_with_actor_and_reason(world):
    staff = UserFactory.create(is_staff=True)
    services.tenant_suspend(tenant=world.tenant, actor=staff, reason="chargeback")
    services.tenant_suspend(tenant=world.tenant, actor=staff, reason="again")  # no-op
    events = AuditEvent.objects.filter(tenant=world.tenant, action="tenant.suspended")
    assert [(e.actor, e.reason) for e in events] == [(staff, "chargeback")]
