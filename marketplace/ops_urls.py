"""The operator console (staff only; everyone else gets 404)."""

from django.urls import path

from . import ops

app_name = "ops"

urlpatterns = [
    path("", ops.sites, name="sites"),
    path("sites/<slug:slug>/status/", ops.site_status, name="site_status"),
    path("revenue/", ops.revenue, name="revenue"),
    path("tenants/", ops.tenants, name="tenants"),
    path("tenants/<slug:slug>/", ops.tenant_detail, name="tenant_detail"),
    path("tenants/<slug:slug>/suspend/", ops.tenant_suspend, name="tenant_suspend"),
    path("tenants/<slug:slug>/reactivate/", ops.tenant_reactivate, name="tenant_reactivate"),
    path("tenants/<slug:slug>/credit/", ops.tenant_credit, name="tenant_credit"),
    path("failures/", ops.failures, name="failures"),
    path("audit/", ops.audit, name="audit"),
]
