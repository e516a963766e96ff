from django.urls import path

from . import views

app_name = "portal"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("models/", views.models_page, name="models"),
    path("models/<slug:slug>/", views.model_page, name="model"),
    path("jobs/", views.jobs_page, name="jobs"),
    path("jobs/<str:public_id>/", views.job_page, name="job"),
    path("jobs/<str:public_id>/cancel/", views.job_cancel, name="job_cancel"),
    path("billing/", views.billing_page, name="billing"),
    path("billing/checkout/", views.billing_checkout, name="billing_checkout"),
    path("billing/success/", views.billing_success, name="billing_success"),
    path("billing/cancel/", views.billing_cancel, name="billing_cancel"),
    path("billing/settings/", views.billing_settings, name="billing_settings"),
    path("billing/ledger.csv", views.billing_ledger_csv, name="billing_ledger_csv"),
    path("keys/", views.api_keys, name="api_keys"),
    path("keys/<int:pk>/revoke/", views.api_key_revoke, name="api_key_revoke"),
    path("keys/webhook-secret/", views.webhook_secret, name="webhook_secret"),
    path("team/", views.team, name="team"),
    path("audit/", views.audit_page, name="audit"),
    path("audit.csv", views.audit_csv, name="audit_csv"),
    path("team/members/<int:pk>/role/", views.member_role, name="member_role"),
    path("team/members/<int:pk>/remove/", views.member_remove, name="member_remove"),
    path("team/invitations/<int:pk>/revoke/", views.invitation_revoke, name="invitation_revoke"),
    path("invitations/<str:token>/", views.invitation_accept, name="invitation_accept"),
    path("onboarding/", views.onboarding, name="onboarding"),
    path("tenant/switch/", views.tenant_switch, name="tenant_switch"),
]
