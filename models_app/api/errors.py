"""Every DRF failure in the server's one error shape: {"error": {"message", "type", "param", "code"}}."""

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import set_rollback

from inference.api.errors import APIError, as_api_error
from inference.engine.pool import PoolError
from models_app.grants import GrantRefused
from models_app.services import TokenError

logger = logging.getLogger(__name__)

# OpenAI's error types by status, as the ninja surfaces use them (inference/api/errors.py).
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    429: "rate_limit_error",
    503: "unavailable_error",
}


class Conflict(exceptions.APIException):
    """The resource is in a state that refuses the request (e.g. loading a disabled model)."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the resource's current state."
    default_code = "conflict"


class Unavailable(exceptions.APIException):
    """A service the request needs is down (e.g. the Celery broker)."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "A service this request needs is unavailable; retry shortly."
    default_code = "unavailable"


def _first_validation_error(detail: Any, path: tuple[str, ...] = ()) -> tuple[str, str | None, str | None]:
    """(message, param, DRF code) of the first error in a ValidationError's nested detail."""
    if isinstance(detail, dict) and detail:
        key, value = next(iter(detail.items()))
        inner = () if key == "non_field_errors" else (str(key),)
        return _first_validation_error(value, path + inner)
    if isinstance(detail, list) and detail:
        return _first_validation_error(detail[0], path)
    param = ".".join(path) or None
    if not detail:
        return "Invalid request.", param, None
    code = getattr(detail, "code", None)
    if code == "required" and param:
        return f"'{param}' is required.", param, code
    return (f"Invalid '{param}': {detail}" if param else str(detail)), param, code


def _body(message: str, status_code: int, param: str | None, code: str | None) -> dict[str, Any]:
    error_type = _TYPES.get(status_code, "server_error" if status_code >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _from_drf(exc: exceptions.APIException) -> Response:
    headers = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header
    if getattr(exc, "wait", None):
        headers["Retry-After"] = str(int(exc.wait))
    if isinstance(exc, exceptions.ValidationError):
        message, param, _ = _first_validation_error(exc.detail)
        return Response(_body(message, 400, param, "invalid_value"), status=400)
    if isinstance(exc, exceptions.ParseError):
        return Response(_body("Request body is not valid JSON.", 400, None, "invalid_json"), status=400)
    if isinstance(exc, exceptions.NotAuthenticated):
        message = "Missing bearer token: send 'Authorization: Bearer khk_...' (or log in for the browsable API)."
        return Response(_body(message, 401, None, "missing_token"), status=401, headers=headers)
    codes = exc.get_codes()
    code = codes if isinstance(codes, str) else None
    return Response(_body(str(exc.detail), exc.status_code, None, code), status=exc.status_code, headers=headers)


def render_error(exc: Exception, context: dict[str, Any]) -> Response:
    """DRF's EXCEPTION_HANDLER: every exception becomes a JSON error; unknown ones a logged 500."""
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(*exc.args)
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(*exc.args)
    elif isinstance(exc, TokenError):
        exc = exceptions.ValidationError(str(exc))
    if isinstance(exc, GrantRefused):
        response = Response(_body(str(exc), 403, exc.param, exc.code), status=403)
    elif isinstance(exc, exceptions.APIException):
        response = _from_drf(exc)
    elif isinstance(exc, APIError | PoolError):
        # The engine's refusals map through the same table the ninja surfaces use.
        error = as_api_error(exc)
        response = Response(_body(str(error), error.status, error.param, error.code), status=error.status)
        if error.retry_after is not None:
            response["Retry-After"] = str(error.retry_after)
    else:
        logger.exception("unhandled error in the management API", exc_info=exc)
        response = Response(_body("The server failed; see its log.", 500, None, "internal_error"), status=500)
    set_rollback()
    # A CSV (or other non-JSON) request still gets its error as JSON, never as a CSV row.
    request = context.get("request")
    renderer = getattr(request, "accepted_renderer", None)
    if renderer is not None and renderer.format not in ("json", "api"):
        request.accepted_renderer, request.accepted_media_type = JSONRenderer(), "application/json"
    return response
