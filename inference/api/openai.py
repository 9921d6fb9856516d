"""OpenAI-compatible /v1: models, chat completions, completions, embeddings."""

import base64
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse
from ninja import Router

from inference.api import flow
from inference.api.chat import choice_jobs, prepare_chat
from inference.api.errors import APIError, InvalidRequest, NotFound
from inference.api.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from inference.auth import BearerAuth
from inference.engine import Outcome, Token
from models_app.models import LLMModel
from models_app.selectors import resolve_model, servable_models

router = Router(tags=["OpenAI-compatible"])
_ERRORS = {400: dict, 401: dict, 403: dict, 404: dict, 413: dict, 429: dict, 500: dict, 503: dict}


def _json(body: dict[str, Any], request_id: str) -> JsonResponse:
    response = JsonResponse(body, json_dumps_params={"ensure_ascii": False})
    response[flow.REQUEST_ID_HEADER] = request_id
    return response


def _model_entry(m: LLMModel, loaded: set[str]) -> dict[str, Any]:
    return {
        "id": m.id,
        "object": "model",
        "created": int(m.created_at.timestamp()),
        "owned_by": "karen-host",
        "name": m.name,
        "loaded": m.id in loaded,
        "context_length": m.context_length,
        "quantization": m.quantization,
        "aliases": [a.name for a in m.aliases.all()],  # the Ollama name first
    }


def _loaded() -> set[str]:
    return {m["id"] for m in flow.get_engine().status()["loaded"]}


@router.get("/models", auth=BearerAuth("models:read"), response={200: dict, **_ERRORS})
async def list_models(request: HttpRequest) -> dict[str, Any]:
    """The models this token may use, each once, with the other names it answers to in `aliases`."""
    principal = request.auth
    loaded = _loaded()
    models = [m for m in await sync_to_async(servable_models)() if principal.may_use(m.id)]
    return {"object": "list", "data": [_model_entry(m, loaded) for m in models]}


def _servable_model(name: str) -> LLMModel:
    model = resolve_model(name)
    return LLMModel.objects.prefetch_related("aliases").get(pk=model.pk)


@router.get("/models/{path:model}", auth=BearerAuth("models:read"), response={200: dict, **_ERRORS})
async def retrieve_model(request: HttpRequest, model: str) -> dict[str, Any]:
    """One model by its id or an alias (the openai SDK's `models.retrieve`); 404 if it is not servable."""
    try:
        found = await sync_to_async(_servable_model)(model)
    except LookupError as exc:
        raise NotFound(str(exc), param="model", code="model_not_found") from exc
    request.auth.require_model(found.id)
    return _model_entry(found, _loaded())


