"""Where the API applies its rate and in-flight limits (``marketplace.ratelimits``).

``ApiKeyRateLimit`` is DRF's default throttle, so it runs in every API view right
after authentication and permissions, and only for requests made with an API key:
views without authentication (health, liveness, the schema) are never limited.
``RateLimitMiddleware`` then writes the ``RateLimit-*`` headers on the response and
gives the in-flight slots back once the response has been sent (in the response's
``close()``, which the WSGI server calls after the last byte); the release is queued
and rides on the process's next admission, so it adds nothing to anyone's wait.
"""

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.http import HttpRequest, HttpResponseBase
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from marketplace import ratelimits
from marketplace.models import ApiKey

if TYPE_CHECKING:
    # DRF imports this module while ``rest_framework.views`` is still loading.
    from rest_framework.views import APIView

_ADMISSION_ATTR = "rate_limit_admission"
_REFUSAL_ATTR = "rate_limit_refusal"


class ApiKeyRateLimit(BaseThrottle):
    """Admit the request against its key's and tenant's limits, or raise ``LimitExceeded``."""

    def allow_request(self, request: Request, view: "APIView") -> bool:
        key = request.auth
        if not isinstance(key, ApiKey):
            return True
        http_request = request._request
        # Authentication may have admitted it already, in its own Redis round trip.
        refused: ratelimits.LimitExceeded | None = getattr(http_request, _REFUSAL_ATTR, None)
        if refused is not None:
            raise refused
        if getattr(http_request, _ADMISSION_ATTR, None) is not None:
            return True
        try:
            admission = ratelimits.admit(
                key_id=key.pk,
                tenant_id=key.tenant_id,
                limits=ratelimits.limits_for(key.tenant),
            )
        except ratelimits.LimitExceeded as refusal:
            setattr(http_request, _REFUSAL_ATTR, refusal)
            raise
        setattr(http_request, _ADMISSION_ATTR, admission)
        return True


def admission_record(http_request: HttpRequest, admission: ratelimits.Admission) -> None:
    """An admission made during authentication: the throttle lets the request through,
    the middleware writes its headers and gives its slots back."""
    setattr(http_request, _ADMISSION_ATTR, admission)


def refusal_record(http_request: HttpRequest, refusal: ratelimits.LimitExceeded) -> None:
    """A refusal decided during authentication: the throttle raises it."""
    setattr(http_request, _REFUSAL_ATTR, refusal)


def _headers_set(response: HttpResponseBase, rate: ratelimits.RateState | None) -> None:
    if rate is None:
        return
    response["RateLimit-Limit"] = str(rate.limit)
    response["RateLimit-Remaining"] = str(max(0, rate.remaining))
    response["RateLimit-Reset"] = str(rate.reset_seconds)


class RateLimitMiddleware:
    """``RateLimit-*`` headers on limited API responses; in-flight release after sending."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        admission: ratelimits.Admission | None = getattr(request, _ADMISSION_ATTR, None)
        if admission is not None:
            _headers_set(response, admission.rate)
            # Django calls these from ``response.close()``, after the body went out (the
            # mechanism FileResponse uses for its file; there is no public hook).
            response._resource_closers.append(  # type: ignore[attr-defined]
                lambda: ratelimits.release(admission)
            )
            return response
        refusal: ratelimits.LimitExceeded | None = getattr(request, _REFUSAL_ATTR, None)
        if refusal is not None:
            _headers_set(response, refusal.rate)
        return response


_HEADERS = {
    "RateLimit-Limit": "Requests allowed per minute by the limit nearest exhaustion "
    "(this key's or its organisation's).",
    "RateLimit-Remaining": "Requests left under that limit in the current 60-second window.",
    "RateLimit-Reset": "Seconds until that limit admits more requests.",
}
_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "request_id"],
            "properties": {
                "code": {"type": "string", "enum": ["rate_limited", "concurrency_limited"]},
                "message": {"type": "string"},
                "request_id": {"type": "string"},
                "limit": {"type": "string", "enum": ["key", "tenant"]},
            },
        }
    },
}


def schema_rate_limits_document(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """drf-spectacular hook: the 429 answer and the ``RateLimit-*`` headers of limited operations.

    An operation is limited when it takes an API key; drf-spectacular marks the
    ones without authentication with ``security: [{}]``.
    """
    header = {"schema": {"type": "integer", "minimum": 0}}
    headers = {name: {**header, "description": text} for name, text in _HEADERS.items()}
    too_many = {
        "description": "A rate (`rate_limited`) or in-flight (`concurrency_limited`) limit "
        "of the key or of its organisation (`limit`) was reached.",
        "headers": {
            "Retry-After": {**header, "description": "Seconds to wait before retrying."},
            **headers,
        },
        "content": {"application/json": {"schema": _ERROR_SCHEMA}},
    }
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            if operation.get("security") == [{}]:
                continue
            responses = operation.setdefault("responses", {})
            for status_code, response in responses.items():
                if str(status_code).startswith("2"):
                    response.setdefault("headers", {}).update(headers)
            # ApiKeySchema already documents the 429 body; add its headers.
            documented = responses.setdefault("429", too_many)
            documented.setdefault("headers", {}).update(too_many["headers"])
    return result
