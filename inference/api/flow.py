"""The steps every generation endpoint shares: resolve, build the job, admit, submit, format.

HTTP views (OpenAI and native) and the websocket consumer all come through here, so
auth, limits and metering have one code path.
"""

import asyncio
import json
import math
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, StreamingHttpResponse

from inference import drain
from inference.api.errors import (
    REQUEST_ID_HEADER,
    APIError,
    InvalidRequest,
    NotFound,
    ServerError,
    Unavailable,
    as_api_error,
)
from inference.api.schemas import SamplingParams, parse_keep_alive
from inference.auth import Principal
from inference.engine import Job, JobHandle, Outcome, Sampling, Token, get_engine
from inference.engine.spec import ModelSpec
from inference.limits.admission import admit_within_limits
from inference.metering import Meter
from karen_host.logs import bind_for_rest
from models_app.selectors import resolve_model


def new_request_id() -> str:
    return "req_" + uuid.uuid4().hex


def client_address(request: HttpRequest) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


def _servable_spec(model_id: str) -> ModelSpec:
    return ModelSpec.from_model(resolve_model(model_id))


async def resolve_spec(principal: Principal, model_id: str) -> ModelSpec:
    """The ModelSpec for a servable model the principal may use (404 / 403 otherwise)."""
    try:
        spec = await sync_to_async(_servable_spec)(model_id)  # one thread hop for the query and the spec
    except LookupError as exc:
        raise NotFound(str(exc), param="model", code="model_not_found") from exc
    principal.require_model(spec.model_id)
    return spec


def engine_status_for(principal: Principal) -> dict[str, Any]:
    """The engine's status with only the models the token may use (loaded list and per-model load times)."""
    status = get_engine().status()
    if not principal.allowed_models:
        return status
    stats = dict(status["stats"])
    if "load_ms" in stats:
        stats["load_ms"] = {k: v for k, v in stats["load_ms"].items() if principal.may_use(k)}
    return {**status, "loaded": [m for m in status["loaded"] if principal.may_use(m["id"])], "stats": stats}


def build_sampling(
    params: SamplingParams,
    spec: ModelSpec,
    *,
    max_tokens: int | None = None,
    json_schema: dict | None = None,
    n_probs: int = -1,
) -> Sampling:
    """Request values over the model's configured defaults; only known fields reach llama.cpp."""
    d = spec.defaults
    stop = [params.stop] if isinstance(params.stop, str) else list(params.stop or [])
    return Sampling(
        temperature=d["temperature"] if params.temperature is None else params.temperature,
        top_p=d["top_p"] if params.top_p is None else params.top_p,
        top_k=d["top_k"] if params.top_k is None else params.top_k,
        min_p=0.05 if params.min_p is None else params.min_p,
        repeat_penalty=d["repeat_penalty"] if params.repeat_penalty is None else params.repeat_penalty,
        presence_penalty=params.presence_penalty or 0.0,
        frequency_penalty=params.frequency_penalty or 0.0,
        seed=params.seed,
        stop=[s for s in stop if s],
        logit_bias={int(k): v for k, v in (params.logit_bias or {}).items()},
        json_schema=json_schema,
        n_probs=n_probs,
        max_tokens=max_tokens or params.max_tokens or d["max_tokens"],
    )


def make_job(spec: ModelSpec, params: SamplingParams, **fields: Any) -> Job:
    return Job(model_id=spec.model_id, keep_alive_s=parse_keep_alive(params.keep_alive), **fields)


