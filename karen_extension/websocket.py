"""Streaming over karen-host's websocket, `/ws/v1/generate` (protocol `karen.v1`).

One generation per connection: the plugin answers one request at a time, and a fresh
socket means a `cancel` is simply closing it (the server cancels and meters it).
`websockets` is imported only here and only when asked for: KAREN's requirements pin
httpx but not websockets, so SSE must keep working without it.
"""

import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from karen_extension.config import ClientConfig
from karen_extension.errors import (
    BadResponse,
    ConnectionLost,
    KarenHostError,
    RequestTimedOut,
    ServerUnreachable,
    TokenRefused,
    error_from_body,
    error_from_status,
    parse_json_object,
    redact,
)
from karen_extension.results import StreamEnd, StreamEvent, TextPiece

PROTOCOL = "karen.v1"
PATH = "/ws/v1/generate"
CLOSE_BAD_TOKEN = 4401  # the server accepts, then closes with 4401 when the token is refused

logger = logging.getLogger(__name__)


class TransportUnavailable(KarenHostError):
    reason = "transport_unavailable"


class _RedactingLogger(logging.LoggerAdapter):
    """websockets logs every handshake header at DEBUG, Authorization included; mask it."""

    def __init__(self, secret: str) -> None:
        super().__init__(logging.getLogger("karen_extension.websocket.protocol"), {})
        self.secret = secret

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if self.isEnabledFor(level):
            text = redact(str(msg) % args if args else str(msg), self.secret)
            self.logger.log(level, "%s", text, **kwargs)


def websocket_url(base_url: str) -> str:
    """http://host:port -> ws://host:port/ws/v1/generate (https -> wss)."""
    return "ws" + base_url.removeprefix("http") + PATH


async def stream_websocket(
    config: ClientConfig, token: str, model: str, messages: list[dict[str, str]], sampling: dict[str, Any]
) -> AsyncIterator[StreamEvent]:
    """Send one `generate` frame; yield its tokens and one `StreamEnd`; raise KarenHostError on failure."""
    try:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
    except ImportError:
        raise TransportUnavailable("websocket streaming needs the `websockets` package (>= 13); use SSE") from None
    request_id = f"karen-{uuid.uuid4().hex[:12]}"
    frame = {"type": "generate", "id": request_id, "model": model, "messages": messages, **sampling}
    try:
        async with connect(
            websocket_url(config.base_url),
            additional_headers={"Authorization": f"Bearer {token}"},
            subprotocols=[PROTOCOL],
            open_timeout=config.connect_timeout_s,
            logger=_RedactingLogger(token),
        ) as socket:
            await socket.send(json.dumps(frame))
            async for raw in socket:
                event = _event(parse_json_object(raw, "a websocket frame"), request_id, model)
                if event is not None:
                    yield event
                    if isinstance(event, StreamEnd):
                        return
            raise _closed(socket.close_code, socket.close_reason)
    except ConnectionClosed as exc:
        raise _closed(exc.rcvd.code if exc.rcvd else None, exc.rcvd.reason if exc.rcvd else "") from None
    except InvalidStatus as exc:
        body = exc.response.body.decode("utf-8", "replace") if exc.response.body else ""
        raise error_from_status(exc.response.status_code, body) from None
    except InvalidHandshake as exc:
        raise BadResponse(f"the websocket handshake failed: {exc}") from None
    except TimeoutError:
        limit = config.connect_timeout_s
        raise RequestTimedOut(f"no websocket connection to {config.base_url} within {limit:g} s") from None
    except OSError as exc:
        raise ServerUnreachable(f"karen-host at {config.base_url} is unreachable: {exc}") from None


def _event(frame: dict[str, Any], request_id: str, model: str) -> StreamEvent | None:
    """The event a frame carries for our request, None for frames to skip (`start`, other ids)."""
    if frame.get("id") not in (request_id, None):
        return None
    kind = frame.get("type")
    if kind == "error":
        raise error_from_body(frame.get("error"))
    if kind == "token":
        return TextPiece(str(frame.get("text") or ""))
    if kind == "done":
        usage, timings = frame.get("usage"), frame.get("timings")
        return StreamEnd(frame.get("model") or model, frame.get("finish_reason"), usage, timings)
    return None


def _closed(code: int | None, reason: str) -> KarenHostError:
    if code == CLOSE_BAD_TOKEN:
        return TokenRefused(f"the server refused the token (websocket close {code}: {reason})")
    return ConnectionLost(f"the websocket closed before the answer was done (code {code}: {reason or 'no reason'})")
