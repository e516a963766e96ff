"""Staff admin for tenants, members, invitations, keys and the audit trail.

State changes go through the same services as the portal, so each one is audited.
"""

from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.utils import unquote
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.db import transaction
from django.db.models import OuterRef, QuerySet
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from billing import money
from billing import selectors as billing_selectors

from . import catalog, services
from .audited_admin import AuditedModelAdmin, audit_form_saved
from .exceptions import LastOwnerError
from .forms import ReasonForm
from .models import ApiKey, AuditEvent, CatalogModel, Invitation, Membership, Role, Tenant, User


@admin.register(User)
class UserAdmin(AuditedModelAdmin[User], BaseUserAdmin):
    """Users; who made whom staff or superuser is audited (never a password)."""

    audit_name = "user"

    def user_change_password(
        self, request: HttpRequest, id: str, form_url: str = ""
    ) -> HttpResponse:
        """Django's set-password page, audited (``user.password_changed``, no value)."""
        with transaction.atomic():
            response = super().user_change_password(request, id, form_url)
            # Success redirects to the user's page; a refused form stays on this one.
            changed = (
                request.method == "POST"
                and response.status_code == 302
                and response["Location"] != request.get_full_path()
            )
            if changed:
                user = User.objects.get(pk=unquote(id))
                services.audit_record(
                    action="user.password_changed",
                    actor=request.user,  # type: ignore[arg-type]
                    target=user,
                    tenant=None,
                    metadata={"object": str(user)},
                )
        return response

    ordering = ("email",)
    list_display = ("email", "first_name", "last_name", "is_staff", "is_active", "date_joined")
    search_fields = ("email", "first_name", "last_name")
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Personal info", {"fields": ("first_name", "last_name")}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser", "groups")}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)


class MembershipInline(admin.TabularInline[Membership, Tenant]):
    model = Membership
    extra = 0
    fields = ("user", "role", "created_at")
    readonly_fields = ("user", "role", "created_at")
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Tenant | None = None) -> bool:
        return False


def _status_action(
    modeladmin: "TenantAdmin",
    request: HttpRequest,
    queryset: QuerySet[Tenant],
    *,
    verb: str,
    action_name: str,
) -> HttpResponse | None:
    """Ask for a reason, then change each tenant's status through the audited service."""
    if "apply" in request.POST:
        form = ReasonForm(request.POST)
        if form.is_valid():
            change = services.tenant_suspend if verb == "suspend" else services.tenant_reactivate
            for tenant in queryset:
                change(tenant=tenant, actor=request.user, reason=form.cleaned_data["reason"])  # type: ignore[arg-type]
            modeladmin.message_user(
                request, f"{queryset.count()} tenant(s): {verb} done.", messages.SUCCESS
            )
            return None
    else:
        form = ReasonForm()
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": f"{verb.capitalize()} tenants",
        "verb": verb,
        "action_name": action_name,
        "tenants": queryset,
        "form": form,
        "opts": modeladmin.model._meta,
        "action_checkbox_name": ACTION_CHECKBOX_NAME,
    }
    return TemplateResponse(request, "admin/marketplace/tenant/status_change.html", context)


_OVERLAP_HOURS = services.WEBHOOK_SECRET_OVERLAP // timedelta(hours=1)


class _WriteOnlySecretField(forms.CharField):
    """Changed only when a different value was typed: a blank box means "keep"."""

    def has_changed(self, initial: object, data: object) -> bool:
        return bool(data) and data != initial


class TenantAdminForm(ModelForm[Tenant]):
    """The webhook secret is write-only here: staff can replace it, never read it.

    The previous secret (kept after a rotation) is not on the form at all; ending its
    overlap early is done by clearing or moving ``webhook_secret_previous_until``.
    """

    webhook_secret = _WriteOnlySecretField(
        required=False,
        max_length=64,
        widget=forms.PasswordInput(render_value=False),
        help_text="Signs job-completion webhooks. Never shown; the tenant reveals it on its "
        f"Keys page. Typing one replaces the secret at once, without the {_OVERLAP_HOURS}-hour "
        "overlap of the “Rotate webhook signing secrets” action. Leave blank to keep it.",
    )

    class Meta:
        model = Tenant
        fields = (
            "name",
            "slug",
            "region_pin",
            "webhook_secret",
            "webhook_secret_previous_until",
            *services.TENANT_LIMIT_FIELDS,
        )

    def clean_webhook_secret(self) -> str:
        typed: str = self.cleaned_data.get("webhook_secret") or ""
        return typed or self.instance.webhook_secret


