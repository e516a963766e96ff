"""The catalog as the hot path sees it: models by id, cached per process for seconds.

A price or visibility change reaches every web process within ``CATALOG_CACHE_SECONDS``.
"""

import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Q, QuerySet

from workers.kserve import TensorSpec

from .exceptions import ModelNotAllowed, ModelNotFound
from .models import ApiKey, CatalogModel, Tenant


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    model: CatalogModel
    listed_tenant_ids: frozenset[int]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def visible_to(self, tenant: Tenant) -> bool:
        if not self.model.is_active:
            return False
        if self.model.visibility == CatalogModel.Visibility.PUBLIC:
            return True
        return tenant.pk in self.listed_tenant_ids


_lock = threading.Lock()
_entries: dict[str, tuple[float, CatalogEntry | None]] = {}


def _specs(raw: list[dict[str, object]]) -> list[TensorSpec]:
    return [
        TensorSpec(
            name=str(item["name"]),
            datatype=str(item["datatype"]),
            shape=[int(dim) for dim in item["shape"]],  # type: ignore[attr-defined]
        )
        for item in raw
    ]


def _load(slug: str) -> CatalogEntry | None:
    model = CatalogModel.objects.filter(slug=slug).first()
    if model is None:
        return None
    listed = frozenset(model.listed_tenants.values_list("pk", flat=True))
    return CatalogEntry(model, listed, _specs(model.inputs), _specs(model.outputs))


def entry_get(slug: str) -> CatalogEntry | None:
    now = time.monotonic()
    cached = _entries.get(slug)
    if cached is not None and now - cached[0] < settings.CATALOG_CACHE_SECONDS:
        return cached[1]
    entry = _load(slug)
    with _lock:
        _entries[slug] = (now, entry)
    return entry


def model_for_caller(slug: str, *, tenant: Tenant, key: ApiKey | None) -> CatalogEntry:
    """The model ``slug`` if this tenant may see it (else 404) and this key may call it (403)."""
    entry = entry_get(slug)
    if entry is None or not entry.visible_to(tenant):
        raise ModelNotFound(f"No model '{slug[:64]}'.", field="model")
    if key is not None and key.allowed_models and slug not in key.allowed_models:
        raise ModelNotAllowed(f"This API key may not call '{slug}'.", field="model")
    return entry


def models_visible(*, tenant: Tenant) -> QuerySet[CatalogModel]:
    return (
        CatalogModel.objects.filter(is_active=True)
        .filter(Q(visibility=CatalogModel.Visibility.PUBLIC) | Q(listed_tenants=tenant))
        .distinct()
        .order_by("slug")
    )


def cache_clear() -> None:
    with _lock:
        _entries.clear()
