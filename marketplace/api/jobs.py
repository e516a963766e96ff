"""``/v1/jobs``: submit (idempotently), list, read and cancel async jobs."""

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from marketplace import jobs
from marketplace.models import Job
from workers.webhooks import WebhookUrlRefused, url_check

from .authentication import request_key
from .schema import errors
from .scoping import TenantScopedViewSet


def job_representation(job: Job) -> dict[str, Any]:
    """The public shape of a job (the API's and the webhook's)."""
    final = job.is_final
    return {
        "id": job.public_id,
        "object": "job",
        "model": job.model.slug,
        "status": job.status,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "site": job.site_slug or None,
        "model_version": job.model_version or None,
        "attempts": job.attempts,
        "output": job.output if job.status == Job.Status.SUCCEEDED else None,
        "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None,
        "units": job.units,
        "cost_micros": job.cost_micros if final else None,
        "max_cost_micros": job.max_cost_micros,
        "webhook_url": job.webhook_url or None,
        "payload_purged_at": job.payload_purged_at.isoformat() if job.payload_purged_at else None,
    }


class JobSerializer(serializers.Serializer[Job]):
    """Documents ``job_representation`` for the schema."""

    id = serializers.CharField()
    object = serializers.CharField()
    model = serializers.CharField()
    status = serializers.ChoiceField(choices=Job.Status.choices)
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    site = serializers.CharField(allow_null=True)
    model_version = serializers.CharField(allow_null=True)
    attempts = serializers.IntegerField()
    output = serializers.JSONField(allow_null=True)
    error = serializers.JSONField(allow_null=True)
    units = serializers.IntegerField(allow_null=True)
    cost_micros = serializers.IntegerField(allow_null=True)
    max_cost_micros = serializers.IntegerField()
    webhook_url = serializers.URLField(allow_null=True)
    payload_purged_at = serializers.DateTimeField(
        allow_null=True,
        help_text=(
            "When the job's input and output were deleted (data retention: "
            "JOB_PAYLOAD_RETENTION_DAYS after it finished); `output` is then null."
        ),
    )

    def to_representation(self, instance: Job) -> dict[str, Any]:
        return job_representation(instance)


class JobCreateSerializer(serializers.Serializer[Any]):
    model = serializers.SlugField(max_length=64)
    inputs = serializers.ListField(child=serializers.DictField(), min_length=1, max_length=64)
    outputs = serializers.ListField(child=serializers.DictField(), required=False)
    parameters = serializers.DictField(required=False)
    webhook_url = serializers.URLField(max_length=500, required=False, allow_blank=True)

    def validate_webhook_url(self, value: str) -> str:
        if value:
            try:
                url_check(value)
            except WebhookUrlRefused as exc:
                raise serializers.ValidationError(str(exc)) from exc
        return value


class JobFilterSerializer(serializers.Serializer[Any]):
    status = serializers.ChoiceField(choices=Job.Status.choices, required=False)
    model = serializers.SlugField(max_length=64, required=False)


def _job(obj: object) -> Job:
    if not isinstance(obj, Job):
        raise TypeError("expected a Job")
    return obj


class JobViewSet(TenantScopedViewSet):
    """A tenant's jobs. Scoped by ``TenantScopedViewSet``: another tenant's job is a 404."""

    queryset = Job.objects.select_related("model")
    serializer_class = JobSerializer  # type: ignore[assignment]
    lookup_field = "public_id"
    lookup_url_kwarg = "job_id"

    @extend_schema(
        parameters=[JobFilterSerializer],
        responses={200: JobSerializer(many=True), **errors(400)},
        summary="List jobs, newest first",
    )
    def list(self, request: Request) -> Response:
        filters = JobFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        queryset = self.get_queryset()
        if "status" in filters.validated_data:
            queryset = queryset.filter(status=filters.validated_data["status"])
        if "model" in filters.validated_data:
            queryset = queryset.filter(model__slug=filters.validated_data["model"])
        page = self.paginate_queryset(queryset) or []
        return self.get_paginated_response([job_representation(job) for job in page])

    @extend_schema(responses=JobSerializer, summary="One job")
    def retrieve(self, request: Request, job_id: str) -> Response:
        return Response(job_representation(_job(self.get_object())))

    @extend_schema(
        request=JobCreateSerializer,
        responses={202: JobSerializer, **errors(400, 402, 404, 409, 415, 422)},
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                str,
                OpenApiParameter.HEADER,
                description="Same key and body → the same job; same key, other body → 409.",
            )
        ],
        summary="Submit an async job",
    )
    def create(self, request: Request) -> Response:
        key = request_key(request)
        form = JobCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = dict(form.validated_data)
        idempotency_key = request.headers.get("Idempotency-Key") or None
        if idempotency_key is not None and len(idempotency_key) > 255:
            raise serializers.ValidationError({"Idempotency-Key": ["At most 255 characters."]})
        slug = data.pop("model")
        webhook_url = data.pop("webhook_url", "")
        job, created = jobs.job_submit(
            tenant=key.tenant,
            key=key,
            slug=slug,
            request=data,
            idempotency_key=idempotency_key,
            webhook_url=webhook_url,
        )
        headers = {"Location": f"/v1/jobs/{job.public_id}"}
        if not created:
            headers["Idempotent-Replayed"] = "true"
        return Response(job_representation(job), status=status.HTTP_202_ACCEPTED, headers=headers)

    @extend_schema(
        request=None,
        responses={200: JobSerializer, **errors(409)},
        summary="Cancel a queued or running job",
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, job_id: str) -> Response:
        job = jobs.job_cancel(job=_job(self.get_object()))
        return Response(job_representation(job))
