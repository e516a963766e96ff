"""The one place where errors become HTTP answers for the API.

Every error body is ``{"error": {"code", "message", "request_id"}}`` (plus ``field``
and ``fields`` for bad input), whatever raised it: DRF, a domain service, or Django.
"""

import logging
import sys
from typing import Any

import kombu.exceptions
import redis
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import InterfaceError as DatabaseInterfaceError
from django.db import OperationalError as DatabaseOperationalError
from django.db import connections
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from billing import statements
from billing.exceptions import BillingError
from marketplace.exceptions import DomainError
from marketplace.logging import request_id_var
from marketplace.ratelimits import LimitExceeded
from workers.dispatch import NoHealthySite, SitesUnavailable
from workers.kserve import KServeError
from workers.triton import TritonRejected

logger = logging.getLogger(__name__)

_DEFAULT_CODES = {
    400: "invalid_request",
    401: "unauthenticated",
    402: "payment_required",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}

# A backing service (PostgreSQL, Redis, the Celery broker) did not answer. Such an
# error says nothing about the request, so it is a 503 the client may retry, never
# a 500. Whatever lets these propagate (the rate limiter, the job path, the ledger)
# gets this answer without handling them itself.
OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    DatabaseOperationalError,
    DatabaseInterfaceError,
    redis.ConnectionError,
    redis.TimeoutError,
    kombu.exceptions.OperationalError,
)
OUTAGE_RETRY_AFTER_SECONDS = 5


def error_body(
    *, status_code: int, message: str, code: str | None = None, **extra: Any
) -> dict[str, Any]:
    error: dict[str, Any] = {
        "code": code or _DEFAULT_CODES.get(status_code, "error"),
        "message": message,
        "request_id": request_id_var.get(),
    }
    error.update({k: v for k, v in extra.items() if v is not None})
    return {"error": error}


def _first_field_error(detail: Any, prefix: str = "") -> tuple[str | None, str]:
    """Walk DRF's nested error detail to the first message and the field it names."""
    if isinstance(detail, dict):
        for name, sub in detail.items():
            path = f"{prefix}.{name}" if prefix else str(name)
            if name == "non_field_errors":
                path = prefix
            return _first_field_error(sub, path)
    if isinstance(detail, list) and detail:
        for index, sub in enumerate(detail):
            if sub:
                sub_prefix = f"{prefix}[{index}]" if isinstance(sub, dict | list) else prefix
                return _first_field_error(sub, sub_prefix)
    return (prefix or None), str(detail)


def _inference_error(exc: Exception) -> Response | None:
    """Errors of the routing library and the tensor codec, in the API's vocabulary."""
    if isinstance(exc, KServeError):
        return Response(
            error_body(status_code=exc.status, message=exc.message, code=exc.code, field=exc.field),
            status=exc.status,
        )
    if isinstance(exc, NoHealthySite | SitesUnavailable):
        code = "no_healthy_site" if isinstance(exc, NoHealthySite) else "sites_unavailable"
        if isinstance(exc, SitesUnavailable) and exc.busy:
            code = "overloaded"
        return Response(
            error_body(status_code=503, message=str(exc), code=code),
            status=503,
            headers={"Retry-After": str(exc.retry_after_seconds)},
        )
    if isinstance(exc, BillingError):
        return Response(
            error_body(status_code=402, message=exc.message, code=exc.code),
            status=402,
        )
    if isinstance(exc, TritonRejected):
        return Response(
            error_body(
                status_code=400,
                message=f"The model refused the input: {exc.message}",
                code="inference_rejected",
            ),
            status=400,
        )
    return None


def _outage_noted(exc: Exception) -> str:
    """Log the outage and drop this thread's database connections; name what failed.

    A connection that saw the server go away is useless, and the thread's other
    connection (``default`` or ``holds``) most likely is too. Closing both now means
    the first request after the database returns reconnects instead of failing on
    a stale connection; a healthy connection closed here costs one reconnect.
    """
    database = isinstance(exc, DatabaseOperationalError | DatabaseInterfaceError)
    if database:
        for connection in connections.all(initialized_only=True):
            connection.close()
        statements.drop_idle()  # the ledger's pooled connections went the same way
    service = "database" if database else "redis"
    # One line per refused request; a traceback each would bury the outage's start.
    logger.warning("%s unavailable; answering 503: %s: %s", service, type(exc).__name__, exc)
    return service


def outage_error(exc: Exception) -> Response | None:
    """503 ``service_unavailable`` with ``Retry-After`` for an unreachable backing service."""
    if not isinstance(exc, OUTAGE_ERRORS):
        return None
    service = _outage_noted(exc)
    return Response(
        error_body(
            status_code=503,
            message=f"The service is unavailable ({service}); retry later.",
            code="service_unavailable",
        ),
        status=503,
        headers={"Retry-After": str(OUTAGE_RETRY_AFTER_SECONDS)},
    )


def _limit_error(exc: LimitExceeded) -> Response:
    """429 naming the limit (``limit``: key or tenant); ``RateLimit-*`` come from the middleware."""
    return Response(
        error_body(status_code=429, message=exc.message, code=exc.code, limit=exc.scope),
        status=429,
        headers={"Retry-After": str(exc.retry_after_seconds)},
    )


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    outage_response = outage_error(exc)
    if outage_response is not None:
        return outage_response
    if isinstance(exc, LimitExceeded):
        return _limit_error(exc)
    inference_response = _inference_error(exc)
    if inference_response is not None:
        return inference_response
    if isinstance(exc, DomainError):
        return Response(
            error_body(status_code=exc.status, message=exc.message, code=exc.code, field=exc.field),
            status=exc.status,
            headers={"Retry-After": "1"} if exc.status == 503 else None,
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return response
    if isinstance(exc, exceptions.ValidationError):
        field, message = _first_field_error(exc.detail)
        if field:
            message = f"{field}: {message}"
        response.data = error_body(
            status_code=response.status_code,
            message=message,
            field=field,
            fields=exc.detail if isinstance(exc.detail, dict) else None,
        )
        return response
    detail = exc.detail
    codes = exc.get_codes()
    code = codes if isinstance(codes, str) else None
    if exc.status_code == 401:
        code = "invalid_api_key" if isinstance(exc, exceptions.AuthenticationFailed) else None
        code = code or "missing_api_key"
    if isinstance(exc, exceptions.ParseError):
        code = "invalid_json"
    if code in {"error", "invalid", "not_authenticated"}:
        code = None
    response.data = error_body(status_code=response.status_code, message=str(detail), code=code)
    return response


def json_error_response(request: HttpRequest, status_code: int, message: str) -> JsonResponse:
    """For errors raised outside DRF views (unknown URL, crash) on API paths."""
    return JsonResponse(error_body(status_code=status_code, message=message), status=status_code)


def outage_response(request: HttpRequest, *, api: bool) -> HttpResponse | None:
    """The 503 for an outage raised outside DRF (middleware, portal views), else None.

    Called from ``handler500``, which Django calls inside its ``except`` block, so
    the exception being handled is ``sys.exc_info()``.
    """
    exc = sys.exc_info()[1]
    if not isinstance(exc, OUTAGE_ERRORS):
        return None
    service = _outage_noted(exc)
    headers = {"Retry-After": str(OUTAGE_RETRY_AFTER_SECONDS)}
    if api:
        body = error_body(
            status_code=503,
            message=f"The service is unavailable ({service}); retry later.",
            code="service_unavailable",
        )
        return JsonResponse(body, status=503, headers=headers)
    # No request context: the page must render with the database or Redis down.
    return HttpResponse(render_to_string("errors/503.html"), status=503, headers=headers)
