"""Reads for tenants, members and keys. Tenant-scoped reads take ``tenant`` first."""

from django.db.models import F, QuerySet

from .models import ApiKey, AuditEvent, Invitation, Membership, Tenant, User


def membership_for_portal(*, user: User, tenant_id: int | None) -> Membership | None:
    """The membership the portal acts through: the session's tenant, else the oldest."""
    memberships = Membership.objects.select_related("tenant").filter(user=user)
    if tenant_id is not None:
        chosen = memberships.filter(tenant_id=tenant_id).first()
        if chosen is not None:
            return chosen
    return memberships.order_by("created_at").first()


def memberships_for_user(*, user: User) -> QuerySet[Membership]:
    return Membership.objects.select_related("tenant").filter(user=user).order_by("tenant__name")


def api_keys_list(*, tenant: Tenant) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(tenant=tenant).order_by(
        F("revoked_at").asc(nulls_first=True), "-created_at"
    )


def members_list(*, tenant: Tenant) -> QuerySet[Membership]:
    return Membership.objects.filter(tenant=tenant).select_related("user").order_by("created_at")


def invitations_open(*, tenant: Tenant) -> QuerySet[Invitation]:
    return Invitation.objects.filter(
        tenant=tenant, accepted_at__isnull=True, revoked_at__isnull=True
    ).order_by("-created_at")


def audit_events_list(*, tenant: Tenant) -> QuerySet[AuditEvent]:
    return AuditEvent.objects.filter(tenant=tenant).select_related("actor")
