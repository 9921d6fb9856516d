"""django.contrib.admin's app config with the console's site as the default one (settings.INSTALLED_APPS)."""

from django.contrib.admin.apps import AdminConfig


class ConsoleAdminConfig(AdminConfig):
    """django.contrib.admin, opened on the dashboard (models_app.console.site)."""

    default_site = "models_app.console.site.ConsoleSite"
