"""Writes for tenants, members, invitations, API keys and webhook secrets.

Each function is one action: it runs in one transaction, writes its audit row in
that transaction, and sends e-mail only after commit.
"""

import hashlib
import secrets
import uuid
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import Model
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.text import slugify

from billing import ledger
from billing.forms import BillingSettingsForm
from billing.models import LedgerEntry

from . import keycache, keys
from .exceptions import (
    ApiKeyAlreadyCreated,
    InvitationInvalid,
    LastOwnerError,
    WebhookSecretChanged,
)
from .models import ApiKey, AuditEvent, Invitation, Membership, Role, Tenant, User
from .models.tenants import webhook_secret_generate


def audit_record(
    *,
    action: str,
    actor: User | None,
    target: object,
    tenant: Tenant | None,
    reason: str = "",
    metadata: dict[str, object] | None = None,
    actor_label: str | None = None,
) -> AuditEvent:
    return AuditEvent.objects.create(
        tenant=tenant,
        actor=actor,
        actor_label=actor_label or (actor.email if actor is not None else "system"),
        action=action,
        target_type=type(target).__name__,
        target_id=str(getattr(target, "pk", "")),
        reason=reason,
        metadata=metadata or {},
    )


#: Fields whose values never enter an audit event (only the fact that they changed):
#: credentials, their hashes, and anything that signs or authenticates. Any field
#: whose name contains one of ``_SECRET_WORDS`` counts too (``password1``, ``api_token``).
AUDIT_SECRET_FIELDS = frozenset(
    {"auth_header", "secret_hash", "token_hash", "webhook_secret", "webhook_secret_previous"}
)
_SECRET_WORDS = ("password", "secret", "token", "auth")
#: Fields whose names contain one of those words but hold no secret: recorded in full.
AUDIT_PLAIN_FIELDS = frozenset({"webhook_secret_previous_until"})
AUDIT_REDACTED = "(changed; value not recorded)"


def audit_field_secret(name: str) -> bool:
    """Whether a field's values stay out of the audit log: the known secrets, and any
    field named like one that is not known to be plain (new fields fail closed)."""
    if name in AUDIT_PLAIN_FIELDS:
        return False
    lowered = name.lower()
    return name in AUDIT_SECRET_FIELDS or any(word in lowered for word in _SECRET_WORDS)


