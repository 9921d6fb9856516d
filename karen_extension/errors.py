"""What can go wrong talking to karen-host, as typed exceptions with a short `reason`.

The client raises these; the plugin turns each into a fallback result in one place
(`GenerationResult.fallback`). Every message passes through `redact`, so a token can
never reach a log line, an exception or a returned dict, even if a server echoed it.
"""

import json
import re
from typing import Any

_TOKEN_LIKE = re.compile(r"(khk_|sk-)[A-Za-z0-9_\-]{6,}|(?i:bearer)\s+\S+")


def redact(text: str, secret: str | None = None) -> str:
    """Text with the given secret and anything shaped like a bearer token masked."""
    if secret:
        text = text.replace(secret, "[redacted]")
    return _TOKEN_LIKE.sub("[redacted]", text)


class KarenHostError(Exception):
    """A request to karen-host did not produce an answer; `reason` says why in one word."""

    reason = "error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(redact(message))
        self.status, self.code, self.param, self.retry_after = status, code, param, retry_after


class InvalidParams(KarenHostError):
    reason = "invalid_params"


class Misconfigured(KarenHostError):
    reason = "config_error"


class PluginFailure(KarenHostError):
    reason = "internal_error"


class NoToken(KarenHostError):
    reason = "no_token"


class ServerUnreachable(KarenHostError):
    reason = "server_unreachable"


class ConnectionLost(KarenHostError):
    reason = "connection_lost"


class RequestTimedOut(KarenHostError):
    reason = "timeout"


class TokenRefused(KarenHostError):
    reason = "token_refused"


class PermissionDenied(KarenHostError):
    reason = "permission_denied"


class ModelNotFound(KarenHostError):
    reason = "model_not_found"


class RequestRejected(KarenHostError):
    reason = "request_rejected"


class ServerBusy(KarenHostError):
    reason = "server_busy"


class ServerUnavailable(KarenHostError):
    reason = "server_unavailable"


class ServerFailed(KarenHostError):
    reason = "server_error"


class BadResponse(KarenHostError):
    reason = "bad_response"


def parse_json_object(raw: str | bytes, what: str) -> dict[str, Any]:
    """`raw` decoded as a JSON object; BadResponse naming `what` (a chunk, a frame) if it is not one."""
    try:
        value = json.loads(raw)
    except ValueError:
        raise BadResponse(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise BadResponse(f"{what} is not a JSON object")
    return value


# One table from the server's HTTP status to what the plugin reports (the same
# statuses the server documents: 401 token, 403 scope/model, 404 model, 429 queue...).
_BY_STATUS: dict[int, type[KarenHostError]] = {
    401: TokenRefused,
    403: PermissionDenied,
    404: ModelNotFound,
    429: ServerBusy,
    503: ServerUnavailable,
}

# The websocket protocol carries OpenAI error types instead of statuses.
_BY_TYPE: dict[str, type[KarenHostError]] = {
    "authentication_error": TokenRefused,
    "permission_error": PermissionDenied,
    "not_found_error": ModelNotFound,
    "rate_limit_error": ServerBusy,
    "unavailable_error": ServerUnavailable,
    "server_error": ServerFailed,
    "invalid_request_error": RequestRejected,
}


def error_from_status(status: int, body: str, retry_after: str | None = None) -> KarenHostError:
    """The exception for an HTTP error response with the server's `{"error": {...}}` body."""
    kind = _BY_STATUS.get(status) or (ServerFailed if status >= 500 else RequestRejected)
    error = _error_object(body)
    message = error.get("message") or f"karen-host answered HTTP {status}"
    return kind(
        f"HTTP {status}: {message}",
        status=status,
        code=error.get("code"),
        param=error.get("param"),
        retry_after=_seconds(retry_after),
    )


def error_from_body(error: Any) -> KarenHostError:
    """The exception for an `error` object met inside a stream (SSE chunk or websocket frame)."""
    error = error if isinstance(error, dict) else {"message": str(error)}
    kind = _BY_TYPE.get(str(error.get("type")), ServerFailed)
    message = str(error.get("message") or "karen-host reported an error mid-stream")
    return kind(message, code=error.get("code"), param=error.get("param"))


def _error_object(body: str) -> dict[str, Any]:
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return {"message": body[:200]} if body else {}
    return error if isinstance(error, dict) else {}


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None
