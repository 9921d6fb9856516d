"""A live ASGI server on a free port (uvicorn in a thread) and clients for it."""

import socket
import threading
import time
from dataclasses import replace

import pytest
import uvicorn

from inference.auth import clear_auth_cache
from inference.engine import reset_engine
from inference.engine.local import LocalEngine
from inference.engine.pool import ModelPool
from inference.engine.spec import ModelSpec
from models_app.models import ModelConfig

# SmolLM2's end-of-generation tokens suppressed (a request's logit_bias): it runs until stopped.
NO_EOS_BIAS = {"0": -100, "1": -100, "2": -100}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def live_server_url(django_db_setup, django_db_blocker):
    """The whole app (HTTP + websockets) served by uvicorn on 127.0.0.1:<free port>."""
    from karen_host.asgi import application

    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(application, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    with django_db_blocker.unblock():
        thread.start()
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
        server.should_exit = True
        thread.join(timeout=10)


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


@pytest.fixture(scope="session")
def live_daphne_url(django_db_setup, django_db_blocker, tmp_path_factory):
    """A real `daphne karen_host.asgi:application` process on a free port, on the test database."""
    import os
    import subprocess
    import sys

    import httpx
    from django.conf import settings

    port = _free_port()
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{settings.DATABASES['default']['NAME']}", "LOG_LEVEL": "WARNING"}
    log = tmp_path_factory.mktemp("daphne") / "daphne.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "karen_host.asgi:application"],
        env=env, cwd=settings.BASE_DIR, stdout=subprocess.DEVNULL, stderr=log.open("wb"),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        process.kill()
        raise RuntimeError(f"daphne did not start: {log.read_text()[-2000:]}")
    yield url
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def engine_for(small_model):
    """build(n_parallel=, max_queue=, prompt_cache_mb=) -> (a LocalEngine of its own, the bundled model's spec)."""
    engines = []

    def build(*, n_parallel: int = 8, max_queue: int = 64, prompt_cache_mb: float = 0) -> tuple[LocalEngine, ModelSpec]:
        spec = ModelSpec.from_model(small_model)
        spec = replace(spec, llama_kwargs={**spec.llama_kwargs, "n_parallel": n_parallel, "n_ctx": 4096})
        pool = ModelPool(max_loaded=1, budget_mb=10_000, default_keep_alive_s=None, max_queue=max_queue,
                         queue_timeout_s=60, prompt_cache_mb=prompt_cache_mb)  # fmt: skip
        engines.append(pool)
        return LocalEngine(pool), spec

    yield build
    for pool in engines:
        pool.close()
