"""The engine: one interface (submit a job, stream its events, cancel) over llama.cpp."""

import logging
import threading
from typing import TYPE_CHECKING

import psutil
from django.conf import settings

from inference.engine.grammar import SchemaBounds
from inference.engine.jobs import Job, JobHandle, Outcome, RequestBounds, Sampling, Token
from inference.engine.local import LocalEngine
from inference.engine.pool import ModelPool

if TYPE_CHECKING:
    from inference.engine.remote import RemoteEngine

_engine: "LocalEngine | RemoteEngine | None" = None
_engine_lock = threading.Lock()


def _record_load_failure(model_id: str, reason: str, retry_in_s: float) -> None:
    from models_app.services import record_load_failure

    try:
        record_load_failure(model_id=model_id, reason=reason, retry_in_s=retry_in_s)
    except Exception:  # the registry is a mirror of the pool's own record: its failure is not the request's
        logging.getLogger(__name__).exception("could not record the failed load of %s", model_id)


def _clear_load_failure(model_id: str) -> None:
    from models_app.services import clear_load_failure

    try:
        clear_load_failure(model_id=model_id)
    except Exception:
        logging.getLogger(__name__).exception("could not clear the failed loads of %s", model_id)


def request_bounds() -> RequestBounds:
    """The bounds on one request, from settings (README, "Bounds")."""
    return RequestBounds(
        schema=SchemaBounds(
            max_bytes=settings.JSON_SCHEMA_MAX_BYTES, max_depth=settings.JSON_SCHEMA_MAX_DEPTH,
            max_repetitions=settings.JSON_SCHEMA_MAX_REPETITIONS, max_grammar_bytes=settings.GRAMMAR_MAX_BYTES,
        ),
        max_logit_bias=settings.MAX_LOGIT_BIAS,
        template_timeout_s=settings.CHAT_TEMPLATE_TIMEOUT_S,
        template_max_chars=settings.CHAT_TEMPLATE_MAX_OUTPUT_CHARS,
    )  # fmt: skip


def get_engine() -> "LocalEngine | RemoteEngine":
    """The process's engine, created on first use from settings: INFERENCE_MODE local or remote."""
    global _engine
    with _engine_lock:
        if _engine is None and settings.INFERENCE_MODE == "remote":
            from inference.engine.remote import RemoteEngine  # imports the channel layer

            _engine = RemoteEngine(heartbeat_s=settings.INFERENCE_HEARTBEAT_S)
        if _engine is None:
            budget = settings.MODEL_MEMORY_BUDGET_MB or psutil.virtual_memory().total * 0.6 / 2**20
            _engine = LocalEngine(
                ModelPool(
                    max_loaded=settings.MAX_LOADED_MODELS,
                    budget_mb=budget,
                    default_keep_alive_s=settings.DEFAULT_KEEP_ALIVE_S,
                    max_queue=settings.MAX_QUEUE,
                    queue_timeout_s=settings.QUEUE_TIMEOUT_S,
                    prompt_cache_mb=settings.PROMPT_CACHE_MB,
                    owner_share=settings.QUEUE_SHARE_PER_TOKEN,
                    batch_age_s=settings.BATCH_MAX_WAIT_S,
                    on_load_failed=_record_load_failure,
                    on_loaded=_clear_load_failure,
                ),
                request_bounds(),
            )
        return _engine


def reset_engine() -> None:
    """Unload everything and forget the engine (tests; settings changes)."""
    global _engine
    with _engine_lock:
        if isinstance(_engine, LocalEngine):
            _engine.pool.close()
        elif _engine is not None:
            _engine.close()
        _engine = None


__all__ = ["Job", "JobHandle", "LocalEngine", "Outcome", "Sampling", "Token", "get_engine", "reset_engine"]
