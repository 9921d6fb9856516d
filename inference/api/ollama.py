"""Ollama's API at /api: chat, generate, embed, embeddings, and the model listings (ollama_models.py).

Same auth, limits, engine and metering as /v1 (all through flow.py); only the shapes
differ: NDJSON streams by default, durations in nanoseconds, errors as `{"error": "..."}`.
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from ninja import Router

from inference.api import flow
from inference.api.errors import InvalidRequest, NotFound, PermissionDenied, as_api_error
from inference.api.ollama_schemas import (
    OllamaChatRequest,
    OllamaEmbeddingsRequest,
    OllamaEmbedRequest,
    OllamaGenerateRequest,
    OllamaOptions,
    parse_options,
)
from inference.api.schemas import parse_keep_alive
from inference.api.thinking import ThinkingSplitter, opens_thinking
from inference.api.tool_formats import Plan, ReplyReader, plan_for
from inference.auth import BearerAuth, Principal
from inference.engine import Outcome, Token, get_engine
from inference.engine.spec import ModelSpec
from models_app.chat_templates import supports_thinking
from models_app.selectors import UnknownModel

router = Router(tags=["Ollama-compatible"])
ERRORS = {400: dict, 401: dict, 403: dict, 404: dict, 409: dict, 413: dict, 429: dict, 500: dict, 503: dict}


def timestamp(moment: datetime | None = None) -> str:
    """`moment` (default: now) as Ollama writes times: RFC 3339 in UTC."""
    return (moment or datetime.now(UTC)).isoformat().replace("+00:00", "Z")


async def resolve(principal: Principal, name: str) -> ModelSpec:
    """The spec for a model name (id or alias) the principal may use; Ollama's messages for a missing one."""
    if not name:
        raise InvalidRequest("model is required", param="model", code="model_required")
    try:
        return await flow.resolve_spec(principal, name)
    except NotFound as exc:
        if isinstance(exc.__cause__, UnknownModel):
            raise NotFound(
                f'model "{name}" not found; GET /api/tags lists this server\'s models '
                "(it does not pull models: put a GGUF file in MODELS_DIR, or register it in the admin)",
                param="model",
                code="model_not_found",
            ) from exc
        raise


def _schema_of(fmt: str | dict[str, Any] | None) -> dict[str, Any] | None:
    if fmt == "json":
        return {}
    if isinstance(fmt, dict):
        return fmt
    return None


def _sampling(spec: ModelSpec, options: OllamaOptions, schema: dict[str, Any] | None) -> Any:
    per_request_ctx = spec.n_ctx // max(1, int(spec.llama_kwargs.get("n_parallel") or 1))
    max_tokens = options.num_predict
    if max_tokens in (-1, -2):  # "until it stops" / "fill the context": as far as the server's cap allows
        max_tokens = settings.MAX_TOKENS_LIMIT
    sampling = flow.build_sampling(options.sampling, spec, max_tokens=max_tokens, json_schema=schema)
    if options.repeat_last_n is not None:
        # llama.cpp keeps a history buffer of this many tokens per request: past the context it only costs memory
        if options.repeat_last_n > per_request_ctx:
            raise InvalidRequest(f"options.repeat_last_n is at most {per_request_ctx}, the context each request to "
                                 f"{spec.model_id} gets (-1 means that)", param="options.repeat_last_n",
                                 code="invalid_value")  # fmt: skip
        sampling.penalty_last_n = per_request_ctx if options.repeat_last_n == -1 else options.repeat_last_n
    sampling.typical_p = options.typical_p
    return sampling


async def _thinking(spec: ModelSpec, name: str, think: Any) -> tuple[bool | None, ThinkingSplitter | None]:
    """(the template's `enable_thinking`, a splitter for the output) for Ollama's `think`.

    Unset: the template's default, output as it comes. False: thinking off where the template
    can turn it off. True: thinking on, returned apart from the answer (`thinking` fields).
    """
    capable = supports_thinking(spec.chat_template)
    if think is None or think is False:
        return (False if capable and think is False else None), None
    if not capable:
        raise InvalidRequest(f'"{name}" does not support thinking', param="think", code="unsupported_feature")
    if think is not True:
        raise InvalidRequest(f"think levels ({think!r}) are for models that take a reasoning effort; "
                             f'"{name}" thinks or does not: send true or false', param="think",
                             code="unsupported_feature")  # fmt: skip
    inside = await opens_thinking(spec.chat_template, spec.bos_token, spec.eos_token, True)
    return True, ThinkingSplitter(inside=inside)


