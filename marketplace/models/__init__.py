from .audit import AuditEvent
from .catalog import CatalogModel
from .jobs import Job, WebhookDelivery
from .keys import ApiKey
from .tenants import Invitation, Membership, Role, Tenant, TenantOwnedModel
from .users import User

__all__ = [
    "ApiKey",
    "AuditEvent",
    "CatalogModel",
    "Invitation",
    "Job",
    "Membership",
    "Role",
    "Tenant",
    "TenantOwnedModel",
    "User",
    "WebhookDelivery",
]
