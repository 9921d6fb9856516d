"""OpenAI-compatible /v1: models, chat completions, completions, embeddings."""

import base64
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse
from ninja import Router

from inference.api import flow
from inference.api.errors import APIError, InvalidRequest
from inference.api.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from inference.auth import BearerAuth
from inference.engine import Token
from models_app.selectors import servable_models

router = Router(tags=["OpenAI-compatible"])
_ERRORS = {400: dict, 401: dict, 403: dict, 404: dict, 413: dict, 429: dict, 500: dict, 503: dict}


def _json(body: dict[str, Any], request_id: str) -> JsonResponse:
    response = JsonResponse(body, json_dumps_params={"ensure_ascii": False})
    response[flow.REQUEST_ID_HEADER] = request_id
    return response


@router.get("/models", auth=BearerAuth("models:read"), response={200: dict, **_ERRORS})
async def list_models(request: HttpRequest) -> dict[str, Any]:
    """The models this token may use, each once, with the other names it answers to in `aliases`."""
    principal = request.auth
    loaded = {m["id"] for m in flow.get_engine().status()["loaded"]}
    models = [m for m in await sync_to_async(servable_models)() if principal.may_use(m.id)]
    data = []
    for m in models:
        entry = {
            "id": m.id,
            "object": "model",
            "created": int(m.created_at.timestamp()),
            "owned_by": "karen-host",
            "name": m.name,
            "loaded": m.id in loaded,
            "context_length": m.context_length,
            "quantization": m.quantization,
        }
        data.append({**entry, "aliases": [a.name for a in m.aliases.all()]})  # the Ollama name first
    return {"object": "list", "data": data}


@router.post("/chat/completions", auth=BearerAuth("inference"), response={200: dict, **_ERRORS})
async def chat_completions(request: HttpRequest, body: ChatCompletionRequest) -> HttpResponse:
    """Chat with a model through its own chat template; `stream: true` for SSE."""
    spec = await flow.resolve_spec(request.auth, body.model)
    schema = None
    if body.response_format and body.response_format.type == "json_object":
        schema = {}
    elif body.response_format and body.response_format.type == "json_schema":
        schema = body.response_format.json_schema.schema_ or {}
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": _text(m.content)} for m in body.messages
    ]
    sampling = flow.build_sampling(body, spec, max_tokens=body.max_completion_tokens, json_schema=schema)
    job = flow.make_job(spec, body, kind="chat", messages=messages, sampling=sampling)
    request_id = flow.new_request_id()
    handle = await flow.submit(
        principal=request.auth, spec=spec, job=job, endpoint="chat.completions",
        request_id=request_id, client=flow.client_address(request),
    )  # fmt: skip
    base = {"id": f"chatcmpl-{request_id[4:]}", "created": flow.now(), "model": spec.model_id}
    if not body.stream:
        text, outcome = await flow.collect(handle, request_id)
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": outcome.finish_reason}
        return _json(
            {**base, "object": "chat.completion", "choices": [choice], "usage": flow.usage_body(outcome),
             "timings": outcome.timings()},
            request_id,
        )  # fmt: skip
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    first, rest = await flow.first_event(handle, request_id)
    chunk = {**base, "object": "chat.completion.chunk", "system_fingerprint": None}

    def delta(content: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        out = {**chunk, "choices": [{"index": 0, "delta": content, "logprobs": None, "finish_reason": finish}]}
        if include_usage:
            out["usage"] = None
        return out

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        yield delta({"role": "assistant", "content": first.text if first else ""})
        async for event in rest:
            if isinstance(event, Token):
                yield delta({"content": event.text})
            elif event.status != "completed":
                yield _stream_error(flow.outcome_error(event))
            else:
                yield delta({}, event.finish_reason)
                if include_usage:
                    yield {**chunk, "choices": [], "usage": flow.usage_body(event)}

    return flow.sse_response(chunks(), request_id)


@router.post("/completions", auth=BearerAuth("inference"), response={200: dict, **_ERRORS})
async def completions(request: HttpRequest, body: CompletionRequest) -> HttpResponse:
    """Continue a raw prompt (no chat template); `stream: true` for SSE."""
    spec = await flow.resolve_spec(request.auth, body.model)
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
    job = flow.make_job(spec, body, kind="completion", prompt=prompt, sampling=flow.build_sampling(body, spec))
    request_id = flow.new_request_id()
    handle = await flow.submit(
        principal=request.auth, spec=spec, job=job, endpoint="completions",
        request_id=request_id, client=flow.client_address(request),
    )  # fmt: skip
    base = {"id": f"cmpl-{request_id[4:]}", "object": "text_completion", "created": flow.now(), "model": spec.model_id}
    if not body.stream:
        text, outcome = await flow.collect(handle, request_id)
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": outcome.finish_reason}
        return _json({**base, "choices": [choice], "usage": flow.usage_body(outcome)}, request_id)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    first, rest = await flow.first_event(handle, request_id)

    def piece(text: str, finish: str | None = None) -> dict[str, Any]:
        out = {**base, "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}
        if include_usage:
            out["usage"] = None
        return out

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        if first:
            yield piece(first.text)
        async for event in rest:
            if isinstance(event, Token):
                yield piece(event.text)
            elif event.status != "completed":
                yield _stream_error(flow.outcome_error(event))
            else:
                yield piece("", event.finish_reason)
                if include_usage:
                    yield {**base, "choices": [], "usage": flow.usage_body(event)}

    return flow.sse_response(chunks(), request_id)


@router.post("/embeddings", auth=BearerAuth("inference"), response={200: dict, **_ERRORS})
async def embeddings(request: HttpRequest, body: EmbeddingRequest) -> HttpResponse:
    """Mean-pooled, L2-normalized embeddings; `encoding_format` float or base64 (float32)."""
    spec = await flow.resolve_spec(request.auth, body.model)
    inputs = [body.input] if isinstance(body.input, str) else body.input
    if any(not text for text in inputs):
        raise InvalidRequest("Every input must be a non-empty string.", param="input", code="empty_input")
    job = flow.make_job(spec, body, kind="embedding", inputs=inputs)
    request_id = flow.new_request_id()
    handle = await flow.submit(
        principal=request.auth, spec=spec, job=job, endpoint="embeddings",
        request_id=request_id, client=flow.client_address(request),
    )  # fmt: skip
    _, outcome = await flow.collect(handle, request_id)
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(vector, body.encoding_format)}
        for i, vector in enumerate(outcome.embeddings)
    ]
    usage = {"prompt_tokens": outcome.prompt_tokens, "total_tokens": outcome.prompt_tokens}
    return _json({"object": "list", "data": data, "model": spec.model_id, "usage": usage}, request_id)


def _text(content: Any) -> str | list[dict[str, str]]:
    if content is None or isinstance(content, str):
        return content or ""
    return [{"type": part.type, "text": part.text} for part in content]


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return vector


def _stream_error(error: APIError) -> dict[str, Any]:
    """An error met mid-stream: the status line is sent, so it travels as a data frame."""
    return {"error": {"message": str(error), "type": error.error_type, "param": error.param, "code": error.code}}
