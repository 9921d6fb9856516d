"""The engine: one interface (submit a job, stream its events, cancel) over llama.cpp."""

import threading
from typing import TYPE_CHECKING

import psutil
from django.conf import settings

from inference.engine.jobs import Job, JobHandle, Outcome, Sampling, Token
from inference.engine.local import LocalEngine
from inference.engine.pool import ModelPool

if TYPE_CHECKING:
    from inference.engine.remote import RemoteEngine

_engine: "LocalEngine | RemoteEngine | None" = None
_engine_lock = threading.Lock()


def _mark_invalid(model_id: str, reason: str) -> None:
    from models_app.services import mark_model_invalid

    mark_model_invalid(model_id=model_id, reason=reason)


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
                    on_load_failed=_mark_invalid,
                )
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
