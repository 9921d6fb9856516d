"""The bearer-token APIs (/v1 and the native endpoints) served by Django without the browser middleware.

Django runs each old-style middleware's hooks in a worker thread when it serves a request
asynchronously (MiddlewareMixin.__acall__ wraps them in sync_to_async): with the full
stack that is about a dozen thread hops per request, each waiting for the GIL and a core
while llama.cpp decodes, which measured as tens of milliseconds of time to first token
under load. Sessions, CSRF, logins and messages serve the admin and the management API;
the token APIs use none of them. So those paths get a handler of their own with only the
security headers, CORS and CommonMiddleware, the first and last run inline on the event
loop (their hooks only read the request and set headers; they never block).
"""

from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest, HttpResponseBase
from django.middleware.common import CommonMiddleware
from django.middleware.security import SecurityMiddleware

ASGIApp = Callable[[dict[str, Any], Callable[..., Awaitable[Any]], Callable[..., Awaitable[Any]]], Awaitable[None]]


class _Inline:
    """Runs a MiddlewareMixin's hooks on the event loop instead of a worker thread (non-blocking hooks only)."""

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.process_request(request) if hasattr(self, "process_request") else None
        response = response or await self.get_response(request)
        return self.process_response(request, response) if hasattr(self, "process_response") else response


class InlineSecurityMiddleware(_Inline, SecurityMiddleware):
    pass


class InlineCommonMiddleware(_Inline, CommonMiddleware):
    pass


API_MIDDLEWARE = [
    "karen_host.api_handler.InlineSecurityMiddleware",
    "corsheaders.middleware.CorsMiddleware",  # async-native
    "karen_host.api_handler.InlineCommonMiddleware",
    "inference.limits.headers.RateLimitHeadersMiddleware",  # x-ratelimit-* from admission; async-native
    "inference.api.errors.ErrorShapeMiddleware",  # the router's bare 404/405 in the error shape; async-native
]


class APIHandler(ASGIHandler):
    """Django's ASGI handler with API_MIDDLEWARE instead of settings.MIDDLEWARE."""

    def load_middleware(self, is_async: bool = False) -> None:
        # BaseHandler reads settings.MIDDLEWARE; this runs once, at import, before serving.
        full = settings.MIDDLEWARE
        settings.MIDDLEWARE = API_MIDDLEWARE
        try:
            super().load_middleware(is_async)
        finally:
            settings.MIDDLEWARE = full


def full_stack_prefixes() -> tuple[str, ...]:
    """Paths that need sessions, CSRF and logins (admin, management API) or static files.

    The management API's paths under /api/ (models_app/api/urls.py); the rest of /api/ is Ollama's.
    """
    static = "/" + settings.STATIC_URL.lstrip("/")
    return ("/admin/", "/api/v1/", "/api/schema/", "/api/docs/", "/api/auth/", static)


def split_by_path(api: ASGIApp, full: ASGIApp) -> ASGIApp:
    """An ASGI app sending the admin, management API and static paths to `full`, the rest to `api`."""
    prefixes = full_stack_prefixes()

    async def app(
        scope: dict[str, Any], receive: Callable[..., Awaitable[Any]], send: Callable[..., Awaitable[Any]]
    ) -> None:
        handler = full if scope["path"].startswith(prefixes) else api
        await handler(scope, receive, send)

    return app
