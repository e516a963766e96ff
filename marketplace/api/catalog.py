"""``GET /v1/models`` and ``GET /v1/models/{id}``: what a tenant can call and at what price."""

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace import catalog
from marketplace.models import CatalogModel
from workers import routing

from .authentication import request_key


class TensorSerializer(serializers.Serializer[Any]):
    name = serializers.CharField()
    datatype = serializers.CharField()
    shape = serializers.ListField(child=serializers.IntegerField())


class CatalogModelSerializer(serializers.ModelSerializer[CatalogModel]):
    id = serializers.CharField(source="slug")
    inputs = TensorSerializer(many=True)
    outputs = TensorSerializer(many=True)
    available = serializers.SerializerMethodField()

    class Meta:
        model = CatalogModel
        fields = (
            "id",
            "name",
            "description",
            "task",
            "pricing_unit",
            "price_micros",
            "max_batch_size",
            "inputs",
            "outputs",
            "available",
        )

    def get_available(self, obj: CatalogModel) -> bool:
        return routing.model_available(obj.slug)


class CatalogModelListSerializer(serializers.Serializer[Any]):
    """Documents the list answer, which wraps the models in ``data`` like the API's other lists."""

    # The stubs type a serializer's ``data`` attribute as its output.
    data = CatalogModelSerializer(many=True)  # type: ignore[assignment]


class ModelListView(APIView):
    @extend_schema(
        responses=CatalogModelListSerializer,
        operation_id="v1_models_list",
        summary="Models you can call",
    )
    def get(self, request: Request) -> Response:
        key = request_key(request)
        models = catalog.models_visible(tenant=key.tenant)
        if key.allowed_models:
            models = models.filter(slug__in=key.allowed_models)
        return Response({"data": CatalogModelSerializer(models, many=True).data})


class ModelDetailView(APIView):
    @extend_schema(responses=CatalogModelSerializer, summary="One model")
    def get(self, request: Request, model: str) -> Response:
        key = request_key(request)
        entry = catalog.model_for_caller(model, tenant=key.tenant, key=key)
        return Response(CatalogModelSerializer(entry.model).data)
