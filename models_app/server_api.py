"""The serving process's own HTTP API, as the Celery worker reaches it.

The worker never loads models itself: it asks the server, with the service token that
`manage.py serve` writes to SERVICE_TOKEN_FILE, so the same code works when web and
worker run on different machines.
"""

import os
import ssl
from pathlib import Path
from typing import Any

from django.conf import settings


class ServerUnreachable(ConnectionError):
    """No answer from SERVER_URL (not started yet, stopped, or the wrong address); worth a retry."""


class ServerRefused(Exception):
    """The server answered with an error; `code` is its machine-readable error code."""

    def __init__(self, message: str, *, status: int, code: str | None) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class MissingServiceToken(ServerRefused):
    """SERVICE_TOKEN_FILE does not exist (yet): `manage.py serve` has not prepared this machine."""


def read_service_token(path: Path | None = None) -> str:
    """The service token's secret from SERVICE_TOKEN_FILE; MissingServiceToken if there is none."""
    path = path or settings.SERVICE_TOKEN_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise MissingServiceToken(
            f"No service token at {path}; `manage.py serve` (or `manage.py serve --no-serve`) writes it.",
            status=401,
            code="missing_service_token",
        ) from None


def write_service_token(secret: str, path: Path | None = None) -> None:
    """Write the secret readable by this user only, replacing any older one in one step."""
    path = path or settings.SERVICE_TOKEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.unlink(missing_ok=True)  # left by a write that died half-way
    # O_EXCL + mode: the file is never readable by others, not even between open and chmod.
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(secret + "\n")
    os.replace(partial, path)


class ServerAPI:
    """A small synchronous client for the endpoints the background tasks call."""

    def __init__(
        self, base_url: str | None = None, secret: str | None = None, *, timeout_s: float | None = None
    ) -> None:
        self.base_url = (base_url or settings.SERVER_URL).rstrip("/")
        self._secret = secret if secret is not None else read_service_token()
        import httpx

        self._timeout = httpx.Timeout(timeout_s or settings.SERVER_TIMEOUT_S, connect=5.0)
        self._verify: ssl.SSLContext | bool = True
        if self.base_url.startswith("https://") and settings.SERVER_CA_FILE:
            self._verify = ssl.create_default_context(cafile=settings.SERVER_CA_FILE)

    def load_model(self, model_id: str) -> dict[str, Any]:
        """POST /models/load: load now, or refresh the keep-alive of a loaded model."""
        return self._post("/models/load", {"model_id": model_id})

    def chat(self, model_id: str, messages: list[dict[str, str]], **params: Any) -> dict[str, Any]:
        """POST /v1/chat/completions without streaming; the body includes `usage` and `timings`."""
        return self._post("/v1/chat/completions", {"model": model_id, "messages": messages, **params})

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        headers = {"Authorization": f"Bearer {self._secret}"}
        try:
            response = httpx.post(f"{self.base_url}{path}", json=body, headers=headers, timeout=self._timeout,
                                  verify=self._verify)  # fmt: skip
        except httpx.TransportError as exc:
            raise ServerUnreachable(f"{self.base_url}{path}: {exc or type(exc).__name__}") from exc
        if response.status_code == 200:
            return response.json()
        try:
            error = response.json()["error"]
            message, code = error["message"], error.get("code")
        except (ValueError, KeyError, TypeError):
            message, code = response.text[:300] or response.reason_phrase, None
        raise ServerRefused(
            f"{path} answered {response.status_code}: {message}", status=response.status_code, code=code
        )
