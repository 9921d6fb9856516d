"""The admin site with the console: the dashboard is its index; the app list, live view and playground sit beside it."""

from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path

from models_app.console import views


class ConsoleSite(admin.AdminSite):
    """Django's admin site, opened on the dashboard; every page needs an active staff login."""

    site_header = "karen-host"
    site_title = "karen-host admin"
    index_title = "Dashboard"

    def index(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> TemplateResponse:
        return views.dashboard(request, {**self.each_context(request), **(extra_context or {})})

    def apps(self, request: HttpRequest) -> TemplateResponse:
        """Django's own index: the list of apps and models."""
        return super().index(request, {"title": "Apps and models"})

    def get_urls(self) -> list[URLPattern]:
        def page(view: Callable[[HttpRequest, dict[str, Any]], TemplateResponse]) -> Callable[..., HttpResponse]:
            return self.admin_view(lambda request: view(request, self.each_context(request)))

        return [
            path("apps/", self.admin_view(self.apps), name="apps"),
            path("live/", page(views.live), name="live"),
            path("live.json", self.admin_view(views.live_json), name="live_json"),
            path("playground/", page(views.playground), name="playground"),
            *super().get_urls(),
        ]
