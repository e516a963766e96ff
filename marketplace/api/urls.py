from django.urls import path

from . import billing, catalog, inference, jobs, views

_jobs = jobs.JobViewSet.as_view({"get": "list", "post": "create"})
_job = jobs.JobViewSet.as_view({"get": "retrieve"})
_job_cancel = jobs.JobViewSet.as_view({"post": "cancel"})

urlpatterns = [
    path("jobs", _jobs, name="jobs"),
    path("jobs/<str:job_id>", _job, name="job"),
    path("jobs/<str:job_id>/cancel", _job_cancel, name="job-cancel"),
    path("models", catalog.ModelListView.as_view(), name="models"),
    path("models/<slug:model>", catalog.ModelDetailView.as_view(), name="model"),
    path("embeddings", inference.EmbeddingsView.as_view(), name="embeddings"),
    path("health", views.HealthView.as_view(), name="health"),
    path("health/live", views.LiveView.as_view(), name="health-live"),
    path("me", views.MeView.as_view(), name="me"),
    path("balance", billing.BalanceView.as_view(), name="balance"),
    path("usage", billing.UsageView.as_view(), name="usage"),
]
