"""/api/v1/ (the router's resources), /api/schema/ (OpenAPI) and /api/docs/ (Swagger UI)."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from models_app.api.nodes import InferenceNodeViewSet, PlacementViewSet
from models_app.api.views import (
    APITokenViewSet,
    LLMModelViewSet,
    ModelConfigViewSet,
    SelfTestViewSet,
    UsageViewSet,
)

router = DefaultRouter()
router.register("models", LLMModelViewSet, basename="model")
router.register("configs", ModelConfigViewSet, basename="config")
router.register("tokens", APITokenViewSet, basename="token")
router.register("usage", UsageViewSet, basename="usage")
router.register("selftests", SelfTestViewSet, basename="selftest")
router.register("nodes", InferenceNodeViewSet, basename="node")
router.register("placements", PlacementViewSet, basename="placement")

urlpatterns = [
    path("v1/", include(router.urls)),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    # Log in and out for the browsable API (the admin's login works as well).
    path("auth/", include("rest_framework.urls")),
]
