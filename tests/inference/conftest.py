"""A live ASGI server on a free port (uvicorn in a thread) and clients for it."""

from dataclasses import replace

import pytest

from inference.auth import clear_auth_cache
from inference.engine import reset_engine
from inference.engine.local import LocalEngine
from inference.engine.pool import ModelPool
from inference.engine.spec import ModelSpec
from models_app.models import ModelConfig

# SmolLM2's end-of-generation tokens suppressed (a request's logit_bias): it runs until stopped.
NO_EOS_BIAS = {"0": -100, "1": -100, "2": -100}


@pytest.fixture(autouse=True)
def _fresh_auth_cache():
    clear_auth_cache()
    yield
    clear_auth_cache()


@pytest.fixture
def fresh_engine():
    """An engine with nothing loaded, unloaded again after the test."""
    reset_engine()
    yield
    reset_engine()


@pytest.fixture
def one_slot(small_model, fresh_engine):
    """The bundled model with n_parallel=1, so one long request holds the only slot."""
    ModelConfig.objects.filter(model=small_model).update(n_parallel=1)


@pytest.fixture
def live(live_server_url, transactional_db, small_model, api_token):
    """(base url, token secret, model id) with the bundled model registered."""
    return live_server_url, api_token[1], small_model.id


@pytest.fixture
def openai_client(live):
    from openai import OpenAI

    url, secret, _ = live
    return OpenAI(base_url=f"{url}/v1", api_key=secret, max_retries=0, timeout=60)


@pytest.fixture
def engine_for(small_model):
    """build(n_parallel=, max_queue=, prompt_cache_mb=, n_batch=) -> (its own LocalEngine, the bundled model's spec)."""
    engines = []

    def build(
        *, n_parallel: int = 8, max_queue: int = 64, prompt_cache_mb: float = 0, n_batch: int | None = None
    ) -> tuple[LocalEngine, ModelSpec]:
        spec = ModelSpec.from_model(small_model)
        kwargs = {**spec.llama_kwargs, "n_parallel": n_parallel, "n_ctx": 4096}
        spec = replace(spec, llama_kwargs={**kwargs, "n_batch": n_batch or kwargs["n_batch"]})
        pool = ModelPool(max_loaded=1, budget_mb=10_000, default_keep_alive_s=None, max_queue=max_queue,
                         queue_timeout_s=60, prompt_cache_mb=prompt_cache_mb)  # fmt: skip
        engines.append(pool)
        return LocalEngine(pool), spec

    yield build
    for pool in engines:
        pool.close()
