from .audit import AuditEvent
from .keys import ApiKey
from .tenants import Invitation, Membership, Role, Tenant, TenantOwnedModel
from .users import User

__all__ = [
    "ApiKey",
    "AuditEvent",
    "Invitation",
    "Membership",
    "Role",
    "Tenant",
    "TenantOwnedModel",
    "User",
]
