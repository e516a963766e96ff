"""Reads for tenants, members and keys. Tenant-scoped reads take ``tenant`` first."""

from collections.abc import Iterator

from django.db.models import F, QuerySet

from config import keyset

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


AUDIT_PAGE_SIZE = 50
#: Rows fetched per round trip while a CSV export streams.
AUDIT_CSV_CHUNK = 2000


def _audit_events(*, tenant: Tenant, action: str | None) -> QuerySet[AuditEvent]:
    events = AuditEvent.objects.filter(tenant=tenant)
    return events.filter(action=action) if action else events


def audit_events_page(
    *,
    tenant: Tenant,
    action: str | None = None,
    before: keyset.Position | None = None,
    after: keyset.Position | None = None,
    limit: int = AUDIT_PAGE_SIZE,
) -> keyset.Page[AuditEvent]:
    """A page of the tenant's audit events, newest first: one query of ``limit + 1`` rows.

    Only ``tenant``'s own events: operator-wide ones (no tenant) and other tenants'
    never appear, whatever the filter.
    """
    return keyset.page(
        _audit_events(tenant=tenant, action=action), before=before, after=after, limit=limit
    )


def audit_events_for_csv(*, tenant: Tenant, action: str | None = None) -> Iterator[AuditEvent]:
    """Every event of the tenant (optionally one action's), newest first, streamed."""
    return (
        _audit_events(tenant=tenant, action=action)
        .order_by("-created_at", "-id")
        .iterator(chunk_size=AUDIT_CSV_CHUNK)
    )