def _audit_value(value: object) -> object:
    """A field value as JSON the audit log can keep: rows by their label, amounts as text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Model):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _audit_value(v) for k, v in value.items()}
    if isinstance(value, Iterable):
        return [_audit_value(item) for item in value]
    return str(value)


def audit_changes(
    *, fields: Iterable[str], before: Mapping[str, object], after: Mapping[str, object]
) -> dict[str, object]:
    """``{field: {"from": old, "to": new}}`` for an audit event's metadata.

    A secret field (``AUDIT_SECRET_FIELDS``) is recorded as changed without either
    value, so the audit log can be shown to tenants and staff without leaking it.
    """
    changes: dict[str, object] = {}
    for name in fields:
        if audit_field_secret(name):
            changes[name] = AUDIT_REDACTED
        else:
            changes[name] = {
                "from": _audit_value(before.get(name)),
                "to": _audit_value(after.get(name)),
            }
    return changes


def _slug_unique(name: str) -> str:
    base = slugify(name)[:40] or "org"
    slug = base
    while Tenant.objects.filter(slug=slug).exists():
        slug = f"{base}-{secrets.token_hex(3)}"
    return slug


@transaction.atomic
def tenant_create(*, name: str, owner: User) -> Tenant:
    """Create an organisation with ``owner`` as its first owner."""
    tenant = Tenant.objects.create(name=name.strip(), slug=_slug_unique(name))
    Membership.objects.create(tenant=tenant, user=owner, role=Role.OWNER)
    ledger.account_open(tenant_id=tenant.pk)
    audit_record(action="tenant.created", actor=owner, target=tenant, tenant=tenant)
    return tenant


def _tenant_status_set(
    *, tenant: Tenant, status: Tenant.Status, actor: User | None, reason: str, action: str
) -> Tenant:
    with transaction.atomic():
        locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
        if locked.status != status:
            locked.status = status
            locked.status_reason = reason
            locked.status_changed_at = timezone.now()
            locked.save(update_fields=["status", "status_reason", "status_changed_at"])
            keycache.invalidate()
            audit_record(action=action, actor=actor, target=locked, tenant=locked, reason=reason)
    return locked


def tenant_suspend(*, tenant: Tenant, actor: User | None, reason: str) -> Tenant:
    """Suspend a tenant: its keys get 403 and its users see a notice."""
    return _tenant_status_set(
        tenant=tenant,
        status=Tenant.Status.SUSPENDED,
        actor=actor,
        reason=reason,
        action="tenant.suspended",
    )


def tenant_reactivate(*, tenant: Tenant, actor: User | None, reason: str) -> Tenant:
    return _tenant_status_set(
        tenant=tenant,
        status=Tenant.Status.ACTIVE,
        actor=actor,
        reason=reason,
        action="tenant.reactivated",
    )


TENANT_LIMIT_FIELDS = (
    "tier",
    "limit_key_per_minute",
    "limit_key_in_flight",
    "limit_tenant_per_minute",
    "limit_tenant_in_flight",
)


def tenant_limits_set(
    *, tenant: Tenant, actor: User | None, limits: dict[str, object], reason: str = ""
) -> Tenant:
    """Change a tenant's API tier and limit overrides (``TENANT_LIMIT_FIELDS``), audited.

    Web processes cache keys with their tenant, so the cache is dropped after commit:
    the new limits apply from the next request, not after ``API_KEY_CACHE_SECONDS``.
    """
    unknown = set(limits) - set(TENANT_LIMIT_FIELDS)
    if unknown:
        raise ValueError(f"Not tenant limit fields: {sorted(unknown)}")
    with transaction.atomic():
        locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
        before = {name: getattr(locked, name) for name in limits}
        changed = [name for name, value in limits.items() if before[name] != value]
        if changed:
            for name in changed:
                setattr(locked, name, limits[name])
            locked.full_clean(
                exclude=[f.name for f in Tenant._meta.fields if f.name not in changed]
            )
            locked.save(update_fields=changed)
            keycache.invalidate()
            audit_record(
                action="tenant.limits_changed",
                actor=actor,
                target=locked,
                tenant=locked,
                reason=reason,
                metadata={
                    "before": {name: before[name] for name in changed},
                    "after": {name: limits[name] for name in changed},
                },
            )
    return locked


@transaction.atomic
def api_key_create(
    *,
    tenant: Tenant,
    actor: User | None,
    name: str,
    expires_at: datetime | None = None,
    allowed_models: list[str] | None = None,
    monthly_spend_cap_micros: int | None = None,
    creation_token: uuid.UUID | None = None,
) -> tuple[ApiKey, str]:
    """Create a key and return it with its token. The token is never stored or shown again.

    ``creation_token`` (the portal form's): a second call with the same one creates
    nothing and raises ``ApiKeyAlreadyCreated``.
    """
    public_id, token = keys.token_generate()
    try:
        with transaction.atomic():
            key = ApiKey.objects.create(
                tenant=tenant,
                name=name.strip(),
                public_id=public_id,
                secret_hash=keys.token_hash(token),
                expires_at=expires_at,
                allowed_models=sorted(set(allowed_models or [])),
                monthly_spend_cap_micros=monthly_spend_cap_micros,
                created_by=actor,
                creation_token=creation_token,
            )
    except IntegrityError:
        existing = ApiKey.objects.filter(tenant=tenant, creation_token=creation_token).first()
        if creation_token is None or existing is None:
            raise
        raise ApiKeyAlreadyCreated(existing.name) from None
    audit_record(
        action="api_key.created",
        actor=actor,
        target=key,
        tenant=tenant,
        metadata={"name": key.name, "public_id": public_id},
    )
    return key, token


@transaction.atomic
def api_key_revoke(*, key: ApiKey, actor: User | None) -> ApiKey:
    """Revoke a key at once; the next request with it gets 401."""
    updated = ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now(), revoked_by=actor
    )
    if updated:
        keycache.invalidate()
        audit_record(
            action="api_key.revoked",
            actor=actor,
            target=key,
            tenant=key.tenant,
            metadata={"name": key.name, "public_id": key.public_id},
        )
    key.refresh_from_db(fields=["revoked_at", "revoked_by"])
    return key


#: How long a rotated-out webhook secret keeps signing deliveries next to the new one:
#: time for a tenant to deploy the new secret to its receivers without rejecting one.
WEBHOOK_SECRET_OVERLAP = timedelta(hours=24)


@transaction.atomic
def webhook_secret_reveal(*, tenant: Tenant, actor: User | None) -> str:
    """Return the tenant's current webhook secret; who looked at it is audited."""
    tenant.refresh_from_db(fields=["webhook_secret"])
    audit_record(action="webhook_secret.revealed", actor=actor, target=tenant, tenant=tenant)
    return tenant.webhook_secret


def webhook_secret_rotate(
    *, tenant: Tenant, actor: User | None, expected_fingerprint: str | None = None
) -> str:
    """Give the tenant a new webhook secret and return it.

    The old one becomes the previous secret and keeps signing deliveries next to the
    new one for ``WEBHOOK_SECRET_OVERLAP``; a second rotation within that time drops
    the oldest, so at most two secrets ever sign. The tenant row is locked so two
    concurrent rotations cannot both keep the same secret as previous. The audit
    event says until when the previous secret signs, never either secret.

    ``expected_fingerprint`` (the portal's form): rotate only if the current secret is
    still the one the form was shown with; else ``WebhookSecretChanged`` and nothing
    changes, so a form sent twice (a refresh) cannot push out the secret just kept.
    """
    with transaction.atomic():
        locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
        if (
            expected_fingerprint is not None
            and expected_fingerprint != locked.webhook_secret_fingerprint
        ):
            raise WebhookSecretChanged(
                "The webhook secret was rotated after this page was loaded (a second "
                "submission, or someone else); nothing was changed. Reveal the secret "
                "to see the current one.",
                field="current",
            )
        until = timezone.now() + WEBHOOK_SECRET_OVERLAP
        locked.webhook_secret_previous = locked.webhook_secret
        locked.webhook_secret_previous_until = until
        locked.webhook_secret = webhook_secret_generate()
        locked.save(
            update_fields=[
                "webhook_secret",
                "webhook_secret_previous",
                "webhook_secret_previous_until",
            ]
        )
        audit_record(
            action="webhook_secret.rotated",
            actor=actor,
            target=locked,
            tenant=locked,
            metadata={"previous_valid_until": until.isoformat()},
        )
    tenant.refresh_from_db(
        fields=["webhook_secret", "webhook_secret_previous", "webhook_secret_previous_until"]
    )
    return locked.webhook_secret


def _invitation_token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def invitation_create(*, tenant: Tenant, actor: User, email: str, role: str) -> Invitation:
    """Invite ``email`` with ``role``, replacing any open invitation to the same address."""
    token = secrets.token_urlsafe(32)
    email = User.objects.normalize_email(email).lower()
    with transaction.atomic():
        Invitation.objects.filter(
            tenant=tenant, email=email, accepted_at__isnull=True, revoked_at__isnull=True
        ).update(revoked_at=timezone.now())
        invitation = Invitation.objects.create(
            tenant=tenant,
            email=email,
            role=role,
            token_hash=_invitation_token_hash(token),
            invited_by=actor,
            expires_at=timezone.now() + timedelta(days=settings.INVITATION_TTL_DAYS),
        )
        audit_record(
            action="invitation.created",
            actor=actor,
            target=invitation,
            tenant=tenant,
            metadata={"email": email, "role": role},
        )
        url = settings.SITE_URL.rstrip("/") + reverse("portal:invitation_accept", args=[token])
        body = render_to_string(
            "email/invitation.txt", {"invitation": invitation, "url": url, "inviter": actor}
        )
        transaction.on_commit(
            lambda: send_mail(
                subject=f"[Cango] {actor.email} invited you to {tenant.name}",
                message=body,
                from_email=None,
                recipient_list=[email],
            )
        )
    return invitation


def invitation_get_open(*, token: str) -> Invitation:
    """Return the open invitation behind ``token`` or raise ``InvitationInvalid``."""
    invitation = (
        Invitation.objects.select_related("tenant")
        .filter(token_hash=_invitation_token_hash(token))
        .first()
    )
    if (
        invitation is None
        or invitation.accepted_at is not None
        or invitation.revoked_at is not None
        or invitation.expires_at <= timezone.now()
    ):
        raise InvitationInvalid("This invitation link is no longer valid.")
    return invitation


@transaction.atomic
def invitation_accept(*, token: str, user: User) -> Membership:
    """Add ``user`` to the invitation's tenant. The address must match the invitation."""
    invitation = invitation_get_open(token=token)
    if invitation.email.lower() != user.email.lower():
        raise InvitationInvalid(
            f"This invitation is for {invitation.email}; sign in with that address to accept it."
        )
    claimed = Invitation.objects.filter(pk=invitation.pk, accepted_at__isnull=True).update(
        accepted_at=timezone.now(), accepted_by=user
    )
    if not claimed:
        raise InvitationInvalid("This invitation link is no longer valid.")
    try:
        with transaction.atomic():
            membership = Membership.objects.create(
                tenant=invitation.tenant, user=user, role=invitation.role
            )
    except IntegrityError:
        membership = Membership.objects.get(tenant=invitation.tenant, user=user)
    audit_record(
        action="membership.joined",
        actor=user,
        target=membership,
        tenant=invitation.tenant,
        metadata={"role": membership.role, "invitation": invitation.pk},
    )
    return membership


@transaction.atomic
def invitation_revoke(*, invitation: Invitation, actor: User) -> None:
    updated = Invitation.objects.filter(
        pk=invitation.pk, accepted_at__isnull=True, revoked_at__isnull=True
    ).update(revoked_at=timezone.now())
    if updated:
        audit_record(
            action="invitation.revoked",
            actor=actor,
            target=invitation,
            tenant=invitation.tenant,
            metadata={"email": invitation.email},
        )


def _owner_count_locked(tenant: Tenant) -> int:
    # Lock the tenant row so two concurrent demotions cannot both see two owners.
    Tenant.objects.select_for_update().filter(pk=tenant.pk).first()
    return Membership.objects.filter(tenant=tenant, role=Role.OWNER).count()


@transaction.atomic
def membership_change_role(*, membership: Membership, actor: User, role: str) -> Membership:
    """Change a member's role; a tenant always keeps at least one owner."""
    if (
        membership.role == Role.OWNER
        and role != Role.OWNER
        and _owner_count_locked(membership.tenant) <= 1
    ):
        raise LastOwnerError("A team needs at least one owner: make someone else owner first.")
    old_role = membership.role
    membership.role = role
    membership.save(update_fields=["role"])
    audit_record(
        action="membership.role_changed",
        actor=actor,
        target=membership,
        tenant=membership.tenant,
        metadata={"user": membership.user.email, "from": old_role, "to": role},
    )
    return membership


@transaction.atomic
def membership_remove(*, membership: Membership, actor: User) -> None:
    """Remove a member (or let one leave); the last owner cannot go."""
    if membership.role == Role.OWNER and _owner_count_locked(membership.tenant) <= 1:
        raise LastOwnerError("The last owner cannot leave: make someone else owner first.")
    audit_record(
        action="membership.left" if membership.user_id == actor.pk else "membership.removed",
        actor=actor,
        target=membership,
        tenant=membership.tenant,
        metadata={"user": membership.user.email, "role": membership.role},
    )
    membership.delete()


_STAFF_CREDIT_ACTIONS = {
    LedgerEntry.Kind.GRANT: "credit.granted",
    LedgerEntry.Kind.ADJUSTMENT: "credit.adjusted",
}


@transaction.atomic
def credit_staff_book(
    *,
    tenant: Tenant,
    actor: User,
    kind: LedgerEntry.Kind,
    amount_micros: int,
    reason: str,
    token: uuid.UUID,
) -> tuple[LedgerEntry, bool]:
    """Book a staff grant or adjustment and its audit event together, once per form.

    The form's one-time token is the ledger source, so a second submission of the
    same form (a double click, a reload) finds the entry booked and writes nothing.
    """
    entry, created = ledger.entry_book(
        tenant_id=tenant.pk,
        kind=kind,
        source=f"staff:{token}",
        amount_micros=amount_micros,
        reason=reason,
        created_by_id=actor.pk,
    )
    if created:
        audit_record(
            action=_STAFF_CREDIT_ACTIONS[kind],
            actor=actor,
            target=entry.account,
            tenant=tenant,
            reason=reason,
            metadata={"amount_micros": amount_micros, "ledger_entry_id": entry.pk},
        )
    return entry, created


@transaction.atomic
def billing_settings_save(*, tenant: Tenant, actor: User, form: BillingSettingsForm) -> None:
    """Save the low-balance alert and auto top-up settings, audited with what changed."""
    ledger.account_open(tenant_id=tenant.pk)
    form.save(tenant_id=tenant.pk)
    changed = [name for name in form.changed_data if name in form.cleaned_data]
    if changed:
        audit_record(
            action="billing.settings_changed",
            actor=actor,
            target=tenant,
            tenant=tenant,
            metadata={
                "changes": audit_changes(
                    fields=changed, before=form.initial, after=form.cleaned_data
                )
            },
        )
