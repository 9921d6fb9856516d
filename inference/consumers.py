"""Websocket token streaming at /ws/v1/generate (protocol: docs/websocket.md).

Framing only: each `generate` frame goes through the same resolve, submit and
metering steps as HTTP (inference.api.flow); this consumer relays the job's events.
"""

import asyncio
import contextlib
import json
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from pydantic import ValidationError

from inference import drain
from inference.api import flow
from inference.api.chat import prepare_chat, response_schema
from inference.api.errors import (
    APIError,
    AuthenticationFailed,
    InvalidRequest,
    Unavailable,
    as_api_error,
    describe_validation_error,
)
from inference.api.tool_formats import ReplyReader
from inference.api.ws_schemas import PROTOCOL, CancelFrame, GenerateFrame
from inference.auth import Principal, request_principal, session_principal
from inference.engine import JobHandle, Outcome
from inference.metering import counters

CLOSE_UNAUTHENTICATED = 4401
WS_ROUTE = "/ws/v1/generate"  # the refusal counters' label for error frames


def _bearer(scope: dict[str, Any]) -> str | None:
    """The token from `Authorization: Bearer` or a `bearer.<token>` subprotocol; never the query string."""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            kind, _, secret = value.decode("latin1").partition(" ")
            if kind.lower() == "bearer" and secret.strip():
                return secret.strip()
    for subprotocol in scope.get("subprotocols", []):
        if subprotocol.startswith("bearer."):
            return subprotocol.removeprefix("bearer.")
    return None


