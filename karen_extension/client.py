"""An async client for karen-host: health, models, chat (one body, SSE or websocket).

`generate()` is the call that never raises for a server-side failure: a server that
is down, a refused token, a timeout all come back as a `GenerationResult` with
`fallback_used: true` and a reason, never as text the model did not write.
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any

import httpx

from karen_extension.config import ClientConfig
from karen_extension.errors import (
    BadResponse,
    ConnectionLost,
    KarenHostError,
    ModelNotFound,
    NoToken,
    RequestTimedOut,
    ServerUnreachable,
    error_from_body,
    error_from_status,
    parse_json_object,
)
from karen_extension.results import GenerationResult, StreamEnd, StreamEvent, TextPiece, collect
from karen_extension.websocket import stream_websocket

Message = dict[str, str]

# Sampling fields the server's /v1/chat/completions and websocket frames both accept;
# anything else is dropped here, because the server refuses unknown fields by name.
SAMPLING_FIELDS = frozenset(
    {"temperature", "top_p", "top_k", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty",
     "max_tokens", "stop", "seed", "keep_alive"}
)  # fmt: skip


class KarenHostClient:
    """Async client for one karen-host server; reads its token from the environment once.

    Usable from any event loop: KAREN may call a plugin on a fresh loop per call (its
    thread executor runs `asyncio.run`), and an httpx pool belongs to the loop that
    opened it, so the pool is rebuilt whenever the running loop changes.
    """

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._token = config.read_token()
        self._http: httpx.AsyncClient | None = None
        self._http_loop: asyncio.AbstractEventLoop | None = None
        self._model: str | None = config.model or None

    def __repr__(self) -> str:
        return f"KarenHostClient(base_url={self.config.base_url!r}, token={'set' if self._token else 'missing'})"

    @property
    def has_token(self) -> bool:
        return self._token is not None

    async def aclose(self) -> None:
        """Close the connection pool; safe to call twice or before any request."""
        http, loop = self._http, self._http_loop
        self._http = self._http_loop = None
        # A pool opened on another (finished) loop cannot be closed from this one; its sockets went with that loop.
        if http is not None and loop is asyncio.get_running_loop():
            with contextlib.suppress(RuntimeError):
                await http.aclose()

    async def health(self) -> dict[str, Any]:
        """GET /health (open, no token): the server's liveness and loaded models."""
        return await self._request_json("GET", "/health", auth=False)

    async def list_models(self) -> list[dict[str, Any]]:
        """GET /v1/models: the models this token may use."""
        body = await self._request_json("GET", "/v1/models")
        return list(body.get("data") or [])

    async def karen_config(self) -> dict[str, Any]:
        """GET /karen/config: the server's default model and its sampling defaults."""
        return await self._request_json("GET", "/karen/config")

    async def resolve_model(self) -> str:
        """The configured model, else the server's default (asked once, then remembered)."""
        if self._model is None:
            model = (await self.karen_config()).get("model")
            if not model:
                raise ModelNotFound("karen-host has no default model; set KAREN_HOST_MODEL or scan a .gguf")
            self._model = str(model)
        return self._model

    async def chat(self, messages: list[Message], *, model: str | None = None, **sampling: Any) -> GenerationResult:
        """POST /v1/chat/completions without streaming; raises KarenHostError."""
        started = time.monotonic()
        model = model or await self.resolve_model()
        body = {"model": model, "messages": messages, **_sampling(sampling)}
        reply = await self._request_json("POST", "/v1/chat/completions", body=body)
        try:
            choice = reply["choices"][0]
            text, finish = choice["message"]["content"] or "", choice.get("finish_reason")
        except (KeyError, IndexError, TypeError):
            raise BadResponse("chat completion without choices[0].message.content") from None
        end = StreamEnd(reply.get("model"), finish, reply.get("usage"), reply.get("timings"))
        return GenerationResult.answered(text, end, transport="http", started=started)

    async def stream_chat(
        self, messages: list[Message], *, model: str | None = None, transport: str = "sse", **sampling: Any
    ) -> AsyncGenerator[StreamEvent, None]:
        """Yield `TextPiece`s then one `StreamEnd`, over SSE or the websocket; raises KarenHostError."""
        model = model or await self.resolve_model()
        if transport == "websocket":
            events = stream_websocket(self.config, self._require_token(), model, messages, _sampling(sampling))
        else:
            events = self._stream_sse(model, messages, _sampling(sampling))
        async for event in events:
            yield event

    async def generate(
        self,
        messages: list[Message],
        *,
        model: str | None = None,
        stream: bool = False,
        transport: str | None = None,
        timeout_s: float | None = None,
        **sampling: Any,
    ) -> GenerationResult:
        """An answer, or a fallback result with the reason; never raises for server-side failures."""
        started = time.monotonic()
        transport = (transport or self.config.stream_transport) if stream else "http"
        try:
            async with asyncio.timeout(timeout_s or self.config.timeout_s):
                if not stream:
                    return await self.chat(messages, model=model, **sampling)
                events = self.stream_chat(messages, model=model, transport=transport, **sampling)
                return await collect(events, transport=transport, started=started)
        except TimeoutError:
            limit = timeout_s or self.config.timeout_s
            error: KarenHostError = RequestTimedOut(f"no complete answer within {limit:g} s")
        except KarenHostError as exc:
            error = exc
        return GenerationResult.fallback(error, transport=transport, model=model or self._model, started=started)

    async def _stream_sse(
        self, model: str, messages: list[Message], sampling: dict[str, Any]
    ) -> AsyncIterator[StreamEvent]:
        body = {"model": model, "messages": messages, "stream": True, "stream_options": {"include_usage": True}}
        with _transport_errors(self.config):
            request = self._client().stream(
                "POST", "/v1/chat/completions", json={**body, **sampling}, headers=self._headers(auth=True)
            )
            async with request as reply:
                if reply.status_code >= 400:
                    await reply.aread()
                    raise error_from_status(reply.status_code, reply.text, reply.headers.get("Retry-After"))
                async for event in parse_sse(reply.aiter_lines()):
                    yield event

    async def _request_json(self, method: str, path: str, *, body: Any = None, auth: bool = True) -> dict[str, Any]:
        with _transport_errors(self.config):
            reply = await self._client().request(method, path, json=body, headers=self._headers(auth=auth))
        if reply.status_code >= 400:
            raise error_from_status(reply.status_code, reply.text, reply.headers.get("Retry-After"))
        try:
            data = reply.json()
        except ValueError:
            raise BadResponse(f"{method} {path} answered with something other than JSON") from None
        if not isinstance(data, dict):
            raise BadResponse(f"{method} {path} answered with JSON that is not an object")
        return data

    def _headers(self, *, auth: bool) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._require_token()}"} if auth else {}

    def _require_token(self) -> str:
        if self._token is None:
            raise NoToken(f"no API token: set {self.config.api_key_env} to a karen-host token (khk_...)")
        return self._token

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._http is None or self._http_loop is not loop:
            timeout = httpx.Timeout(self.config.timeout_s, connect=self.config.connect_timeout_s)
            self._http = httpx.AsyncClient(base_url=self.config.base_url, timeout=timeout)
            self._http_loop = loop
        return self._http


