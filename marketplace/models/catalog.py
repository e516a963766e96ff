from typing import ClassVar

from django.db import models

from .tenants import Tenant


class CatalogModel(models.Model):
    """A model tenants can call, with its price and its tensor interface.

    ``inputs`` and ``outputs`` are the KServe v2 metadata taken from Triton
    (``[{"name", "datatype", "shape"}]``, the batch dimension first as -1 when
    ``max_batch_size`` > 0). Requests are validated against them before anything
    is sent to a site.
    """

    class Task(models.TextChoices):
        EMBEDDING = "embedding", "Embedding"
        CLASSIFICATION = "classification", "Classification"
        TEXT_GENERATION = "text_generation", "Text generation"
        TENSOR = "tensor", "Generic tensor"

    class PricingUnit(models.TextChoices):
        REQUEST = "request", "per request"
        THOUSAND_TOKENS = "1k_tokens", "per 1K tokens"
        THOUSAND_INPUT_ELEMENTS = "1k_input_elements", "per 1K input elements"
        GPU_SECOND = "gpu_second", "per GPU-second"

    class Visibility(models.TextChoices):
        PUBLIC = "public", "Public"
        LISTED_TENANTS = "listed", "Listed tenants only"

    slug = models.SlugField(max_length=64, unique=True, help_text="The model id in the API.")
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    task = models.CharField(max_length=32, choices=Task.choices, default=Task.TENSOR)
    pricing_unit = models.CharField(
        max_length=32, choices=PricingUnit.choices, default=PricingUnit.REQUEST
    )
    price_micros = models.BigIntegerField(help_text="Micro-USD per pricing unit.")
    visibility = models.CharField(
        max_length=16, choices=Visibility.choices, default=Visibility.PUBLIC
    )
    listed_tenants = models.ManyToManyField(Tenant, blank=True, related_name="+")
    inputs = models.JSONField(default=list, blank=True)
    outputs = models.JSONField(default=list, blank=True)
    versions = models.JSONField(default=list, blank=True)
    max_batch_size = models.PositiveIntegerField(default=0)
    usage_output = models.CharField(
        max_length=64,
        blank=True,
        help_text="Output tensor that reports billable tokens (for per-token pricing).",
    )
    max_units_per_item = models.PositiveIntegerField(
        default=0,
        help_text="Most tokens one batch item can bill (per-token pricing), to bound the cost.",
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering: ClassVar = ["slug"]

    def __str__(self) -> str:
        return self.slug
