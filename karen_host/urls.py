from django.contrib import admin
from django.urls import include, path

from inference.api.apis import native_api, v1_api

admin.site.site_header = "karen-host"
admin.site.site_title = "karen-host admin"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("v1/", v1_api.urls),
    path("api/", include("models_app.api.urls")),
    path("", native_api.urls),
]
