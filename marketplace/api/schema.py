"""What the OpenAPI schema says about errors and authentication.

Clients (and the schema fuzz test, ``tests/integration/test_api_fuzz.py``) rely on the
schema listing every status an operation can answer with. The errors every
key-authenticated operation shares (401, 403, 429, 503, and 404 where the path names
a resource) are added here once; a view lists only its own (``errors(400, 402)``).
"""

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated

ERROR_DESCRIPTIONS = {
    400: "Bad input: malformed JSON, or a field that fails validation (`error.field` names it).",
    401: "Missing, malformed, unknown, revoked or expired API key.",
    402: "Not enough credit, or the key's monthly spend cap is reached (not retryable).",
    403: "The organisation is suspended, or the key may not use this model.",
    404: "No such resource, or it belongs to another organisation.",
    409: "Conflict: the idempotency key was used with another body, or the job is final.",
    413: "The request body is over the size limit.",
    415: "Unsupported media type or content encoding (compressed bodies are refused).",
    422: "The request is well formed but cannot be run (tensor shape, size or cost).",
    429: "Rate or concurrency limit reached; retry after `Retry-After` seconds.",
    502: "A site answered with something that is not a valid inference response.",
    503: "No healthy site, or a backing service is unavailable; retry after `Retry-After`.",
}


class ErrorDetailSerializer(serializers.Serializer[Any]):
    code = serializers.CharField(help_text="Stable, machine-readable error code.")
    message = serializers.CharField()
    request_id = serializers.CharField(allow_null=True, help_text="Quote it to support.")
    field = serializers.CharField(required=False, help_text="The input field at fault.")
    # Named like the error body's key; the stubs type a serializer's ``fields`` attribute
    # as its bound fields (DRF's metaclass moves declared fields out of the way).
    fields = serializers.JSONField(  # type: ignore[assignment]
        required=False, help_text="Every field error, by field."
    )


class ErrorSerializer(serializers.Serializer[Any]):
    """The body of every API error: ``{"error": {code, message, request_id}}``."""

    error = ErrorDetailSerializer()


def errors(*statuses: int) -> dict[int, OpenApiResponse]:
    """Documented error answers for ``extend_schema(responses={..., **errors(400, 402)})``."""
    return {
        status: OpenApiResponse(ErrorSerializer, description=ERROR_DESCRIPTIONS[status])
        for status in statuses
    }


class ApiKeySchema(AutoSchema):
    """Adds the errors every key-authenticated operation can answer with."""

    def get_operation(
        self, path: str, path_regex: str, path_prefix: str, method: str, registry: Any
    ) -> dict[str, Any] | None:
        operation = super().get_operation(path, path_regex, path_prefix, method, registry)
        if operation is None or not self._key_required():
            return operation
        shared = [401, 403, 429, 503]
        if "{" in path:
            shared.append(404)
        error = self.resolve_serializer(ErrorSerializer(), "response")
        responses: dict[str, Any] = operation["responses"]
        for status in shared:
            responses.setdefault(
                str(status),
                {
                    "description": ERROR_DESCRIPTIONS[status],
                    "content": {"application/json": {"schema": error.ref}},
                },
            )
        operation["responses"] = dict(sorted(responses.items()))
        return operation

    def _key_required(self) -> bool:
        return any(isinstance(p, IsAuthenticated) for p in self.view.get_permissions())


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """``Authorization: Bearer cango_sk_…`` (``marketplace.api.authentication``)."""

    target_class = "marketplace.api.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema: AutoSchema) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "cango_sk_<public id>_<secret>",
            "description": "An API key created in the portal.",
        }
