"""KServe v2 routes, at the paths ``tritonclient.http`` uses."""

from django.urls import path

from . import inference

urlpatterns = [
    path("health/live", inference.ServerLiveView.as_view(), name="health-live"),
    path("health/ready", inference.ServerLiveView.as_view(), name="health-ready"),
    path("models/<slug:model>", inference.ModelMetadataView.as_view(), name="model-metadata"),
    path(
        "models/<slug:model>/versions/<str:version>",
        inference.ModelMetadataView.as_view(),
        name="model-version-metadata",
    ),
    path("models/<slug:model>/ready", inference.ModelReadyView.as_view(), name="model-ready"),
    path(
        "models/<slug:model>/versions/<str:version>/ready",
        inference.ModelReadyView.as_view(),
        name="model-version-ready",
    ),
    path("models/<slug:model>/infer", inference.InferView.as_view(), name="infer"),
    path(
        "models/<slug:model>/versions/<str:version>/infer",
        inference.InferView.as_view(),
        name="version-infer",
    ),
]
