from typing import ClassVar

from django.conf import settings
from django.db import models

from .tenants import Tenant, TenantOwnedModel


class ApiKey(TenantOwnedModel):
    """A tenant's credential for the public API.

    The key a program holds is ``cango_sk_<public_id>_<secret>``. Only the SHA-256
    of the whole key is stored: the secret carries 256 random bits, so a fast hash
    cannot be brute-forced and keeps the check at a fraction of a microsecond.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    public_id = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)
    allowed_models = models.JSONField(
        default=list, blank=True, help_text="Catalog model ids this key may call; empty means all."
    )
    monthly_spend_cap_micros = models.BigIntegerField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    last_used_at = models.DateTimeField(null=True, blank=True)
    # The portal form's one-time token: the same form sent twice (a page refresh)
    # finds the key it made instead of making a second one.
    creation_token = models.UUIDField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name = "API key"
        indexes: ClassVar = [models.Index(fields=["tenant", "-created_at"])]
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=["tenant", "creation_token"], name="apikey_unique_creation_token"
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.display_prefix}…)"

    @property
    def display_prefix(self) -> str:
        """The non-secret start of the key, as shown in lists."""
        return f"cango_sk_{self.public_id}"

    @property
    def scopes(self) -> list[str]:
        if not self.allowed_models:
            return ["models:*"]
        return [f"models:{model_id}" for model_id in self.allowed_models]
