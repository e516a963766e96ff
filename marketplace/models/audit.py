from typing import ClassVar

from django.conf import settings
from django.db import models

from .tenants import Tenant


class AuditEvent(models.Model):
    """Who did what, when and why. Append-only.

    ``tenant`` is set for anything that concerns one tenant (and is what a tenant's
    owners may see); operator-wide changes such as a site's status leave it empty.
    """

    tenant = models.ForeignKey(
        Tenant, on_delete=models.CASCADE, null=True, blank=True, related_name="audit_events"
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    actor_label = models.CharField(max_length=254, help_text="E-mail or system name at the time.")
    action = models.CharField(max_length=64)
    target_type = models.CharField(max_length=64)
    target_id = models.CharField(max_length=64)
    reason = models.TextField(blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    #: Every action recorded, with how the audit pages name it. Tenant owners see
    #: the events of their own tenant; staff see all, operator-wide ones included.
    ACTIONS: ClassVar[dict[str, str]] = {
        "tenant.created": "Organisation created",
        "tenant.changed": "Organisation changed by staff",
        "tenant.suspended": "Organisation suspended",
        "tenant.reactivated": "Organisation reactivated",
        "api_key.created": "API key created",
        "api_key.revoked": "API key revoked",
        "webhook_secret.revealed": "Webhook signing secret revealed",
        "webhook_secret.rotated": "Webhook signing secret rotated",
        "invitation.created": "Invitation sent",
        "invitation.revoked": "Invitation withdrawn",
        "invitation.deleted": "Invitation deleted by staff",
        "membership.joined": "Member joined",
        "membership.role_changed": "Member's role changed",
        "membership.left": "Member left",
        "membership.removed": "Member removed",
        "credit.granted": "Credit granted",
        "credit.adjusted": "Credit adjusted",
        "credit.refunded": "Purchase refunded",
        "billing.settings_changed": "Billing settings changed",
        "site.created": "Site created",
        "site.changed": "Site changed",
        "site.deleted": "Site deleted",
        "site.status_changed": "Site status changed",
        "server.registered": "Server registered",
        "server.created": "Server added",
        "server.changed": "Server changed",
        "server.deleted": "Server deleted",
        "deployment.created": "Deployment added",
        "deployment.changed": "Deployment changed",
        "deployment.deleted": "Deployment deleted",
        "catalog_model.created": "Catalog model added",
        "catalog_model.changed": "Catalog model or price changed",
        "user.created": "User created",
        "user.changed": "User changed",
        "user.password_changed": "User's password set by staff",
        "user.deleted": "User deleted",
    }
    #: The actions that can concern one tenant (the portal's filter offers these).
    TENANT_ACTIONS: ClassVar[tuple[str, ...]] = tuple(
        a
        for a in ACTIONS
        if a.split(".")[0]
        in {"tenant", "api_key", "webhook_secret", "invitation", "membership", "credit", "billing"}
    )

    class Meta:
        indexes: ClassVar = [
            models.Index(fields=["tenant", "-created_at"]),
            # The console's pages: all events, or one action's, newest first.
            models.Index(fields=["created_at", "id"], name="auditevent_created"),
            models.Index(fields=["action", "created_at"], name="auditevent_action_created"),
        ]
        ordering: ClassVar = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.actor_label} {self.action}"

    @property
    def action_label(self) -> str:
        return self.ACTIONS.get(self.action, self.action)
