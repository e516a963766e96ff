"""The operator's sites, their Triton servers, and which catalog model runs where."""

from typing import ClassVar

from django.db import models


class Site(models.Model):
    """A grid-connected GPU site. Its Celery queue is ``site.<slug>``."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        DRAINING = "draining", "Draining (no new work)"
        OFFLINE = "offline", "Offline"

    slug = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=100)
    region = models.CharField(max_length=40, help_text="e.g. us-tx, ca-qc")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    power_price_usd_per_mwh = models.DecimalField(
        max_digits=8, decimal_places=2, default=0, help_text="What the site pays for power."
    )
    gpu_capacity = models.PositiveIntegerField(default=1, help_text="GPUs at the site.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering: ClassVar = ["slug"]

    def __str__(self) -> str:
        return self.slug

    @property
    def queue(self) -> str:
        return f"site.{self.slug}"


class TritonServer(models.Model):
    """One Triton Inference Server at a site."""

    site = models.ForeignKey(Site, on_delete=models.CASCADE, related_name="servers")
    name = models.CharField(max_length=100)
    http_url = models.URLField(max_length=200, help_text="e.g. http://10.0.0.5:8000")
    grpc_url = models.CharField(max_length=200, blank=True, help_text="host:port")
    metrics_url = models.URLField(max_length=200, blank=True, help_text="…:8002/metrics")
    auth_header = models.CharField(
        max_length=500,
        blank=True,
        help_text="Optional 'Header-Name: value' sent with every call (never logged).",
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["site", "name"], name="tritonserver_unique_name")
        ]

    def __str__(self) -> str:
        return f"{self.site.slug}/{self.name}"


class Deployment(models.Model):
    """A catalog model served by one Triton server."""

    model = models.ForeignKey(
        "marketplace.CatalogModel", on_delete=models.CASCADE, related_name="deployments"
    )
    server = models.ForeignKey(TritonServer, on_delete=models.CASCADE, related_name="deployments")
    triton_model_name = models.CharField(max_length=100)
    triton_model_version = models.CharField(
        max_length=20, blank=True, help_text="Empty means the server's latest."
    )
    max_concurrency = models.PositiveIntegerField(default=8)
    enabled = models.BooleanField(default=True)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["model", "server"], name="deployment_unique_server")
        ]

    def __str__(self) -> str:
        return f"{self.model_id} on {self.server_id}"