async def parse_sse(lines: AsyncIterator[str]) -> AsyncIterator[StreamEvent]:
    """OpenAI-style SSE chunks to events; `data: [DONE]` ends the stream with a `StreamEnd`."""
    model = finish = None
    usage = None
    async for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            yield StreamEnd(model, finish, usage)
            return
        chunk = parse_json_object(data, "an event stream chunk")
        if "error" in chunk:
            raise error_from_body(chunk["error"])
        model, usage = chunk.get("model", model), chunk.get("usage") or usage
        for choice in chunk.get("choices") or []:
            if text := (choice.get("delta") or {}).get("content"):
                yield TextPiece(text)
            finish = choice.get("finish_reason") or finish
    raise ConnectionLost("the event stream ended without data: [DONE]")


@contextlib.contextmanager
def _transport_errors(config: ClientConfig) -> Iterator[None]:
    """httpx's transport failures as KarenHostErrors; `from None` drops the request (and its headers)."""
    try:
        yield
    except httpx.TimeoutException:
        raise RequestTimedOut(f"karen-host at {config.base_url} did not answer in time") from None
    except httpx.ConnectError as exc:
        raise ServerUnreachable(f"karen-host at {config.base_url} is unreachable: {exc}") from None
    except httpx.TransportError as exc:
        raise ConnectionLost(f"the connection to karen-host at {config.base_url} broke: {exc}") from None


def _sampling(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k in SAMPLING_FIELDS and v is not None}
