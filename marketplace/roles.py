"""What each member role may do in the portal.

This table is the single source: the portal's checks read it and the README's
permission table is written from it. Change both together.
"""

from enum import StrEnum

from .models import Role


class Permission(StrEnum):
    VIEW_DASHBOARD = "view_dashboard"
    USE_MODELS = "use_models"
    MANAGE_KEYS = "manage_keys"
    MANAGE_BILLING = "manage_billing"
    INVITE_MEMBERS = "invite_members"
    MANAGE_MEMBERS = "manage_members"
    VIEW_AUDIT = "view_audit"


ROLE_PERMISSIONS: dict[str, frozenset[Permission]] = {
    Role.OWNER: frozenset(Permission),
    Role.ADMIN: frozenset(
        {
            Permission.VIEW_DASHBOARD,
            Permission.USE_MODELS,
            Permission.MANAGE_KEYS,
            Permission.MANAGE_BILLING,
            Permission.INVITE_MEMBERS,
        }
    ),
    Role.DEVELOPER: frozenset(
        {Permission.VIEW_DASHBOARD, Permission.USE_MODELS, Permission.MANAGE_KEYS}
    ),
    Role.BILLING: frozenset({Permission.VIEW_DASHBOARD, Permission.MANAGE_BILLING}),
}


def role_allows(role: str, permission: Permission) -> bool:
    return permission in ROLE_PERMISSIONS.get(role, frozenset())