@admin.register(Tenant)
class TenantAdmin(AuditedModelAdmin[Tenant]):
    audit_name = "tenant"
    form = TenantAdminForm
    list_display = (
        "name",
        "slug",
        "status",
        "tier",
        "balance",
        "month_to_date_usage",
        "created_at",
    )
    list_filter = ("status", "tier")
    search_fields = ("name", "slug", "memberships__user__email")
    readonly_fields = ("status", "status_reason", "status_changed_at", "created_at")
    inlines = (MembershipInline,)
    actions = ("suspend", "reactivate", "rotate_webhook_secret")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Tenant]:
        # Balance and this month's usage as correlated subqueries: one query for the
        # whole page of tenants, not one per row.
        return (
            super()
            .get_queryset(request)
            .annotate(
                credit_balance_micros=billing_selectors.balance_subquery(tenant_ref=OuterRef("pk")),
                usage_month_micros=billing_selectors.usage_cost_subquery(
                    tenant_ref=OuterRef("pk"), start=billing_selectors.month_start_utc()
                ),
            )
        )

    @admin.display(description="balance", ordering="credit_balance_micros")
    def balance(self, tenant: Tenant) -> str:
        micros = getattr(tenant, "credit_balance_micros", None)
        return "—" if micros is None else money.format_usd(micros)

    @admin.display(description="month-to-date usage", ordering="usage_month_micros")
    def month_to_date_usage(self, tenant: Tenant) -> str:
        return money.format_usd(getattr(tenant, "usage_month_micros", None) or 0, places=6)

    def save_model(self, request: HttpRequest, obj: Tenant, form: Any, change: bool) -> None:
        """Tier and limit changes go through their service (audited as
        ``tenant.limits_changed``, and it drops cached keys); the rest is audited here."""
        if not change:
            super().save_model(request, obj, form, change)
            return
        limits = {name: getattr(obj, name) for name in services.TENANT_LIMIT_FIELDS}
        others = [name for name in form.changed_data if name not in limits]
        if others:
            obj.save(update_fields=others)
            audit_form_saved(
                request, name=self.audit_name, obj=obj, form=form, created=False, fields=others
            )
        services.tenant_limits_set(tenant=obj, actor=request.user, limits=limits)  # type: ignore[arg-type]

    def has_delete_permission(self, request: HttpRequest, obj: Tenant | None = None) -> bool:
        # A tenant's ledger and invoices must outlive it: suspend instead.
        return False

    @admin.action(description="Suspend selected tenants (asks for a reason)")
    def suspend(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> HttpResponse | None:
        return _status_action(self, request, queryset, verb="suspend", action_name="suspend")

    @admin.action(description="Reactivate selected tenants (asks for a reason)")
    def reactivate(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> HttpResponse | None:
        return _status_action(self, request, queryset, verb="reactivate", action_name="reactivate")

    @admin.action(
        description=f"Rotate webhook signing secrets (the old ones sign {_OVERLAP_HOURS} h more)"
    )
    def rotate_webhook_secret(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        """Rotate through the portal's audited service; staff never see the new secrets."""
        for tenant in queryset:
            services.webhook_secret_rotate(tenant=tenant, actor=request.user)  # type: ignore[arg-type]
        self.message_user(
            request,
            f"{queryset.count()} tenant(s): new webhook secret, shown on their Keys page; "
            f"the previous one also signs deliveries for {_OVERLAP_HOURS} hours.",
            messages.SUCCESS,
        )


class MembershipAdminForm(ModelForm[Membership]):
    """Refuses, with a message, what ``membership_change_role`` would refuse."""

    class Meta:
        model = Membership
        fields = ("role",)

    def clean_role(self) -> str:
        role: str = self.cleaned_data["role"]
        current = self.instance
        if (
            current.pk is not None
            and current.role == Role.OWNER
            and role != Role.OWNER
            and Membership.objects.filter(tenant_id=current.tenant_id, role=Role.OWNER).count() <= 1
        ):
            raise forms.ValidationError(
                "A team needs at least one owner: make someone else owner first."
            )
        return role


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin[Membership]):
    """Roles change and members go through the portal's services: audited, last owner kept.

    Members are added by invitation only.
    """

    form = MembershipAdminForm
    list_display = ("user", "tenant", "role", "created_at")
    list_filter = ("role",)
    search_fields = ("user__email", "tenant__name")
    list_select_related = ("user", "tenant")
    readonly_fields = ("user", "tenant", "created_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def save_model(
        self, request: HttpRequest, obj: Membership, form: ModelForm[Membership], change: bool
    ) -> None:
        if "role" not in form.changed_data:
            return
        current = Membership.objects.select_related("tenant", "user").get(pk=obj.pk)
        services.membership_change_role(membership=current, actor=request.user, role=obj.role)  # type: ignore[arg-type]

    def delete_model(self, request: HttpRequest, obj: Membership) -> None:
        self._remove(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Membership]) -> None:
        for membership in queryset.select_related("tenant", "user"):
            self._remove(request, membership)

    def _remove(self, request: HttpRequest, membership: Membership) -> None:
        try:
            services.membership_remove(membership=membership, actor=request.user)  # type: ignore[arg-type]
        except LastOwnerError as exc:
            self.message_user(request, f"{membership}: {exc.message}", messages.ERROR)


@admin.register(Invitation)
class InvitationAdmin(AuditedModelAdmin[Invitation]):
    audit_name = "invitation"
    list_display = ("email", "tenant", "role", "created_at", "expires_at", "accepted_at")
    search_fields = ("email", "tenant__name")
    list_select_related = ("tenant",)
    exclude = ("token_hash",)
    readonly_fields = (
        "tenant",
        "email",
        "role",
        "invited_by",
        "created_at",
        "expires_at",
        "accepted_at",
        "accepted_by",
        "revoked_at",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin[ApiKey]):
    """Keys are created by tenants; staff can only look and revoke. Hashes are never shown."""

    list_display = ("name", "display_prefix", "tenant", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("name", "public_id", "tenant__name")
    list_select_related = ("tenant",)
    fields = (
        "tenant",
        "name",
        "public_id",
        "allowed_models",
        "monthly_spend_cap_micros",
        "created_by",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
        "revoked_by",
    )
    readonly_fields = fields
    actions = ("revoke",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        return False

    @admin.action(description="Revoke selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for key in queryset.select_related("tenant"):
            services.api_key_revoke(key=key, actor=request.user)  # type: ignore[arg-type]
        self.message_user(request, "Keys revoked.", messages.SUCCESS)


@admin.register(CatalogModel)
class CatalogModelAdmin(AuditedModelAdmin[CatalogModel]):
    """The catalog and its prices. Each change is audited with the old and new values.

    Models are never deleted here (jobs and the ledger refer to them): deactivate one
    instead. Web processes see a change within ``CATALOG_CACHE_SECONDS``.
    """

    audit_name = "catalog_model"
    list_display = (
        "slug",
        "name",
        "task",
        "pricing_unit",
        "price_micros",
        "visibility",
        "is_active",
    )
    list_filter = ("is_active", "task", "pricing_unit", "visibility")
    search_fields = ("slug", "name")
    filter_horizontal = ("listed_tenants",)

    def has_delete_permission(self, request: HttpRequest, obj: CatalogModel | None = None) -> bool:
        return False

    def save_model(
        self, request: HttpRequest, obj: CatalogModel, form: ModelForm[CatalogModel], change: bool
    ) -> None:
        super().save_model(request, obj, form, change)
        catalog.cache_clear()


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin[AuditEvent]):
    list_display = ("created_at", "actor_label", "action", "tenant", "target_type", "target_id")
    list_filter = ("action",)
    search_fields = ("actor_label", "action", "tenant__name", "reason")
    list_select_related = ("tenant",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
