from django.contrib import admin
from django.urls import include, path

from inference.api.apis import native_api, ollama_api, v1_api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("v1/", v1_api.urls),
    path("api/", include("models_app.api.urls")),  # the management API: /api/v1/, /api/schema/, /api/docs/
    path("api/", ollama_api.urls),  # Ollama's paths: /api/chat, /api/tags, ...
    path("", native_api.urls),
]
