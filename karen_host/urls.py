from django.contrib import admin
from django.urls import path

admin.site.site_header = "karen-host"
admin.site.site_title = "karen-host admin"

urlpatterns = [
    path("admin/", admin.site.urls),
]
