from typing import ClassVar

from django.db import models
from django.db.models import Q

from .catalog import CatalogModel
from .keys import ApiKey
from .tenants import Tenant, TenantOwnedModel


class Job(TenantOwnedModel):
    """An asynchronous inference request and its outcome.

    Stored before it is enqueued; its ``status`` changes only through conditional
    updates (``UPDATE … WHERE status = <expected>``), so a redelivered task or a
    second worker can never move it twice.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELED = "canceled", "Canceled"
        EXPIRED = "expired", "Expired"

    FINAL_STATES: ClassVar = (Status.SUCCEEDED, Status.FAILED, Status.CANCELED, Status.EXPIRED)

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="jobs")
    public_id = models.CharField(max_length=32, unique=True)
    api_key = models.ForeignKey(ApiKey, on_delete=models.SET_NULL, null=True, related_name="+")
    model = models.ForeignKey(CatalogModel, on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    # NULL, not "", when absent: the unique constraint must ignore jobs without a key.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    request_hash = models.CharField(max_length=64)
    request = models.JSONField(
        help_text="The KServe v2 JSON request body; {} once the payload retention has passed."
    )
    output = models.JSONField(null=True, blank=True)
    # Set when the request and output were deleted (JOB_PAYLOAD_RETENTION_DAYS after the
    # job finished); the rest of the row (status, cost, units, times) stays for good.
    payload_purged_at = models.DateTimeField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    site_slug = models.CharField(max_length=40, blank=True)
    model_version = models.CharField(max_length=20, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    units = models.BigIntegerField(null=True, blank=True)
    cost_micros = models.BigIntegerField(null=True, blank=True)
    max_cost_micros = models.BigIntegerField(default=0)
    reservation_id = models.BigIntegerField(null=True, blank=True)
    webhook_url = models.URLField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=["tenant", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="job_unique_idempotency_key",
            )
        ]
        indexes: ClassVar = [
            models.Index(fields=["tenant", "-created_at"]),
            models.Index(fields=["status", "lease_expires_at"]),
            models.Index(fields=["status", "enqueued_at"]),
            # The retention purge's next batch: finished jobs whose payload is still kept.
            models.Index(
                fields=["finished_at"],
                condition=Q(payload_purged_at__isnull=True, finished_at__isnull=False),
                name="job_payload_kept_finished",
            ),
        ]

    def __str__(self) -> str:
        return self.public_id

    @property
    def is_final(self) -> bool:
        return self.status in self.FINAL_STATES

    @property
    def payload_purged(self) -> bool:
        return self.payload_purged_at is not None


class WebhookDelivery(TenantOwnedModel):
    """One attempt to POST a job's completion to its ``webhook_url``."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="webhook_deliveries")
    attempt = models.PositiveIntegerField()
    url = models.URLField(max_length=500)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)
    duration_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering: ClassVar = ["job", "attempt"]

    def __str__(self) -> str:
        return f"{self.job_id} #{self.attempt} → {self.status_code or self.error}"
