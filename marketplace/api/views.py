import logging

import redis
from django.db import DatabaseError, connection
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.redis_client import redis_client
from marketplace.api.authentication import request_key

from .serializers import HealthSerializer, MeSerializer

logger = logging.getLogger(__name__)


class MeView(APIView):
    """Who the key belongs to and what it may do."""

    @extend_schema(responses=MeSerializer, summary="The calling key and its tenant")
    def get(self, request: Request) -> Response:
        key = request_key(request)
        tenant = key.tenant
        # Built by hand rather than through MeSerializer (which documents it): nested
        # serializers cost ~0.3 ms, more than the rest of this request.
        return Response(
            {
                "tenant": {
                    "id": tenant.pk,
                    "slug": tenant.slug,
                    "name": tenant.name,
                    "status": tenant.status,
                },
                "key": {
                    "id": key.public_id,
                    "name": key.name,
                    "prefix": key.display_prefix,
                    "expires_at": key.expires_at.isoformat() if key.expires_at else None,
                    "allowed_models": key.allowed_models,
                    "monthly_spend_cap_micros": key.monthly_spend_cap_micros,
                },
                "scopes": key.scopes,
            }
        )


class HealthView(APIView):
    """Readiness: the database and Redis both answer. 503 when either does not."""

    authentication_classes = ()
    permission_classes = (AllowAny,)

    @extend_schema(responses={200: HealthSerializer, 503: HealthSerializer}, summary="Readiness")
    def get(self, request: Request) -> Response:
        checks = {"database": "ok", "redis": "ok"}
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        except DatabaseError:
            logger.warning("health check: database unavailable", exc_info=True)
            checks["database"] = "unavailable"
        try:
            redis_client().ping()
        except redis.RedisError:
            logger.warning("health check: redis unavailable", exc_info=True)
            checks["redis"] = "unavailable"
        healthy = all(value == "ok" for value in checks.values())
        return Response(
            {"status": "ok" if healthy else "unavailable", "checks": checks},
            status=status.HTTP_200_OK if healthy else status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={} if healthy else {"Retry-After": "5"},
        )


class LiveView(APIView):
    """Liveness: the process answers. Touches nothing else."""

    authentication_classes = ()
    permission_classes = (AllowAny,)

    @extend_schema(responses=HealthSerializer, summary="Liveness")
    def get(self, request: Request) -> Response:
        return Response({"status": "ok", "checks": {}})