@router.post("/chat/completions", auth=BearerAuth("inference"), response={200: dict, **_ERRORS})
async def chat_completions(request: HttpRequest, body: ChatCompletionRequest) -> HttpResponse:
    """Chat with a model through its own chat template: tools, reasoning, `n` choices; `stream: true` for SSE."""
    spec = await flow.resolve_spec(request.auth, body.model)
    setup = await prepare_chat(
        spec, body, body.messages, tools=body.tools, tool_choice=body.tool_choice,
        parallel_tool_calls=body.parallel_tool_calls, response_format=body.response_format,
        chat_template_kwargs=body.chat_template_kwargs, reasoning_effort=body.reasoning_effort,
        max_tokens=body.max_completion_tokens, n_probs=body.n_probs,
    )  # fmt: skip
    request_id = flow.new_request_id()
    handles = await flow.submit_choices(
        principal=request.auth, spec=spec, jobs=choice_jobs(setup.job, body.n), endpoint="chat.completions",
        request_id=request_id, client=flow.client_address(request), same_prompt=True,
    )  # fmt: skip
    base = {"id": f"chatcmpl-{request_id[4:]}", "created": flow.now(), "model": spec.model_id}
    if not body.stream:
        results = await flow.collect_all(handles, request_id)
        choices, reasoning_tokens = [], 0
        for index, (text, outcome, entries) in enumerate(results):
            reader = setup.reader()
            pieces = reader.feed(text) + reader.finish()
            content = "".join(t for kind, t in pieces if kind == "content")
            reasoning = "".join(t for kind, t in pieces if kind == "reasoning")
            message: dict[str, Any] = {"role": "assistant", "content": content if content or not reader.calls else None}
            if reasoning:
                message["reasoning_content"] = reasoning
                reasoning_tokens += _share(outcome.completion_tokens, reasoning, text)
            if reader.calls:
                message["tool_calls"] = reader.calls
            finish = "tool_calls" if reader.calls else outcome.finish_reason
            logprobs = _chat_logprobs(entries) if body.logprobs else None
            choices.append({"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish})
        outcomes = [outcome for _, outcome, _ in results]
        return _json(
            {**base, "object": "chat.completion", "choices": choices,
             "usage": _usage(outcomes, reasoning_tokens), "timings": outcomes[0].timings()},
            request_id,
        )  # fmt: skip
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    streams = await flow.first_events(handles, request_id)
    chunk = {**base, "object": "chat.completion.chunk", "system_fingerprint": None}

    def delta(
        index: int, content: dict[str, Any], finish: str | None = None, entries: list | None = None
    ) -> dict[str, Any]:
        logprobs = _chat_logprobs(entries) if entries else None
        out = {**chunk, "choices": [{"index": index, "delta": content, "logprobs": logprobs, "finish_reason": finish}]}
        if include_usage:
            out["usage"] = None
        return out

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        readers = [setup.reader() for _ in handles]
        seen = ["" for _ in handles]
        reasoning = [0 for _ in handles]
        outcomes: list[Outcome] = []
        for index in range(len(handles)):
            yield delta(index, {"role": "assistant", "content": ""})
        async with contextlib.aclosing(flow.merged(streams)) as events:
            async for index, event in events:
                reader = readers[index]
                if isinstance(event, Token):
                    seen[index] += event.text
                    pieces = reader.feed(event.text)
                    entries = event.logprobs if body.logprobs else None
                    if entries and not pieces:  # the text is held back (a possible tag): its tokens' logprobs go now
                        yield delta(index, {}, entries=entries)
                    for i, (kind, text) in enumerate(pieces):
                        field = "reasoning_content" if kind == "reasoning" else "content"
                        yield delta(index, {field: text}, entries=entries if i == 0 else None)
                    continue
                if event.status != "completed":
                    yield _stream_error(flow.outcome_error(event))
                    return
                for kind, text in reader.finish():
                    yield delta(index, {"reasoning_content" if kind == "reasoning" else "content": text})
                for i, call in enumerate(reader.calls):  # the id and name once, then the arguments
                    head = {"index": i, "id": call["id"], "type": "function",
                            "function": {"name": call["function"]["name"], "arguments": ""}}  # fmt: skip
                    yield delta(index, {"tool_calls": [head]})
                    yield delta(
                        index, {"tool_calls": [{"index": i, "function": {"arguments": call["function"]["arguments"]}}]}
                    )
                yield delta(index, {}, "tool_calls" if reader.calls else event.finish_reason)
                reasoning[index] = _share(event.completion_tokens, "".join(reader.reasoning_parts), seen[index])
                outcomes.append(event)
        if include_usage:
            yield {**chunk, "choices": [], "usage": _usage(outcomes, sum(reasoning))}

    return flow.sse_response(chunks(), request_id)


def _token_text(entry: dict[str, Any]) -> str:
    return bytes(entry["bytes"]).decode("utf-8", "replace")


def _chat_logprobs(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """OpenAI's chat `logprobs`: each token with its bytes, log-probability and the likeliest alternatives."""

    def one(entry: dict[str, Any]) -> dict[str, Any]:
        return {"token": _token_text(entry), "logprob": entry["logprob"], "bytes": entry["bytes"]}

    return {"content": [{**one(e), "top_logprobs": [one(t) for t in e["top"]]} for e in entries], "refusal": None}


def _completion_logprobs(entries: list[dict[str, Any]], offset: int = 0) -> dict[str, Any]:
    """The completions API's (legacy) `logprobs`: parallel lists, `text_offset` in characters."""
    tokens = [_token_text(e) for e in entries]
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{_token_text(t): t["logprob"] for t in e["top"]} for e in entries],
        "text_offset": offsets,
    }


def _share(tokens: int, part: str, whole: str) -> int:
    """The tokens of `part` of an output of `tokens` tokens, by its share of the characters."""
    return round(tokens * len(part) / len(whole)) if whole else 0


def _usage(outcomes: list[Outcome], reasoning_tokens: int | None = None) -> dict[str, Any]:
    """Every choice's prompt and completion, as metered, and the completion's reasoning tokens when asked."""
    usage = flow.usage_body(*outcomes)
    if reasoning_tokens is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    return usage


@router.post("/completions", auth=BearerAuth("inference"), response={200: dict, **_ERRORS})
async def completions(request: HttpRequest, body: CompletionRequest) -> HttpResponse:
    """Continue raw prompts (text or token ids, no chat template), `n` choices each; `stream: true` for SSE."""
    spec = await flow.resolve_spec(request.auth, body.model)
    jobs = []
    for prompt in body.prompts():  # choice index = prompt index * n + choice (OpenAI's order)
        text = {"prompt": prompt} if isinstance(prompt, str) else {"prompt_tokens": prompt}
        sampling = flow.build_sampling(body, spec, n_probs=body.n_probs)
        job = flow.make_job(spec, body, kind="completion", sampling=sampling, **text)
        jobs += choice_jobs(job, body.n)
    request_id = flow.new_request_id()
    handles = await flow.submit_choices(
        principal=request.auth, spec=spec, jobs=jobs, endpoint="completions",
        request_id=request_id, client=flow.client_address(request), same_prompt=len(body.prompts()) == 1,
    )  # fmt: skip
    base = {"id": f"cmpl-{request_id[4:]}", "object": "text_completion", "created": flow.now(), "model": spec.model_id}
    if not body.stream:
        results = await flow.collect_all(handles, request_id)
        choices = [
            {"index": i, "text": text, "finish_reason": outcome.finish_reason,
             "logprobs": _completion_logprobs(entries) if body.logprobs is not None else None}
            for i, (text, outcome, entries) in enumerate(results)
        ]  # fmt: skip
        return _json({**base, "choices": choices, "usage": _usage([o for _, o, _ in results])},
                     request_id)  # fmt: skip
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    streams = await flow.first_events(handles, request_id)

    offsets = [0 for _ in handles]

    def piece(index: int, text: str, finish: str | None = None, entries: list | None = None) -> dict[str, Any]:
        logprobs = None
        if body.logprobs is not None and entries:
            logprobs = _completion_logprobs(entries, offsets[index])
            offsets[index] += len(text)
        out = {**base, "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}]}
        if include_usage:
            out["usage"] = None
        return out

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        outcomes: dict[int, Outcome] = {}
        async with contextlib.aclosing(flow.merged(streams)) as events:
            async for index, event in events:
                if isinstance(event, Token):
                    yield piece(index, event.text, entries=event.logprobs)
                elif event.status != "completed":
                    yield _stream_error(flow.outcome_error(event))
                    return
                else:
                    outcomes[index] = event
                    yield piece(index, "", event.finish_reason)
        if include_usage:
            yield {**base, "choices": [], "usage": _usage([outcomes[i] for i in sorted(outcomes)])}

    return flow.sse_response(chunks(), request_id)


@router.post("/embeddings", auth=BearerAuth("inference"), response={200: dict, **_ERRORS})
async def embeddings(request: HttpRequest, body: EmbeddingRequest) -> HttpResponse:
    """Mean-pooled, L2-normalized embeddings; `encoding_format` float or base64 (float32)."""
    spec = await flow.resolve_spec(request.auth, body.model)
    single = isinstance(body.input, str) or isinstance(body.input[0], int)
    inputs = [body.input] if single else list(body.input)
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
