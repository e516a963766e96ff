"""Sync inference endpoints: KServe v2 (what ``tritonclient.http`` speaks) and OpenAI embeddings."""

import base64
from typing import Any

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.parsers import JSONParser
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.views import APIView

from marketplace import catalog, inference
from marketplace.exceptions import DomainError
from marketplace.pricing import Usage
from workers import routing

from .authentication import request_key
from .errors import error_body
from .schema import ErrorSerializer, errors


class PayloadTooLarge(DomainError):
    code = "payload_too_large"
    status = 413


def _cost_headers(response: HttpResponse, *, site: str, version: str, usage: Usage) -> None:
    response["X-Cango-Site"] = site
    response["X-Cango-Model-Version"] = version
    response["X-Cango-Cost-Micros"] = str(usage.cost_micros)
    response["X-Cango-Units"] = str(usage.units)


class UnsupportedEncoding(DomainError):
    code = "unsupported_media_type"
    status = 415


def _body_checked(request: Request) -> bytes:
    """The raw body, refused before reading when it is declared too large or compressed."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedEncoding(
            "Compressed request bodies are not accepted; send them uncompressed.",
            field="Content-Encoding",
        )
    declared = request.META.get("CONTENT_LENGTH") or "0"
    limit = settings.INFER_MAX_BODY_BYTES
    if not declared.isdigit() or int(declared) > limit:
        raise PayloadTooLarge(f"Request body over {limit} bytes.", field="body")
    return request.body


def _header_length(request: Request) -> int | None:
    raw = request.headers.get("Inference-Header-Content-Length")
    if raw is None:
        return None
    if not raw.isdigit():
        raise DomainError(
            "Inference-Header-Content-Length must be a non-negative integer.",
            field="Inference-Header-Content-Length",
        )
    return int(raw)


class InferView(APIView):
    """``POST /v2/models/{model}[/versions/{v}]/infer`` — KServe v2, JSON or binary tensors."""

    parser_classes = ()

    @extend_schema(
        request={"application/json": OpenApiTypes.OBJECT, "application/octet-stream": bytes},
        responses={
            (200, "application/json"): OpenApiTypes.OBJECT,
            (200, "application/octet-stream"): OpenApiTypes.BINARY,
            **errors(400, 402, 413, 415, 422, 502),
        },
        summary="Run a model (KServe v2 / Open Inference Protocol)",
    )
    def post(self, request: Request, model: str, version: str = "") -> HttpResponse:
        key = request_key(request)
        outcome = inference.infer_v2(
            tenant=key.tenant,
            key=key,
            slug=model,
            body=_body_checked(request),
            header_length=_header_length(request),
        )
        response = HttpResponse(outcome.body, content_type=outcome.content_type)
        if outcome.header_length is not None:
            response["Inference-Header-Content-Length"] = outcome.header_length
        _cost_headers(
            response, site=outcome.site_slug, version=outcome.model_version, usage=outcome.usage
        )
        return response


class ModelMetadataView(APIView):
    """``GET /v2/models/{model}`` — the model's tensors in KServe v2 form."""

    @extend_schema(responses={200: OpenApiTypes.OBJECT}, summary="Model metadata (KServe v2)")
    def get(self, request: Request, model: str, version: str = "") -> JsonResponse:
        key = request_key(request)
        entry = catalog.model_for_caller(model, tenant=key.tenant, key=key)
        return JsonResponse(
            {
                "name": entry.model.slug,
                "versions": entry.model.versions or ["1"],
                "platform": "cango",
                "inputs": entry.model.inputs,
                "outputs": entry.model.outputs,
            }
        )


class ModelReadyView(APIView):
    """``GET /v2/models/{model}/ready`` — 200 when a healthy site serves it, else 503."""

    @extend_schema(responses={200: None, 503: ErrorSerializer}, summary="Model readiness")
    def get(self, request: Request, model: str, version: str = "") -> HttpResponse:
        key = request_key(request)
        entry = catalog.model_for_caller(model, tenant=key.tenant, key=key)
        if routing.candidates_for(entry.model.slug, region_pin=key.tenant.region_pin):
            return HttpResponse(status=200)
        response = JsonResponse(
            error_body(
                status_code=503,
                message=f"No site serves {model} right now.",
                code="no_healthy_site",
            ),
            status=503,
        )
        response["Retry-After"] = "2"
        return response


class ServerLiveView(APIView):
    """``GET /v2/health/live`` and ``/v2/health/ready`` — the marketplace answers."""

    authentication_classes = ()
    permission_classes = (AllowAny,)

    @extend_schema(responses={200: None}, summary="Server liveness / readiness (KServe v2)")
    def get(self, request: Request) -> HttpResponse:
        return HttpResponse(status=200)


class ServerMetadataView(APIView):
    """``GET /v2`` — server metadata, as ``tritonclient`` asks for it."""

    authentication_classes = ()
    permission_classes = (AllowAny,)

    @extend_schema(responses={200: OpenApiTypes.OBJECT}, summary="Server metadata (KServe v2)")
    def get(self, request: Request) -> JsonResponse:
        return JsonResponse({"name": "cango", "version": "1", "extensions": ["binary_tensor_data"]})


class EmbeddingsRequest(serializers.Serializer[Any]):
    model = serializers.CharField(max_length=64)
    input = serializers.JSONField()
    encoding_format = serializers.ChoiceField(
        choices=["float", "base64"], default="float", required=False
    )
    user = serializers.CharField(max_length=256, required=False, allow_blank=True)
    dimensions = serializers.IntegerField(required=False, min_value=1)

    def validate_input(self, value: object) -> list[str]:
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list) or not texts:
            raise serializers.ValidationError("Give a string or a non-empty list of strings.")
        if not all(isinstance(t, str) and t for t in texts):
            raise serializers.ValidationError("Every input must be a non-empty string.")
        if len(texts) > 2048:
            raise serializers.ValidationError("At most 2048 inputs per request.")
        return texts


class EmbeddingsView(APIView):
    """``POST /v1/embeddings`` — OpenAI-compatible, for embedding models."""

    parser_classes = (JSONParser,)

    @extend_schema(
        request=EmbeddingsRequest,
        responses={200: OpenApiTypes.OBJECT, **errors(400, 402, 404, 413, 415, 422, 502)},
        summary="Create embeddings (OpenAI-compatible)",
    )
    def post(self, request: Request) -> JsonResponse:
        key = request_key(request)
        _body_checked(request)
        form = EmbeddingsRequest(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        outcome = inference.embed(
            tenant=key.tenant,
            key=key,
            slug=data["model"],
            texts=data["input"],
            dimensions=data.get("dimensions"),
        )
        as_base64 = data.get("encoding_format") == "base64"
        items = [
            {
                "object": "embedding",
                "index": index,
                "embedding": base64.b64encode(vector.astype("<f4").tobytes()).decode()
                if as_base64
                else vector.tolist(),
            }
            for index, vector in enumerate(outcome.vectors)
        ]
        response = JsonResponse(
            {
                "object": "list",
                "data": items,
                "model": data["model"],
                "usage": {
                    "prompt_tokens": outcome.prompt_tokens,
                    "total_tokens": outcome.prompt_tokens,
                },
            }
        )
        _cost_headers(
            response, site=outcome.site_slug, version=outcome.model_version, usage=outcome.usage
        )
        return response
