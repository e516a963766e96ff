import hashlib
import secrets
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Self

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


def webhook_secret_generate() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


class Tenant(models.Model):
    """A customer organisation. Every tenant-owned row points here."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"

    class Tier(models.TextChoices):
        """Selects the API rate and in-flight limits in ``settings.RATE_LIMIT_TIERS``."""

        FREE = "free", "Free"
        STANDARD = "standard", "Standard"
        ENTERPRISE = "enterprise", "Enterprise"

    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=60, unique=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    status_reason = models.CharField(max_length=500, blank=True)
    status_changed_at = models.DateTimeField(null=True, blank=True)
    region_pin = models.CharField(
        max_length=40, blank=True, help_text="Run this tenant's work only in this region."
    )
    webhook_secret = models.CharField(
        max_length=64,
        default=webhook_secret_generate,
        help_text="Signs job-completion webhooks (HMAC-SHA256).",
    )
    # After a rotation the old secret keeps signing (next to the new one) for a while,
    # so receivers can switch without rejecting a delivery.
    webhook_secret_previous = models.CharField(max_length=64, blank=True)
    webhook_secret_previous_until = models.DateTimeField(
        null=True, blank=True, help_text="The previous webhook secret also signs until then."
    )
    tier = models.CharField(
        max_length=16,
        choices=Tier.choices,
        default=Tier.STANDARD,
        help_text="Selects the API limits (requests per minute and in flight).",
    )
    # Per-tenant exceptions to the tier's limits; empty means "the tier's value".
    limit_key_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests per minute per API key (overrides the tier)."
    )
    limit_key_in_flight = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests in flight per API key (overrides the tier)."
    )
    limit_tenant_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests per minute for all keys (overrides the tier)."
    )
    limit_tenant_in_flight = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests in flight for all keys (overrides the tier)."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes: ClassVar = [models.Index(fields=["status"])]

    def __str__(self) -> str:
        return self.name

    @property
    def is_suspended(self) -> bool:
        return self.status == self.Status.SUSPENDED

    @property
    def webhook_secret_fingerprint(self) -> str:
        """Names the current secret without revealing it (the rotate form carries it, so
        a form sent twice, or after someone else rotated, does not rotate again)."""
        return hashlib.sha256(self.webhook_secret.encode()).hexdigest()[:16]

    def webhook_secrets(self, now: datetime | None = None) -> list[str]:
        """The secrets that sign a delivery made at ``now``: the current one first, then
        the previous one while its overlap after a rotation lasts."""
        valid = [self.webhook_secret]
        until = self.webhook_secret_previous_until
        now = now or timezone.now()
        if self.webhook_secret_previous and until is not None and now < until:
            valid.append(self.webhook_secret_previous)
        return valid


class TenantQuerySet(models.QuerySet[Any]):
    def for_tenant(self, tenant: Tenant) -> Self:
        return self.filter(tenant=tenant)


class TenantOwnedModel(models.Model):
    """Base of every row that belongs to one tenant: the FK is never null."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")

    objects = TenantQuerySet.as_manager()

    class Meta:
        abstract = True


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    DEVELOPER = "developer", "Developer"
    BILLING = "billing", "Billing"


class Membership(TenantOwnedModel):
    """A user's place in a tenant, with one role."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    if TYPE_CHECKING:
        user_id: int

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["tenant", "user"], name="membership_unique_user")
        ]

    def __str__(self) -> str:
        return f"{self.user} @ {self.tenant} ({self.role})"


class Invitation(TenantOwnedModel):
    """An e-mailed link that adds its recipient to a tenant with a role.

    Only a hash of the link's token is stored; the token itself travels in the e-mail.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Role.choices)
    token_hash = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints: ClassVar = [
            # One open invitation per address and tenant; a new one replaces the old.
            models.UniqueConstraint(
                fields=["tenant", "email"],
                condition=Q(accepted_at__isnull=True, revoked_at__isnull=True),
                name="invitation_unique_open_email",
            )
        ]

    def __str__(self) -> str:
        return f"{self.email} → {self.tenant} ({self.role})"
