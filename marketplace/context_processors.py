from django.http import HttpRequest

from .roles import Permission, role_allows


def portal(request: HttpRequest) -> dict[str, object]:
    """Expose the current tenant and what the member may do to every template."""
    membership = getattr(request, "membership", None)
    allowed = (
        {perm.value: role_allows(membership.role, perm) for perm in Permission}
        if membership is not None
        else {}
    )
    return {
        "current_tenant": getattr(request, "tenant", None),
        "current_membership": membership,
        "can": allowed,
    }