class GenerateConsumer(AsyncWebsocketConsumer):
    """Several generations at once on one socket, each metered as one request."""

    principal: Principal | None = None
    secret: str | None = None  # kept to check the token again at each `generate`

    async def connect(self) -> None:
        self.jobs: dict[str, tuple[asyncio.Task, JobHandle | None]] = {}
        self.handles: dict[str, JobHandle] = {}
        self._position_sends: set[asyncio.Future] = set()  # `queued` frames on their way (strong references)
        offered = self.scope.get("subprotocols", [])
        await self.accept(subprotocol=PROTOCOL if PROTOCOL in offered else None)
        drain.track_socket(self)  # told before a graceful stop, closed after it
        self.secret = _bearer(self.scope)
        try:
            self.principal = await self._authenticate()
        except APIError as exc:
            # Accept, then close at once: a close before accept would reach the client as a
            # bare HTTP 403, and the client could not tell a bad token from a bad origin.
            counters.count_rejected(WS_ROUTE, exc.status)
            await self.close(code=CLOSE_UNAUTHENTICATED, reason=str(exc)[:120])

    async def shutdown_notice(self, drain_timeout_s: float) -> None:
        """The server is stopping: generations running finish (up to the drain time), new ones are refused."""
        await self.send_json({"type": "shutdown", "drain_timeout_s": drain_timeout_s,
                              "message": "The server is shutting down: running generations may finish; "
                                         "reconnect (another instance, or this one once it is back)."})  # fmt: skip

    async def disconnect(self, code: int) -> None:
        drain.forget_socket(self)
        for handle in self.handles.values():
            handle.cancel()  # each is finalized as `cancelled` by its own outcome
        for task in [t for t, _ in self.jobs.values()]:
            task.cancel()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.principal is None:
            return
        size = len(text_data) if text_data is not None else len(bytes_data or b"")
        if size > settings.WS_MAX_FRAME_BYTES:
            message = f"Frame is {size} bytes; the limit is {settings.WS_MAX_FRAME_BYTES} (WS_MAX_FRAME_BYTES)."
            await self._error(None, InvalidRequest(message, code="frame_too_large"))
            return
        try:
            frame = json.loads(text_data if text_data is not None else bytes_data.decode())
        except (ValueError, UnicodeDecodeError):
            await self._error(None, InvalidRequest("Frame is not valid JSON.", code="invalid_json"))
            return
        if not isinstance(frame, dict):
            await self._error(None, InvalidRequest("A frame is a JSON object with a 'type'.", code="invalid_frame"))
            return
        kind, frame_id = frame.get("type"), frame.get("id") if isinstance(frame.get("id"), str) else None
        if kind == "generate":
            await self._start(frame, frame_id)
        elif kind == "cancel":
            await self._cancel(frame, frame_id)
        else:
            message = f"Unknown frame type {kind!r}; send 'generate' or 'cancel'."
            await self._error(frame_id, InvalidRequest(message, param="type", code="invalid_frame"))

    async def _start(self, frame: dict[str, Any], frame_id: str | None) -> None:
        if not await self._still_authorized(frame_id):
            return
        try:
            request = GenerateFrame.model_validate(frame)
        except ValidationError as exc:
            message, param = describe_validation_error(exc.errors())
            await self._error(frame_id, InvalidRequest(message, param=param, code="invalid_value"))
            return
        if request.id in self.jobs:
            message = f"A generation with id {request.id!r} is already running on this socket."
            await self._error(request.id, InvalidRequest(message, param="id", code="duplicate_id"))
            return
        task = asyncio.create_task(self._generate(request, self.principal))
        self.jobs[request.id] = (task, None)
        task.add_done_callback(lambda _t: self._forget(request.id))

    async def _still_authorized(self, frame_id: str | None) -> bool:
        """Check the token again, through the auth cache; once it is no longer valid, say why and close 4401.

        A socket outlives a revocation, an expiry or its owner's deactivation, so each new
        generation gets the check an HTTP request gets (scopes and models come fresh too).
        """
        try:
            self.principal = await self._authenticate()
        except AuthenticationFailed as exc:
            self.principal = None  # later frames are ignored until the close lands
            await self._error(frame_id, exc)
            await self.close(code=CLOSE_UNAUTHENTICATED, reason=str(exc)[:120])
            await self.disconnect(CLOSE_UNAUTHENTICATED)  # what still runs on the socket stops with it
            return False
        return True

    async def _authenticate(self) -> Principal:
        """The socket's token, or the trusted local token for a socket without one (AuthenticationFailed if neither)."""
        headers = {k.decode("latin1").lower(): v.decode("latin1") for k, v in self.scope.get("headers", [])}
        if self.secret is None and "authorization" in headers:  # as on HTTP: a header that is not a bearer token
            raise AuthenticationFailed("The Authorization header must be 'Bearer khk_...'.", code="invalid_api_key")
        if self.secret is None and "authorization" not in headers:
            principal = await session_principal(self.scope, headers)  # the admin's playground
            if principal is not None:
                return principal
        client = (self.scope.get("client") or [None])[0]
        return await request_principal(self.secret, headers, client)

    def _forget(self, frame_id: str) -> None:
        self.jobs.pop(frame_id, None)
        self.handles.pop(frame_id, None)

    async def _cancel(self, frame: dict[str, Any], frame_id: str | None) -> None:
        try:
            request = CancelFrame.model_validate(frame)
        except ValidationError:
            await self._error(frame_id, InvalidRequest("cancel needs the 'id' of a generation.", param="id"))
            return
        handle = self.handles.get(request.id)
        if handle is not None:
            handle.cancel()  # the generation's own task sends its `done` frame
        elif request.id not in self.jobs:
            message = f"No generation with id {request.id!r} is running."
            await self._error(request.id, InvalidRequest(message, param="id", code="unknown_id"))
        else:
            self.jobs[request.id][0].cancel()  # not yet submitted: stop before admission

    async def _generate(self, request: GenerateFrame, principal: Principal) -> None:
        try:
            principal.require_scope("inference")
            spec = await flow.resolve_spec(principal, request.model)
            reader = None
            if request.messages is not None:
                setup = await prepare_chat(
                    spec, request, request.messages, tools=request.tools, tool_choice=request.tool_choice,
                    parallel_tool_calls=request.parallel_tool_calls, response_format=request.response_format,
                    chat_template_kwargs=request.chat_template_kwargs, reasoning_effort=request.reasoning_effort,
                )  # fmt: skip
                job, reader = setup.job, setup.reader()
            else:
                sampling = flow.build_sampling(request, spec, json_schema=response_schema(request.response_format))
                job = flow.make_job(spec, request, sampling=sampling, kind="completion", prompt=request.prompt)
            handle = await flow.submit(
                principal=principal, spec=spec, job=job, endpoint="ws.generate",
                request_id=flow.new_request_id(), client=(self.scope.get("client") or [None])[0],
            )  # fmt: skip
        except asyncio.CancelledError:
            # A `cancel` before admission: nothing ran or was billed, and the generation still
            # ends with its one `done` (on a disconnect there is nobody to tell).
            with contextlib.suppress(Exception):
                nothing = flow.usage_body(Outcome("cancelled", "cancelled"))
                await self.send_json({"type": "done", "id": request.id, "finish_reason": "cancelled", "usage": nothing})
            return
        except Exception as exc:
            await self._error(request.id, as_api_error(exc))
            return
        self.handles[request.id] = handle
        await self.send_json({"type": "start", "id": request.id, "model": spec.model_id})
        self._report_queue_position(request.id, handle)
        await self._relay(request.id, handle, reader)

    def _report_queue_position(self, frame_id: str, handle: JobHandle) -> None:
        """A `queued` frame with the generation's place in the model's queue, each time it changes."""

        def send(position: int | None) -> None:
            if position is not None and frame_id in self.handles:
                self._position_sends.add(task := asyncio.ensure_future(self._send_queued(frame_id, position)))
                task.add_done_callback(self._position_sends.discard)

        handle.on_position(send)
        send(handle.position)

    async def _send_queued(self, frame_id: str, position: int) -> None:
        with contextlib.suppress(Exception):  # the socket closed meanwhile: nobody to tell
            await self.send_json({"type": "queued", "id": frame_id, "position": position})

    async def _relay(self, frame_id: str, handle: JobHandle, reader: ReplyReader | None) -> None:
        """Send tokens as they come, merged with whatever queued while the client was slow.

        A chat's reasoning goes in `reasoning` frames, its answer in `token` frames, and its
        tool calls, once whole and valid, in the `done` frame. Backpressure: a reader so slow
        that WS_MAX_BACKLOG events pile up has its generation cancelled (error
        `slow_consumer`) rather than buffered without bound.
        """
        too_slow = False
        events = handle.events()
        try:
            async for event in events:
                if isinstance(event, Outcome):
                    if too_slow:
                        message = "The client read too slowly; the generation was stopped."
                        error = Unavailable(message, code="slow_consumer")
                        error.admitted = True  # its usage row is closed as cancelled
                        await self._error(frame_id, error)
                    else:
                        await self._finish(frame_id, event, reader)
                    return
                if handle.backlog > settings.WS_MAX_BACKLOG and not too_slow:
                    too_slow = True
                    handle.cancel()
                text = event.text + "".join(t.text for t in handle.drain_tokens())
                await self._send_pieces(frame_id, reader.feed(text) if reader else [("content", text)])
        finally:
            await events.aclose()

    async def _send_pieces(self, frame_id: str, pieces: list[tuple[str, str]]) -> None:
        for kind, text in pieces:
            await self.send_json(
                {"type": "reasoning" if kind == "reasoning" else "token", "id": frame_id, "text": text}
            )

    async def _finish(self, frame_id: str, outcome: Outcome, reader: ReplyReader | None) -> None:
        if outcome.status not in ("completed", "cancelled"):
            await self._error(frame_id, flow.outcome_error(outcome))
            return
        finish = outcome.finish_reason
        frame: dict[str, Any] = {"type": "done", "id": frame_id}
        if reader is not None:
            await self._send_pieces(frame_id, reader.finish())
            if reader.calls:
                frame["tool_calls"], finish = reader.calls, "tool_calls"
        await self.send_json({**frame, "finish_reason": finish, "usage": flow.usage_body(outcome),
                              "timings": outcome.timings()})  # fmt: skip

    async def _error(self, frame_id: str | None, error: APIError) -> None:
        if not error.admitted:
            counters.count_rejected(WS_ROUTE, error.status)
        body = {"message": str(error), "type": error.error_type, "param": error.param, "code": error.code}
        frame = {"type": "error", "id": frame_id, "error": body}
        if error.retry_after is not None:  # what HTTP sends as Retry-After (a 429, a 503)
            frame["retry_after"] = error.retry_after
        await self.send_json(frame)

    async def send_json(self, content: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(content, ensure_ascii=False))
