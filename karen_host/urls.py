from django.contrib import admin
from django.urls import path

from inference.api.apis import native_api, v1_api

admin.site.site_header = "karen-host"
admin.site.site_title = "karen-host admin"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("v1/", v1_api.urls),
    path("", native_api.urls),
]
