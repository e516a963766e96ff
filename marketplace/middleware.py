import re
import uuid
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from .logging import request_id_var, tenant_id_var
from .selectors import membership_for_portal

_INCOMING_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class RequestIdMiddleware:
    """Give every request an id, echo it in ``X-Request-Id`` and in log lines.

    A well-formed id from the caller is kept so a client can correlate its own
    logs; anything else is replaced.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.headers.get("X-Request-Id", "")
        request_id = incoming if _INCOMING_ID_RE.match(incoming) else f"req_{uuid.uuid4().hex}"
        request.request_id = request_id  # type: ignore[attr-defined]
        token = request_id_var.set(request_id)
        tenant_token = tenant_id_var.set("")
        try:
            response = self.get_response(request)
        finally:
            request_id_var.reset(token)
            tenant_id_var.reset(tenant_token)
        response["X-Request-Id"] = request_id
        return response


class PortalTenantMiddleware:
    """Attach the signed-in user's current tenant and membership to portal requests.

    The current tenant is remembered in the session; a user who belongs to one
    tenant (the usual case) never has to choose. API requests authenticate by key
    and get their tenant in the DRF authentication class instead.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.membership = None  # type: ignore[attr-defined]
        request.tenant = None  # type: ignore[attr-defined]
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated and not is_api_path(request.path):
            membership = membership_for_portal(
                user=user, tenant_id=request.session.get("tenant_id")
            )
            if membership is not None:
                request.membership = membership  # type: ignore[attr-defined]
                request.tenant = membership.tenant  # type: ignore[attr-defined]
                tenant_id_var.set(str(membership.tenant_id))
        return self.get_response(request)


def is_api_path(path: str) -> bool:
    return path.startswith(("/v1/", "/v2/", "/api/"))
