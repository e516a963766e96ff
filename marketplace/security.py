"""Web security middleware: the Content-Security-Policy and two-factor for staff.

Staff can suspend tenants and book credit, so a stolen staff password alone must not
open the operator console or the admin: ``StaffMfaMiddleware`` sends a staff member
without a second factor to enrol one, and one whose session was not authenticated
with it to enter a code, before ``/ops/`` or ``/admin/`` answers.
"""

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from allauth.account.authentication import get_authentication_records
from allauth.mfa.models import Authenticator
from allauth.mfa.utils import is_mfa_enabled
from csp.middleware import CSPMiddleware, PolicyParts
from django.conf import settings
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import redirect
from django.urls import reverse

# /metrics also answers a Prometheus bearer token, which is no session and passes.
STAFF_PATH_PREFIXES = ("/ops/", "/admin/", "/metrics")
ADMIN_LOGIN_PATH = "/admin/login/"
# The factors that count as "two-factor": a recovery code alone is a fallback, not
# an enrolment.
SECOND_FACTORS = [Authenticator.Type.TOTP, Authenticator.Type.WEBAUTHN]


class ContentSecurityPolicyMiddleware(CSPMiddleware):
    """django-csp's middleware plus the per-path additions of ``CSP_PATH_UPDATES``.

    django-csp relaxes a policy per view with decorators; the views that need it here
    (Swagger UI) belong to a library, so the additions are keyed by path instead.
    """

    # The key-authenticated API answers JSON, never a document to render: a fixed
    # policy that allows nothing, not one built per request on the inference hot path.
    # (/api/docs/ is Swagger UI's page and keeps the full policy.)
    API_PREFIXES = ("/v1/", "/v2/")
    API_POLICY = "default-src 'none'; frame-ancestors 'none'"

    def process_request(self, request: HttpRequest) -> None:
        if not request.path_info.startswith(self.API_PREFIXES):
            super().process_request(request)

    def process_response(
        self, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
        if request.path_info.startswith(self.API_PREFIXES):
            response.headers.setdefault("Content-Security-Policy", self.API_POLICY)
            return response
        return super().process_response(request, response)

    def get_policy_parts(
        self, request: HttpRequest, response: HttpResponseBase, report_only: bool = False
    ) -> PolicyParts:
        parts = super().get_policy_parts(request, response, report_only=report_only)
        if report_only:
            return parts
        for prefix, update in settings.CSP_PATH_UPDATES.items():
            if request.path_info.startswith(prefix):
                parts.update = {**(parts.update or {}), **update}
        return parts


def session_used_mfa(request: HttpRequest) -> bool:
    """Whether this session's user proved a second factor (at login or since).

    django-allauth records every authentication step of the session; a code entered
    at login and one entered to re-authenticate are both recorded as ``mfa``.
    """
    records: list[dict[str, Any]] = get_authentication_records(request, request.user)
    return any(record.get("method") == "mfa" for record in records)


class StaffMfaMiddleware:
    """Staff open ``/ops/`` and ``/admin/`` only with two-factor enrolled and used.

    Django's admin login form is replaced by allauth's, so every way in goes through
    the same rate limits and the two-factor step. Everyone else is left to the views
    (which answer 404 to non-staff on ``/ops/``).
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if request.path_info.startswith(STAFF_PATH_PREFIXES):
            refusal = staff_refusal(request)
            if refusal is not None:
                return refusal
        return self.get_response(request)


def staff_refusal(request: HttpRequest) -> HttpResponse | None:
    """The redirect (or 404) a request to a staff area gets, or None to let it in."""
    user = request.user
    if request.path_info.startswith(ADMIN_LOGIN_PATH):
        if not user.is_authenticated:
            next_url = request.GET.get("next", "/admin/")
            return redirect(f"{reverse('account_login')}?{urlencode({'next': next_url})}")
        if not user.is_staff:
            raise Http404
    if not (user.is_authenticated and user.is_staff):
        return None
    if not is_mfa_enabled(user, SECOND_FACTORS):
        messages.warning(
            request,
            "Staff accounts need two-factor authentication: set up an authenticator app "
            "to open the operator console and the admin.",
        )
        return redirect("mfa_activate_totp")
    if not session_used_mfa(request):
        query = urlencode({"next": request.get_full_path()})
        return redirect(f"{reverse('mfa_reauthenticate')}?{query}")
    return None
