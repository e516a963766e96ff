"""A ModelAdmin base whose every add, change and delete writes one audit event.

The Django admin runs each save or delete in one transaction (``changeform_view``
and ``delete_view`` are atomic), so the row and its audit event commit together.
Values of secret fields are never recorded (``services.AUDIT_SECRET_FIELDS``).
"""

from typing import Any, ClassVar, TypeVar

from django.contrib import admin
from django.db.models import Model, QuerySet
from django.forms import BaseModelFormSet, ModelForm
from django.http import HttpRequest

from . import services
from .models import Tenant, User

M = TypeVar("M", bound=Model)


def _actor(request: HttpRequest) -> User | None:
    user = request.user
    return user if isinstance(user, User) else None


def _tenant_of(obj: Model) -> Tenant | None:
    """The tenant whose owners may see the event: the row itself or its ``tenant``."""
    if isinstance(obj, Tenant):
        return obj
    tenant = getattr(obj, "tenant", None)
    return tenant if isinstance(tenant, Tenant) else None


def audit_form_saved(
    request: HttpRequest,
    *,
    name: str,
    obj: Model,
    form: ModelForm[Any],
    created: bool,
    fields: list[str] | None = None,
) -> None:
    """Record a saved admin form: ``<name>.created`` or ``<name>.changed`` with the changes.

    ``fields`` narrows the record to the changes saved here (others may be recorded by
    a service). A change form submitted without changes records nothing.
    """
    changed = list(form.changed_data if fields is None else fields)
    if not created and not changed:
        return
    services.audit_record(
        action=f"{name}.{'created' if created else 'changed'}",
        actor=_actor(request),
        target=obj,
        tenant=_tenant_of(obj),
        metadata={
            "object": str(obj),
            "changes": services.audit_changes(
                fields=changed, before={} if created else form.initial, after=form.cleaned_data
            ),
        },
    )


def audit_deleted(request: HttpRequest, *, name: str, obj: Model) -> None:
    """Record a row deleted in the admin, before it goes (its id is still known)."""
    services.audit_record(
        action=f"{name}.deleted",
        actor=_actor(request),
        target=obj,
        tenant=_tenant_of(obj),
        metadata={"object": str(obj)},
    )


class AuditedModelAdmin(admin.ModelAdmin[M]):
    """Audits saves and deletes of ``audit_name`` rows, and of inline rows by their model."""

    audit_name: ClassVar[str]
    #: Audit names of inline models, by model class (``site`` edits its ``server`` rows).
    audit_inline_names: ClassVar[dict[type[Model], str]] = {}

    def save_model(self, request: HttpRequest, obj: M, form: ModelForm[M], change: bool) -> None:
        super().save_model(request, obj, form, change)
        audit_form_saved(request, name=self.audit_name, obj=obj, form=form, created=not change)

    def delete_model(self, request: HttpRequest, obj: M) -> None:
        audit_deleted(request, name=self.audit_name, obj=obj)
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[M]) -> None:
        for obj in queryset:
            audit_deleted(request, name=self.audit_name, obj=obj)
        super().delete_queryset(request, queryset)

    def save_formset(
        self, request: HttpRequest, form: Any, formset: BaseModelFormSet[Any, Any], change: bool
    ) -> None:
        model: type[Model] = formset.model  # type: ignore[assignment]
        name = self.audit_inline_names.get(model) or model._meta.model_name or "row"
        for inline_form in formset.deleted_forms:
            if inline_form.instance.pk is not None:
                audit_deleted(request, name=name, obj=inline_form.instance)
        super().save_formset(request, form, formset, change)
        for inline_form in formset.forms:
            if inline_form in formset.deleted_forms or not inline_form.has_changed():
                continue
            created = inline_form.instance in formset.new_objects
            audit_form_saved(
                request, name=name, obj=inline_form.instance, form=inline_form, created=created
            )