def durations(outcome: Outcome, load_ns: int) -> dict[str, int]:
    """Ollama's counts and timings; durations in nanoseconds."""
    return {
        "total_duration": int(outcome.duration_ms * 1e6),
        "load_duration": load_ns,
        "prompt_eval_count": outcome.prompt_tokens,
        "prompt_eval_duration": int(outcome.prompt_ms * 1e6),
        "eval_count": outcome.completion_tokens,
        "eval_duration": int(outcome.decode_ms * 1e6),
    }


async def _submit(request: HttpRequest, spec: ModelSpec, job: Any, endpoint: str) -> tuple[Any, str, int]:
    """Admit and queue the job; returns (handle, request id, nanoseconds it took: the model's load, if any)."""
    request_id = flow.new_request_id()
    started = time.perf_counter_ns()
    handle = await flow.submit(
        principal=request.auth, spec=spec, job=job, endpoint=endpoint,
        request_id=request_id, client=flow.client_address(request),
    )  # fmt: skip
    return handle, request_id, time.perf_counter_ns() - started


def _json(body: dict[str, Any], request_id: str | None = None, ignored: list[str] | None = None) -> JsonResponse:
    response = JsonResponse(body, json_dumps_params={"ensure_ascii": False})
    return _headers(response, request_id, ignored)


def _headers(response: HttpResponse, request_id: str | None, ignored: list[str] | None) -> HttpResponse:
    if request_id:
        response[flow.REQUEST_ID_HEADER] = request_id
    if ignored:
        # Load options are the model's config (admin), shared by every client of the model.
        response["X-Ignored-Options"] = ",".join(ignored)
    return response


async def _reply(
    request: HttpRequest,
    *,
    spec: ModelSpec,
    job: Any,
    endpoint: str,
    stream: bool,
    ignored: list[str],
    piece: Callable[[str, str | None], dict[str, Any]],
    splitter: ThinkingSplitter | None = None,
) -> HttpResponse:
    """Run a chat or generate job and answer as Ollama does: one object, or NDJSON ending with `done: true`.

    `piece(content, thinking)` is the endpoint's object for some output (`message` or `response`,
    and `thinking` unless None) without `done`; with a `splitter`, thinking goes apart from content.
    """
    handle, request_id, load_ns = await _submit(request, spec, job, endpoint)

    def final(outcome: Outcome, content: str, thinking: str | None) -> dict[str, Any]:
        counts = durations(outcome, load_ns)
        return {**piece(content, thinking), "done": True, "done_reason": outcome.finish_reason, **counts}

    if not stream:
        text, outcome = await flow.collect(handle, request_id)
        if splitter is None:
            return _json(final(outcome, text, None), request_id, ignored)
        thinking, content = splitter.split(text)
        return _json(final(outcome, content, thinking), request_id, ignored)
    first, rest = await flow.first_event(handle, request_id)

    def output(text: str) -> dict[str, Any] | None:
        if splitter is None:
            return {**piece(text, None), "done": False}
        thinking, content = splitter.feed(text)
        return {**piece(content, thinking or None), "done": False} if thinking or content else None

    async def lines() -> AsyncIterator[dict[str, Any]]:
        events = [first] if first else []
        async for event in _chain(events, rest):
            if isinstance(event, Token):
                if (line := output(event.text)) is not None:
                    yield line
            elif event.status != "completed":
                yield {"error": str(flow.outcome_error(event))}  # mid-stream: the 200 is already sent
            else:
                thinking, content = splitter.finish() if splitter else ("", "")
                if thinking or content:
                    yield {**piece(content, thinking or None), "done": False}
                yield final(event, "", None)

    return _headers(flow.ndjson_response(lines(), request_id), None, ignored)


