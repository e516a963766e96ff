from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.template.loader import render_to_string
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from billing.views import stripe_webhook
from marketplace.api.errors import json_error_response, outage_response
from marketplace.api.inference import ServerMetadataView
from marketplace.views import SignupView
from observability.views import csp_report, metrics

urlpatterns = [
    path("admin/", admin.site.urls),
    path("billing/stripe/webhook", stripe_webhook, name="stripe-webhook"),
    path("accounts/signup/", SignupView.as_view(), name="account_signup"),
    path("accounts/", include("allauth.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # The split view serves Swagger UI's start-up script as a file: no inline script.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="api-docs"),
    path("v1/", include(("marketplace.api.urls", "api"), namespace="v1")),
    path("v2", ServerMetadataView.as_view(), name="v2-server-metadata"),
    path("v2/", include(("marketplace.api.v2_urls", "v2"), namespace="v2")),
    path("ops/", include("marketplace.ops_urls")),
    path("metrics", metrics, name="metrics"),  # observability: operator only, else 404
    path("csp-report/", csp_report, name="csp-report"),
    path("", include("marketplace.urls")),
]


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith(("/v1/", "/v2/", "/api/"))


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _is_api(request):
        return json_error_response(request, 404, "No such resource.")
    return render(request, "errors/404.html", status=404)


def handler403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _is_api(request):
        return json_error_response(request, 403, "Forbidden.")
    return render(request, "errors/403.html", status=403)


def handler500(request: HttpRequest) -> HttpResponse:
    # Failure behaviour: a database or Redis outage is a 503 with Retry-After, not a 500.
    unavailable = outage_response(request, api=_is_api(request))
    if unavailable is not None:
        return unavailable
    if _is_api(request):
        return json_error_response(request, 500, "Internal error; quote the request id.")
    # No request context: the page must render even when the database or sessions are down.
    return HttpResponse(render_to_string("errors/500.html"), status=500)


def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _is_api(request):
        return json_error_response(request, 400, "Bad request.")
    return render(request, "errors/400.html", status=400)


def handler429(request: HttpRequest) -> HttpResponse:
    """django-allauth's rate-limit page (login, sign-up, password reset, e-mail)."""
    return render(request, "errors/429.html", status=429)
