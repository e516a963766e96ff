"""Tenant scoping that fails closed.

Every API view that serves tenant-owned rows derives from ``TenantScopedMixin``.
Its ``get_queryset`` always filters by the caller's tenant, and a subclass that
tries to override ``get_queryset`` is refused when the class is defined, so a new
endpoint cannot forget the filter. The only way around it is to override
``dangerously_get_queryset``, a name that stands out in review.
"""

from typing import Any

from django.db.models import Model, QuerySet
from rest_framework import generics, viewsets

from marketplace.models import Tenant


class TenantScopedMixin:
    tenant_field = "tenant"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "get_queryset" in cls.__dict__:
            raise TypeError(
                f"{cls.__name__} overrides get_queryset; tenant scoping is applied there. "
                "Override dangerously_get_queryset for the unscoped base queryset instead."
            )

    @property
    def tenant(self) -> Tenant:
        tenant = getattr(self.request.auth, "tenant", None)  # type: ignore[attr-defined]
        if not isinstance(tenant, Tenant):
            raise RuntimeError("Tenant-scoped view reached without an authenticated tenant.")
        return tenant

    def dangerously_get_queryset(self) -> QuerySet[Any]:
        """The base queryset *before* the tenant filter. Never return it to a caller."""
        queryset: QuerySet[Any] | None = getattr(self, "queryset", None)
        if queryset is None:
            raise TypeError(f"{type(self).__name__} needs a queryset.")
        return queryset.all()

    def get_queryset(self) -> QuerySet[Any]:
        return self.dangerously_get_queryset().filter(**{self.tenant_field: self.tenant})


class TenantScopedGenericView(TenantScopedMixin, generics.GenericAPIView[Model]):
    pass


class TenantScopedViewSet(TenantScopedMixin, viewsets.GenericViewSet[Model]):
    pass
