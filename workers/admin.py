"""Staff admin for sites, servers and deployments; every edit here is audited."""

from typing import ClassVar

from django import forms
from django.contrib import admin, messages
from django.db.models import Model, QuerySet
from django.http import HttpRequest

from marketplace.audited_admin import AuditedModelAdmin

from . import services
from .models import Deployment, Site, TritonServer


class TritonServerInline(admin.TabularInline[TritonServer, Site]):
    model = TritonServer
    extra = 0
    fields = ("name", "http_url", "grpc_url", "metrics_url", "enabled")


@admin.register(Site)
class SiteAdmin(AuditedModelAdmin[Site]):
    audit_name = "site"
    audit_inline_names: ClassVar[dict[type[Model], str]] = {TritonServer: "server"}
    list_display = ("slug", "name", "region", "status", "power_price_usd_per_mwh", "gpu_capacity")
    list_filter = ("status", "region")
    search_fields = ("slug", "name", "region")
    inlines = (TritonServerInline,)
    readonly_fields = ("status",)
    actions = ("make_active", "make_draining", "make_offline")

    def _set(self, request: HttpRequest, queryset: QuerySet[Site], status: str) -> None:
        for site in queryset:
            services.site_status_set(site=site, status=status, actor=request.user)  # type: ignore[arg-type]
        self.message_user(request, f"{queryset.count()} site(s) now {status}.", messages.SUCCESS)

    @admin.action(description="Set active (takes new work)")
    def make_active(self, request: HttpRequest, queryset: QuerySet[Site]) -> None:
        self._set(request, queryset, Site.Status.ACTIVE)

    @admin.action(description="Set draining (no new work; running work finishes)")
    def make_draining(self, request: HttpRequest, queryset: QuerySet[Site]) -> None:
        self._set(request, queryset, Site.Status.DRAINING)

    @admin.action(description="Set offline")
    def make_offline(self, request: HttpRequest, queryset: QuerySet[Site]) -> None:
        self._set(request, queryset, Site.Status.OFFLINE)


class _WriteOnlyField(forms.CharField):
    """Changed only when something was typed: a blank box means "keep"."""

    def has_changed(self, initial: object, data: object) -> bool:
        return bool(data)


class TritonServerForm(forms.ModelForm[TritonServer]):
    """The server's auth header is write-only: never shown again once saved."""

    auth_header = _WriteOnlyField(
        required=False,
        max_length=500,
        widget=forms.PasswordInput(render_value=False),
        help_text="'Header-Name: value' sent with every call. Never shown again; leave "
        "blank to keep the current one.",
    )
    auth_header_clear = forms.BooleanField(required=False, label="Remove the auth header")

    class Meta:
        model = TritonServer
        fields = ("site", "name", "http_url", "grpc_url", "metrics_url", "auth_header", "enabled")

    def clean(self) -> dict[str, object]:
        data = super().clean() or {}
        if data.get("auth_header_clear"):
            data["auth_header"] = ""
        elif not data.get("auth_header"):
            data["auth_header"] = self.instance.auth_header
        return data


@admin.register(TritonServer)
class TritonServerAdmin(AuditedModelAdmin[TritonServer]):
    audit_name = "server"
    form = TritonServerForm
    list_display = ("__str__", "http_url", "enabled")
    list_filter = ("enabled", "site")
    list_select_related = ("site",)


@admin.register(Deployment)
class DeploymentAdmin(AuditedModelAdmin[Deployment]):
    audit_name = "deployment"
    list_display = (
        "model",
        "server",
        "triton_model_name",
        "triton_model_version",
        "max_concurrency",
        "enabled",
    )
    list_filter = ("enabled", "server__site")
    list_select_related = ("model", "server__site")