async def submit(
    *, principal: Principal, spec: ModelSpec, job: Job, endpoint: str, request_id: str, client: str | None
) -> JobHandle:
    """Apply the token's limits, admit (usage row) and queue the job; refusals become APIErrors, never billed."""
    if drain.draining():
        raise Unavailable("The server is shutting down; retry (another instance, or this one once it is back).",
                          code="shutting_down", retry_after=max(1, math.ceil(settings.DRAIN_TIMEOUT_S)))  # fmt: skip
    meter = Meter(request_id, endpoint, principal.token_id, spec.model_id, client, lane=principal.lane, job=job)
    # the fair queue's turns and lanes: minted tokens take their minter's turn, not one each
    job.owner, job.lane = principal.budget, principal.lane
    job.request_id, job.token_name = request_id, principal.name
    bind_for_rest(request_id=request_id, token=principal.name, model=spec.model_id, endpoint=endpoint)
    # Only a token that may unload models may shorten a model's keep-alive for everyone else.
    job.keep_alive_may_shorten = principal.has_scope("models:manage")
    admission = await admit_within_limits(principal, job, request_id)  # RateLimited (429) past a token limit
    try:
        handle = await get_engine().submit(
            spec, job, on_admit=admission.guard_admit(meter.admit), on_outcome=admission.settle_first(meter.finalize)
        )
        drain.track(handle)  # a graceful stop waits for it
        return handle
    except BaseException as exc:
        admission.abandon()  # refused, or the caller left: the reservation is undone unless admitted
        if isinstance(exc, Exception):
            raise as_api_error(exc) from exc  # counted as a refusal where it is answered
        raise


async def submit_choices(
    *,
    principal: Principal,
    spec: ModelSpec,
    jobs: list[Job],
    endpoint: str,
    request_id: str,
    client: str | None,
    same_prompt: bool = False,
) -> list[JobHandle]:
    """`submit` each choice's job (its own slot, limits and usage row: `request_id`, then `request_id-1`, ...).

    With `same_prompt` the others wait for the first one's first token: its prompt is then in
    its slot, and theirs is copied from there rather than computed again. A refusal of any
    choice cancels the ones already queued: a request is answered whole or not at all.
    """
    handles: list[JobHandle] = []
    try:
        for i, job in enumerate(jobs):
            if i == 1 and same_prompt and getattr(get_engine(), "shares_slots", False):
                await handles[0].first_ready()
                ended = handles[0].ended_early()
                if ended is not None:  # the first failed before its first token: so would the others
                    raise outcome_error(ended, request_id)
            row_id = request_id if i == 0 else f"{request_id}-{i}"
            handle = await submit(principal=principal, spec=spec, job=job, endpoint=endpoint, request_id=row_id,
                                  client=client)  # fmt: skip
            handles.append(handle)
    except BaseException:
        for handle in handles:
            handle.cancel()
        raise
    return handles


def outcome_error(outcome: Outcome, request_id: str | None = None) -> APIError:
    """The APIError for a job that ended in error or timeout (admitted: its ending is already counted).

    `request_id` names its usage row in the error response's X-Request-Id header.
    """
    if outcome.error_code in ("context_length_exceeded", "chat_template_error", "empty_prompt"):
        error: APIError = InvalidRequest(outcome.error, code=outcome.error_code)
    elif outcome.error_code == "grammar_too_slow":
        error = InvalidRequest(outcome.error, param="response_format", code=outcome.error_code)
    elif outcome.error_code == "scheduler_failed":
        error = Unavailable(outcome.error, code=outcome.error_code, retry_after=1)
    elif outcome.status == "timeout":
        error = Unavailable(outcome.error, code=outcome.error_code or "timeout", retry_after=5)
    elif outcome.status == "cancelled":
        error = Unavailable(outcome.error or "The request was cancelled.", code="cancelled")
    else:
        error = ServerError(outcome.error or "Generation failed.", code=outcome.error_code or "engine_error")
    error.admitted, error.request_id = True, request_id
    return error


async def first_event(handle: JobHandle, request_id: str) -> tuple[Token | None, AsyncIterator[Token | Outcome]]:
    """Wait for the first token so that a job failing before it can still get a status code.

    Returns (first token or None if the job ended at once, the remaining events).
    """
    events = handle.events()
    try:
        event = await anext(events)
    except BaseException:
        handle.cancel()
        raise
    if isinstance(event, Outcome):
        if event.status != "completed":
            raise outcome_error(event, request_id)

        async def ended() -> AsyncIterator[Token | Outcome]:
            yield event

        return None, ended()
    return event, events


async def collect(
    handle: JobHandle, request_id: str, logprobs: list[dict[str, Any]] | None = None
) -> tuple[str, Outcome]:
    """Run a job to its end for a non-streaming reply; cancel it if the caller goes away.

    `logprobs`, when given, receives the tokens' log-probability entries (Sampling.n_probs).
    """
    parts: list[str] = []
    try:
        async for event in handle.events():
            if isinstance(event, Token):
                parts.append(event.text)
                if logprobs is not None and event.logprobs:
                    logprobs.extend(event.logprobs)
            else:
                if event.status != "completed":
                    raise outcome_error(event, request_id)
                return "".join(parts), event
    finally:
        if not handle.outcome.done():
            handle.cancel()
    raise ServerError("The job ended without an outcome.")


