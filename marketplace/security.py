"""Web security middleware: the Content-Security-Policy."""

from csp.middleware import CSPMiddleware, PolicyParts
from django.conf import settings
from django.http import HttpRequest, HttpResponseBase


class ContentSecurityPolicyMiddleware(CSPMiddleware):
    """django-csp's middleware plus the per-path additions of ``CSP_PATH_UPDATES``.

    django-csp relaxes a policy per view with decorators; the views that need it here
    (Swagger UI) belong to a library, so the additions are keyed by path instead.
    """

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
