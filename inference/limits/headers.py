"""OpenAI's x-ratelimit-* headers on every HTTP response whose request the limiter saw.

Admission (inference.api.flow.submit) runs deep below the view, and its answer belongs on
whatever response the view or an exception handler makes of it: a JSON body, an SSE
stream, or the 429 itself. So this middleware hands each request an empty dict through
a context variable, admission fills it, and the middleware copies it onto the response.
The dict is shared, not the variable, so it survives the context copies that
sync_to_async and async_to_sync make.
"""

from collections.abc import Awaitable, Callable
from contextvars import ContextVar

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

_headers: ContextVar[dict[str, str] | None] = ContextVar("rate_limit_headers", default=None)


def add_headers(headers: dict[str, str]) -> None:
    """Put `headers` on the current HTTP response (nothing outside an HTTP request, e.g. a websocket)."""
    pending = _headers.get()
    if pending is not None:
        pending.update(headers)


class RateLimitHeadersMiddleware:
    """Copy the headers admission chose onto the response (sync and async, so it adds no thread hop)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase | Awaitable[HttpResponseBase]]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self.is_async:
            return self._acall(request)
        pending: dict[str, str] = {}
        token = _headers.set(pending)
        try:
            response = self.get_response(request)
        finally:
            _headers.reset(token)
        return _with(response, pending)

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        pending: dict[str, str] = {}
        token = _headers.set(pending)
        try:
            response = await self.get_response(request)
        finally:
            _headers.reset(token)
        return _with(response, pending)


def _with(response: HttpResponseBase, headers: dict[str, str]) -> HttpResponseBase:
    for name, value in headers.items():
        response[name] = value
    return response
