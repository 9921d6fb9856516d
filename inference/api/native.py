"""The original plan's native endpoints, kept for existing KAREN installs.

Same auth, engine and metering as /v1; only the request and response shapes differ.
"""

import os
import time
from collections.abc import AsyncIterator
from typing import Any

import psutil
from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse
from ninja import Router, Status

from inference.api import flow
from inference.api.errors import NotFound, Unavailable, as_api_error
from inference.api.metrics import render as render_metrics
from inference.api.schemas import LoadRequest, NativeInferenceRequest, parse_keep_alive
from inference.auth import BearerAuth, Principal
from inference.engine import Token, get_engine
from inference.metering import counters
from inference.readiness import readiness
from karen_host.version import build_info
from models_app.selectors import latest_self_tests, resolve_model, servable_models

router = Router(tags=["Native (KAREN)"])
_STARTED = time.time()
_ERRORS = {400: dict, 401: dict, 403: dict, 404: dict, 409: dict, 429: dict, 500: dict, 503: dict}


def _model_entry(model: Any) -> dict[str, Any]:
    return {
        "id": model.id,
        "name": model.name,
        "size": model.file_size,
        "architecture": model.architecture,
        "parameters": model.parameters_label,
        "quantization": model.quantization,
        "context_length": model.context_length,
        "modified": model.file_mtime.timestamp() if model.file_mtime else None,
        "aliases": [a.name for a in model.aliases.all()],
    }


@router.get("/", response={200: dict})
def root(request: HttpRequest) -> dict[str, Any]:
    """Name, version, git commit (when known) and status (open, like /health)."""
    return {"message": "karen-host: llama.cpp server for KAREN", **build_info(), "status": "running"}


@router.get("/health", response={200: dict})
def health(request: HttpRequest) -> dict[str, Any]:
    """Liveness: open to all, no database query, no model call."""
    status = get_engine().status()
    return {
        "status": "healthy",
        "uptime_s": round(time.time() - _STARTED, 1),
        "loaded_models": [m["id"] for m in status["loaded"]],
        # a scheduler that failed is replaced at once; these say it happened, and whether all run now
        "schedulers_alive": all(m.get("scheduler_alive", True) for m in status["loaded"]),
        "scheduler_restarts": status.get("stats", {}).get("scheduler_restarts", 0),
    }


@router.get("/models", auth=BearerAuth("models:read"), response={200: dict, **_ERRORS})
async def models(request: HttpRequest) -> dict[str, Any]:
    """Servable models, the loaded ones and the current (most recently used) one, of those the token may use."""
    principal = request.auth
    available = [_model_entry(m) for m in await sync_to_async(servable_models)() if principal.may_use(m.id)]
    loaded = flow.engine_status_for(principal)["loaded"]
    return {"available": available, "loaded": loaded, "current": loaded[0] if loaded else None}


@router.post("/models/load", auth=BearerAuth("models:manage"), response={200: dict, **_ERRORS})
async def load_model(request: HttpRequest, body: LoadRequest) -> dict[str, Any]:
    """Load a model now (idempotent: loading a loaded model only refreshes its keep-alive)."""
    spec = await flow.resolve_spec(request.auth, body.model_id)
    try:
        result = await get_engine().load(spec, keep_alive_s=parse_keep_alive(body.keep_alive))
    except Exception as exc:
        raise as_api_error(exc) from exc
    return {"status": "success", **result}


@router.post("/models/unload/{model_id}", auth=BearerAuth("models:manage"), response={200: dict, **_ERRORS})
async def unload_model(request: HttpRequest, model_id: str) -> dict[str, Any]:
    """Unload a model; 409 while it serves requests; `not_loaded` if it was not loaded."""
    request.auth.require_model(model_id)
    try:
        unloaded = await get_engine().unload(model_id)
    except Exception as exc:
        raise as_api_error(exc) from exc
    return {"status": "success" if unloaded else "not_loaded", "model_id": model_id}


async def default_model_id(principal: Principal) -> str:
    """The most recently used loaded model the token may use, else the first servable one."""
    loaded = flow.engine_status_for(principal)["loaded"]
    if loaded:
        return loaded[0]["id"]
    models = [m for m in await sync_to_async(servable_models)() if principal.may_use(m.id)]
    if not models:
        raise Unavailable("No model this token may use is available; add a .gguf to MODELS_DIR and scan.",
                          code="no_model")  # fmt: skip
    return models[0].id


