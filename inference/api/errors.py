"""One error shape everywhere: OpenAI's {"error": {"message", "type", "param", "code"}}."""

import logging
import math
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError as NinjaAuthenticationError
from ninja.errors import HttpError
from ninja.errors import ValidationError as NinjaValidationError

from inference.engine.llama_runner import PromptError
from inference.engine.pool import ModelBusy, ModelLoadFailed, NoRoom
from inference.engine.scheduler import QueueFull, SchedulerDown
from inference.metering import counters

logger = logging.getLogger(__name__)
REQUEST_ID_HEADER = "X-Request-Id"  # names the request's usage row


class APIError(Exception):
    """A failure the client can act on, rendered in OpenAI's error shape."""

    status = 400
    error_type = "invalid_request_error"
    admitted = False  # True for a request that reached the engine (billed, counted as finished)
    request_id: str | None = None  # its usage row, for the X-Request-Id header

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.param, self.code, self.retry_after = param, code, retry_after


class InvalidRequest(APIError):
    pass


class AuthenticationFailed(APIError):
    status, error_type = 401, "authentication_error"


class PermissionDenied(APIError):
    status, error_type = 403, "permission_error"


class NotFound(APIError):
    status, error_type = 404, "not_found_error"


class Conflict(APIError):
    status, error_type = 409, "conflict_error"


class MethodNotAllowed(APIError):
    status = 405


class PayloadTooLarge(APIError):
    status = 413


class RateLimited(APIError):
    status, error_type = 429, "rate_limit_error"


class ServerError(APIError):
    status, error_type = 500, "server_error"


class Unavailable(APIError):
    status, error_type = 503, "unavailable_error"


def error_body(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(exc: APIError) -> JsonResponse:
    return _with_headers(
        JsonResponse(error_body(str(exc), exc.error_type, exc.param, exc.code), status=exc.status), exc
    )


def ollama_error_response(exc: APIError) -> JsonResponse:
    """Ollama's error shape, `{"error": "message"}`, with the same status and headers.

    It has no `param`: a message that does not name its field already ends with it.
    """
    message = str(exc)
    if exc.param and exc.param not in message:
        message = f"{message} (at {exc.param})"
    return _with_headers(JsonResponse({"error": message}, status=exc.status), exc)


Render = Callable[[APIError], JsonResponse]


def _with_headers(response: JsonResponse, exc: APIError) -> JsonResponse:
    if exc.retry_after is not None:
        response["Retry-After"] = str(exc.retry_after)
    if exc.request_id:
        response[REQUEST_ID_HEADER] = exc.request_id
    return response


def as_api_error(exc: Exception) -> APIError:
    """Map an engine or framework exception to the APIError a client should see."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, PromptError):
        return InvalidRequest(str(exc), param=exc.param, code=exc.code)
    if isinstance(exc, QueueFull):
        return RateLimited(str(exc), code="queue_full", retry_after=1)
    if isinstance(exc, NoRoom):
        return Unavailable(str(exc), code="no_room", retry_after=5)
    if isinstance(exc, ModelLoadFailed):
        return Unavailable(str(exc), code="model_load_failed", retry_after=max(1, math.ceil(exc.retry_after_s)))
    if isinstance(exc, SchedulerDown):
        return Unavailable(str(exc), code="scheduler_failed", retry_after=1)
    if isinstance(exc, ModelBusy):
        return Conflict(str(exc), code="model_busy")
    if isinstance(exc, RequestDataTooBig):
        return PayloadTooLarge("Request body is larger than MAX_REQUEST_BODY_BYTES allows.", code="body_too_large")
    logger.exception("unhandled error", exc_info=exc)
    return ServerError("The server failed; see its log.", code="internal_error")


def describe_validation_error(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """One sentence naming the field (healthchecks' format_first_error idea)."""
    if not errors:
        return "Invalid request.", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "payload", "query", "path")]
    param = ".".join(loc) or None
    kind = first.get("type", "")
    if kind == "json_invalid":
        return "Request body is not valid JSON.", None
    if kind == "extra_forbidden":
        return f"Unknown field '{param}'; remove it (see /v1/docs for the accepted fields).", param
    if kind == "missing":
        return f"'{param}' is required.", param
    message = first.get("msg", "invalid value")
    return (f"Invalid '{param}': {message}." if param else f"Invalid request: {message}."), param


def route_of(request: HttpRequest) -> str:
    """The URL pattern a request matched ("/models/unload/<model_id>"): a bounded metrics label."""
    match = getattr(request, "resolver_match", None)
    return f"/{match.route}" if match is not None else "unmatched"


def refuse(request: HttpRequest, error: APIError, render: Render = error_response) -> JsonResponse:
    """Render `error`, counting it as a refusal unless the request was admitted (then it is a finished one)."""
    if not error.admitted:
        counters.count_rejected(route_of(request), error.status)
    return render(error)


def install_error_handlers(api: NinjaAPI, render: Render = error_response) -> None:
    """Make every failure on `api` an error in `render`'s shape (OpenAI's by default); never a 500 for bad input."""

    @api.exception_handler(NinjaValidationError)
    def _validation(request: HttpRequest, exc: NinjaValidationError) -> HttpResponse:
        message, param = describe_validation_error(list(exc.errors))
        return refuse(request, InvalidRequest(message, param=param, code="invalid_value"), render)

    @api.exception_handler(NinjaAuthenticationError)
    def _unauthenticated(request: HttpRequest, exc: NinjaAuthenticationError) -> HttpResponse:
        message = "Missing bearer token: send 'Authorization: Bearer khk_...'."
        return refuse(request, AuthenticationFailed(message, code="missing_token"), render)

    @api.exception_handler(HttpError)
    def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
        if exc.status_code == 400 and "parse request body" in exc.message:
            return refuse(request, InvalidRequest("Request body is not valid JSON.", code="invalid_json"), render)
        error = APIError(exc.message)
        error.status = exc.status_code
        return refuse(request, error, render)

    @api.exception_handler(Exception)
    def _any(request: HttpRequest, exc: Exception) -> HttpResponse:
        return refuse(request, as_api_error(exc), render)


class ErrorShapeMiddleware:
    """The router's own bare 404 and 405 (an unknown path, a method a path does not serve) in the error shape.

    They come from Django and ninja before any of our handlers run, as plain text or HTML.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        return self._shaped(request, self.get_response(request))

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        return self._shaped(request, await self.get_response(request))

    @staticmethod
    def _shaped(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        if response.status_code not in (404, 405) or response.get("Content-Type", "").startswith("application/json"):
            return response
        if response.status_code == 405:
            allowed = response.get("Allow", "")
            error: APIError = MethodNotAllowed(
                f"{request.method} is not served at {request.path}; it serves {allowed or 'no method'}.",
                code="method_not_allowed",
            )
        else:
            error = NotFound(f"Nothing is served at {request.path}; see /v1/docs and /docs.", code="not_found")
        # Ollama's paths (/api/...) answer in Ollama's shape; the admin's /api/v1 never comes through here.
        shaped = refuse(request, error, ollama_error_response if request.path.startswith("/api/") else error_response)
        if response.has_header("Allow"):
            shaped["Allow"] = response["Allow"]
        return shaped