async def first_events(handles: list[JobHandle], request_id: str) -> list[AsyncIterator[Token | Outcome]]:
    """`first_event` for each choice (all cancelled if one fails first), as whole event streams again."""
    streams: list[AsyncIterator[Token | Outcome]] = []
    try:
        for handle in handles:
            first, rest = await first_event(handle, request_id)
            streams.append(_chain(first, rest))
    except BaseException:
        for handle in handles:
            handle.cancel()
        raise
    return streams


async def _chain(first: Token | None, rest: AsyncIterator[Token | Outcome]) -> AsyncIterator[Token | Outcome]:
    if first is not None:
        yield first
    async for event in rest:
        yield event


async def merged(streams: list[AsyncIterator[Token | Outcome]]) -> AsyncIterator[tuple[int, Token | Outcome]]:
    """(choice index, event) from several choices' streams as they come; one stream needs no task."""
    if len(streams) == 1:
        async for event in streams[0]:
            yield 0, event
        return
    queue: asyncio.Queue[tuple[int, Token | Outcome | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[Token | Outcome]) -> None:
        try:
            async for event in stream:
                await queue.put((index, event))
        finally:
            await queue.put((index, None))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        open_streams = len(streams)
        while open_streams:
            index, event = await queue.get()
            if event is None:
                open_streams -= 1
            else:
                yield index, event
    finally:
        for task in tasks:
            task.cancel()  # each stream's own cleanup cancels its job
        await asyncio.gather(*tasks, return_exceptions=True)


async def collect_all(handles: list[JobHandle], request_id: str) -> list[tuple[str, Outcome, list[dict]]]:
    """`collect` every choice at once, each with its logprob entries; if one fails, the others are cancelled."""
    entries: list[list[dict[str, Any]]] = [[] for _ in handles]
    if len(handles) == 1:
        text, outcome = await collect(handles[0], request_id, entries[0])
        return [(text, outcome, entries[0])]
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(collect(h, request_id, e)) for h, e in zip(handles, entries, strict=True)]
    except BaseExceptionGroup as failed:  # the first choice's error is the answer (a 4xx/5xx of its own)
        raise failed.exceptions[0] from None
    return [(*task.result(), e) for task, e in zip(tasks, entries, strict=True)]


def sse_response(chunks: AsyncIterator[dict[str, Any]], request_id: str) -> StreamingHttpResponse:
    """OpenAI-style SSE: `data: {json}` per chunk, then the bare `data: [DONE]`."""

    async def frames() -> AsyncIterator[str]:
        async for chunk in chunks:
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
        yield "data: [DONE]\n\n"

    return _stream(frames(), "text/event-stream; charset=utf-8", request_id)


def ndjson_response(chunks: AsyncIterator[dict[str, Any]], request_id: str) -> StreamingHttpResponse:
    """Ollama-style NDJSON: one JSON object per line, the last one with `done: true` (or an `error`)."""

    async def lines() -> AsyncIterator[str]:
        async for chunk in chunks:
            yield json.dumps(chunk, ensure_ascii=False) + "\n"

    return _stream(lines(), "application/x-ndjson", request_id)


def _stream(body: AsyncIterator[str], content_type: str, request_id: str) -> StreamingHttpResponse:
    response = StreamingHttpResponse(body, content_type=content_type)
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    response[REQUEST_ID_HEADER] = request_id
    return response


def usage_body(*outcomes: Outcome) -> dict[str, Any]:
    """The outcomes' token counts summed, as OpenAI reports them (one request's choices, each in its own slot).

    `cached_tokens`: the prompt tokens whose KV was reused rather than computed.
    """
    prompt = sum(o.prompt_tokens for o in outcomes)
    completion = sum(o.completion_tokens for o in outcomes)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": sum(o.cached_tokens for o in outcomes)},
    }


def now() -> int:
    return int(time.time())