@router.post("/inference", auth=BearerAuth("inference"), response={200: dict, **_ERRORS})
async def inference(request: HttpRequest, body: NativeInferenceRequest) -> HttpResponse:
    """Answer `prompt` as a user message with the current (or named) model."""
    model_id = body.model_id or await default_model_id(request.auth)
    spec = await flow.resolve_spec(request.auth, model_id)
    messages = [{"role": "system", "content": body.system_prompt}] if body.system_prompt else []
    messages.append({"role": "user", "content": body.prompt})
    sampling = flow.build_sampling(body.parameters, spec)
    job = flow.make_job(spec, body.parameters, kind="chat", messages=messages, sampling=sampling)
    request_id = flow.new_request_id()
    handle = await flow.submit(
        principal=request.auth, spec=spec, job=job, endpoint="inference",
        request_id=request_id, client=flow.client_address(request),
    )  # fmt: skip
    parameters = {k: v for k, v in vars(sampling).items() if k not in ("logit_bias", "json_schema")}
    if not body.stream:
        text, outcome = await flow.collect(handle, request_id)
        response = JsonResponse(
            {
                "response": text,
                "model_id": spec.model_id,
                "parameters": parameters,
                "finish_reason": outcome.finish_reason,
                "usage": flow.usage_body(outcome),
                "timing": {"inference_time_ms": round(outcome.duration_ms, 2), **outcome.timings()},
            }
        )
        response[flow.REQUEST_ID_HEADER] = request_id
        return response
    first, rest = await flow.first_event(handle, request_id)

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        if first:
            yield {"token": first.text}
        async for event in rest:
            if isinstance(event, Token):
                yield {"token": event.text}
            elif event.status != "completed":
                error = flow.outcome_error(event)
                yield {"error": {"message": str(error), "type": error.error_type, "param": error.param,
                                 "code": error.code}}  # fmt: skip
            else:
                yield {"done": True, "model_id": spec.model_id, "finish_reason": event.finish_reason,
                       "usage": flow.usage_body(event), "timing": event.timings()}  # fmt: skip

    return flow.sse_response(chunks(), request_id)


@router.get("/performance", auth=BearerAuth("models:read"), response={200: dict, **_ERRORS})
def performance(request: HttpRequest) -> dict[str, Any]:
    """Engine, pool and request counters, and this process's memory and CPU (models: those the token may use)."""
    process = psutil.Process(os.getpid())
    with process.oneshot():
        memory = process.memory_info()
        cpu = process.cpu_percent(interval=None)
    return {
        "engine": flow.engine_status_for(request.auth),
        "requests": counters.snapshot(),
        "process": {"rss_mb": round(memory.rss / 2**20, 1), "cpu_percent": cpu, "threads": process.num_threads()},
        "system": {"memory_percent": psutil.virtual_memory().percent, "cpu_count": os.cpu_count()},
        "uptime_s": round(time.time() - _STARTED, 1),
    }


@router.get("/metrics", auth=BearerAuth("models:read"), response={200: None, **_ERRORS})
def metrics(request: HttpRequest) -> HttpResponse:
    """The same counters as /performance in Prometheus' text format, for a scrape job (the token's models only)."""
    body, content_type = render_metrics(only=request.auth.allowed_models)
    return HttpResponse(body, content_type=content_type)


@router.get("/karen/config", auth=BearerAuth("models:read"), response={200: dict, **_ERRORS})
async def karen_config(request: HttpRequest) -> dict[str, Any]:
    """What KAREN should use: the default model, its sampling defaults and the endpoints."""
    model_id = await default_model_id(request.auth)
    try:
        model = await sync_to_async(resolve_model)(model_id)
    except LookupError as exc:
        raise NotFound(str(exc), code="model_not_found") from exc
    config = await sync_to_async(lambda: model.config)()
    return {
        "model": model.id,
        "context_window": config.n_ctx // config.n_parallel,  # what one request gets
        "temperature": config.temperature,
        "max_tokens": config.max_tokens,
        "top_p": config.top_p,
        "top_k": config.top_k,
        "repetition_penalty": config.repeat_penalty,
        "system_prompt": config.system_prompt,
        "optimize_for": config.optimize_for,
        "endpoints": {
            "openai_base_url": request.build_absolute_uri("/v1"),
            "chat_completions": request.build_absolute_uri("/v1/chat/completions"),
            "inference": request.build_absolute_uri("/inference"),
        },
    }


@router.get("/health/ready", response={200: dict, 503: dict})
def health_ready(request: HttpRequest) -> Status[dict[str, Any]]:
    """Readiness: 200 when every check passes, else 503 naming the failing ones (open, like /health)."""
    checks = readiness()
    failing = [c.name for c in checks if not c.ok]
    body = {"status": "not_ready" if failing else "ready", "failing": failing, "checks": [c.to_dict() for c in checks]}
    return Status(503 if failing else 200, body)


@router.get("/health/selftest", response={200: dict, 503: dict})
def health_selftest(request: HttpRequest) -> Status[dict[str, Any]]:
    """Each enabled model's latest self-test; 503 if any failed, so a monitor can alert (open, like /health)."""
    results = latest_self_tests()
    status = "unknown" if not results else "pass" if all(r.passed for r in results) else "fail"
    return Status(503 if status == "fail" else 200, {"status": status, "models": [r.to_dict() for r in results]})