async def _tool_reply(
    request: HttpRequest,
    *,
    spec: ModelSpec,
    job: Any,
    name: str,
    stream: bool,
    ignored: list[str],
    plan: Plan,
) -> HttpResponse:
    """A chat with tools: the whole reply tells a call from an answer, so it comes as one message, then `done`."""
    handle, request_id, load_ns = await _submit(request, spec, job, "ollama.chat")
    text, outcome = await flow.collect(handle, request_id)
    reader = ReplyReader(plan, None)
    content = "".join(t for _, t in reader.feed(text) + reader.finish())
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reader.calls:  # Ollama's shape: arguments as an object
        message["tool_calls"] = [
            {"function": {"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}}
            for c in reader.calls
        ]
    done = {"done": True, "done_reason": outcome.finish_reason, **durations(outcome, load_ns)}
    if not stream:
        return _json({"model": name, "created_at": timestamp(), "message": message, **done}, request_id, ignored)

    async def lines() -> AsyncIterator[dict[str, Any]]:
        yield {"model": name, "created_at": timestamp(), "message": message, "done": False}
        yield {"model": name, "created_at": timestamp(), "message": {"role": "assistant", "content": ""}, **done}

    return _headers(flow.ndjson_response(lines(), request_id), None, ignored)


async def _chain(first: list[Token], rest: AsyncIterator[Token | Outcome]) -> AsyncIterator[Token | Outcome]:
    for event in first:
        yield event
    async for event in rest:
        yield event


async def _load_or_unload(request: HttpRequest, spec: ModelSpec, keep_alive: Any, done: dict[str, Any]) -> JsonResponse:
    """A request with nothing to generate loads the model, or unloads it with `keep_alive: 0`, as Ollama does."""
    principal: Principal = request.auth
    keep_alive_s = parse_keep_alive(keep_alive)
    engine = get_engine()
    try:
        if keep_alive_s == 0:
            principal.require_scope("models:manage")
            await engine.unload(spec.model_id)
            return _json({**done, "done": True, "done_reason": "unload"})
        loaded = any(m["id"] == spec.model_id for m in engine.status()["loaded"])
        if not loaded and not principal.has_scope("models:manage"):
            raise PermissionDenied(
                f"Loading {spec.model_id} without a prompt needs the 'models:manage' scope; "
                "a request with a prompt loads it for any token that may use it.",
                code="insufficient_scope",
            )
        await engine.load(spec, keep_alive_s=keep_alive_s, may_shorten=principal.has_scope("models:manage"))
    except Exception as exc:
        raise as_api_error(exc) from exc
    return _json({**done, "done": True, "done_reason": "load"})


@router.post("/chat", auth=BearerAuth("inference"), response={200: dict, **ERRORS})
async def chat(request: HttpRequest, body: OllamaChatRequest) -> HttpResponse:
    """Chat through the model's own template; NDJSON unless `stream: false`."""
    spec = await resolve(request.auth, body.model)
    message = {"role": "assistant", "content": ""}
    if not body.messages:
        return await _load_or_unload(request, spec, body.keep_alive, {"model": body.model, "created_at": timestamp(),
                                                                       "message": message})  # fmt: skip
    # Ollama has no tool_choice: tools are "auto", in the template family's own format (tool_formats.py)
    plan = await asyncio.to_thread(plan_for, spec.chat_template, body.tools, "auto")
    tools = plan.tools
    for field, clash in (("format", body.format), ("think", body.think)):
        if tools and clash:
            raise InvalidRequest(f"{field} and tools both shape the reply; send one of them", param=field,
                                 code="invalid_value")  # fmt: skip
    enable_thinking, splitter = await _thinking(spec, body.model, body.think)
    for i, m in enumerate(body.messages):
        if m.images:
            raise InvalidRequest(f'"{body.model}" does not support images', param=f"messages.{i}.images",
                                 code="unsupported_feature")  # fmt: skip
    # earlier calls as the template (or, the generic way, the JSON the model wrote them in) shows them
    messages = plan.messages(
        [m.model_dump(include={"role", "content", "tool_calls", "tool_name"}) for m in body.messages],
        spec.system_prompt,
    )
    options = parse_options(body.options, body.keep_alive)
    sampling = _sampling(spec, options, _schema_of(body.format))
    plan.constrain(sampling)
    job = flow.make_job(spec, options.sampling, kind="chat", messages=messages, sampling=sampling,
                        enable_thinking=enable_thinking, tools=plan.template_tools())  # fmt: skip
    if tools:
        return await _tool_reply(request, spec=spec, job=job, name=body.model, stream=body.stream,
                                 ignored=options.ignored, plan=plan)  # fmt: skip

    def piece(content: str, thinking: str | None) -> dict[str, Any]:
        message = {"role": "assistant", "content": content}
        if thinking is not None:
            message["thinking"] = thinking
        return {"model": body.model, "created_at": timestamp(), "message": message}

    return await _reply(request, spec=spec, job=job, endpoint="ollama.chat", stream=body.stream,
                        ignored=options.ignored, piece=piece, splitter=splitter)  # fmt: skip


@router.post("/generate", auth=BearerAuth("inference"), response={200: dict, **ERRORS})
async def generate(request: HttpRequest, body: OllamaGenerateRequest) -> HttpResponse:
    """Answer `prompt` through the chat template (or as-is with `raw: true`); NDJSON unless `stream: false`."""
    spec = await resolve(request.auth, body.model)
    if not body.prompt and not body.system and not body.template:
        return await _load_or_unload(request, spec, body.keep_alive, {"model": body.model, "created_at": timestamp(),
                                                                       "response": ""})  # fmt: skip
    if body.raw and body.think:
        raise InvalidRequest("think has no effect with raw: true (no template); drop one", param="think",
                             code="invalid_value")  # fmt: skip
    enable_thinking, splitter = await _thinking(spec, body.model, body.think)
    for field, value, why in (
        ("images", body.images, f'"{body.model}" does not support images'),
        ("suffix", body.suffix, "suffix (fill-in-the-middle) is not supported by this server"),
        ("context", body.context, "context is not supported by this server; send the conversation to /api/chat"),
        ("template", body.template, "template overrides (Go templates) are not supported: the model's own chat "
                                    "template is used; send raw: true with a formatted prompt instead"),
    ):  # fmt: skip
        if value:
            raise InvalidRequest(why, param=field, code="unsupported_feature")
    options = parse_options(body.options, body.keep_alive)
    sampling = _sampling(spec, options, _schema_of(body.format))
    if body.raw:
        if body.system:
            raise InvalidRequest("system has no effect with raw: true; put it in the prompt", param="system",
                                 code="invalid_value")  # fmt: skip
        job = flow.make_job(spec, options.sampling, kind="completion", prompt=body.prompt, sampling=sampling)
    else:
        messages = [{"role": "system", "content": body.system}] if body.system else []
        messages.append({"role": "user", "content": body.prompt})
        job = flow.make_job(spec, options.sampling, kind="chat", messages=messages, sampling=sampling,
                            enable_thinking=enable_thinking)  # fmt: skip

    def piece(content: str, thinking: str | None) -> dict[str, Any]:
        out = {"model": body.model, "created_at": timestamp(), "response": content}
        return out if thinking is None else {**out, "thinking": thinking}

    return await _reply(request, spec=spec, job=job, endpoint="ollama.generate", stream=body.stream,
                        ignored=options.ignored, piece=piece, splitter=splitter)  # fmt: skip


async def _embed(
    request: HttpRequest, spec: ModelSpec, inputs: list[str], *, options: OllamaOptions, truncate: bool, endpoint: str
) -> tuple[Outcome, str, int]:
    """Embed each input as one metered request: (outcome, request id, load nanoseconds)."""
    if not inputs or any(not text for text in inputs):
        raise InvalidRequest("input is required: a non-empty string, or a list of them", param="input",
                             code="empty_input")  # fmt: skip
    job = flow.make_job(spec, options.sampling, kind="embedding", inputs=inputs, truncate=truncate)
    handle, request_id, load_ns = await _submit(request, spec, job, endpoint)
    _, outcome = await flow.collect(handle, request_id)
    return outcome, request_id, load_ns


@router.post("/embed", auth=BearerAuth("inference"), response={200: dict, **ERRORS})
async def embed(request: HttpRequest, body: OllamaEmbedRequest) -> HttpResponse:
    """L2-normalised embeddings of each input; `truncate: false` refuses an input longer than the context."""
    spec = await resolve(request.auth, body.model)
    if body.dimensions is not None:
        raise InvalidRequest("dimensions is not supported; the model's own embedding size is returned",
                             param="dimensions", code="unsupported_feature")  # fmt: skip
    options = parse_options(body.options, body.keep_alive)
    inputs = [body.input] if isinstance(body.input, str) else body.input
    outcome, request_id, load_ns = await _embed(
        request, spec, inputs, options=options, truncate=body.truncate, endpoint="ollama.embed"
    )
    return _json(
        {"model": body.model, "embeddings": outcome.embeddings, "total_duration": int(outcome.duration_ms * 1e6),
         "load_duration": load_ns, "prompt_eval_count": outcome.prompt_tokens},
        request_id,
        options.ignored,
    )  # fmt: skip


@router.post("/embeddings", auth=BearerAuth("inference"), response={200: dict, **ERRORS})
async def embeddings(request: HttpRequest, body: OllamaEmbeddingsRequest) -> HttpResponse:
    """The older single-prompt embedding endpoint (vectors here are L2-normalised, as /api/embed's are)."""
    spec = await resolve(request.auth, body.model)
    options = parse_options(body.options, body.keep_alive)
    outcome, request_id, _ = await _embed(
        request, spec, [body.prompt], options=options, truncate=True, endpoint="ollama.embeddings"
    )
    return _json({"embedding": outcome.embeddings[0]}, request_id, options.ignored)
