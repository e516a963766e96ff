"""How the OpenAPI schema describes API-key authentication.

Without this, drf-spectacular leaves the operations without a security scheme (and
``manage.py check --deploy`` warns once per view); clients and Swagger UI's
"Authorize" button need to know keys go in ``Authorization: Bearer <key>``.
"""

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "marketplace.api.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema: AutoSchema) -> dict[str, Any]:
        return {"type": "http", "scheme": "bearer", "description": "An API key from the portal."}
