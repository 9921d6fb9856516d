"""A real Celery worker (and beat) in a subprocess, on Redis or on the embedded broker, for the task tests."""

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from tests.conftest import filesystem_broker_options, point_celery_at
from tests.inference.conftest import _fresh_auth_cache, fresh_engine, live  # noqa: F401

REDIS_URL = "redis://127.0.0.1:6379/15"


@dataclass
class Worker:
    """A `celery -A karen_host worker` process and what it shares with the test."""

    env: dict[str, str]
    queue: str
    models_dir: Path
    service_token_file: Path
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def wait_for(condition, *, timeout: float = 60.0, what: str = "the condition", worker: Worker | None = None):
    """Poll `condition` until it returns something truthy; fail with the worker's log if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}" + (f"\n{worker.log_tail()}" if worker else ""))


def _start(argv: list[str], env: dict[str, str], log: Path, ready: str) -> subprocess.Popen:
    process = subprocess.Popen(argv, env=env, cwd=settings.BASE_DIR, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while ready not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{argv[3]} did not start:\n{log.read_text(errors='replace')[-4000:]}")
        time.sleep(0.1)
    return process


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module", params=["redis", "embedded"])
def worker(request, django_db_setup, django_db_blocker, live_server_url, tmp_path_factory):
    """A worker on the test database that reaches the live server; Redis or the embedded broker."""
    root = tmp_path_factory.mktemp(f"worker-{request.param}")
    queue = f"karen-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # no two test runs share a queue
    if request.param == "redis":
        import redis

        try:
            redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
        except redis.ConnectionError:
            pytest.fail(f"these tests need Redis at {REDIS_URL}")
        url, options = REDIS_URL, {}
    else:
        url, options = "filesystem://localhost/", filesystem_broker_options(root)
    (root / "models").mkdir()
    env = {
        **os.environ,
        "VAR_DIR": str(root),  # the embedded broker's folders, the scan lock and a secret key
        "DATABASE_URL": f"sqlite:///{connection.settings_dict['NAME']}",
        "CELERY_BROKER_URL": url,
        "CELERY_TASK_DEFAULT_QUEUE": queue,  # what a task queues from inside the worker goes here too
        "REDIS_URL": "",
        "SERVER_URL": live_server_url,
        "SERVICE_TOKEN_FILE": str(root / "service_token"),
        "MODELS_DIR": str(root / "models"),
        "LOG_LEVEL": "INFO",
    }
    log = root / "worker.log"
    argv = [sys.executable, "-m", "celery", "-A", "karen_host", "worker", "--loglevel", "INFO", "-Q", queue]
    with django_db_blocker.unblock():
        process = _start(argv, env, log, ready=" ready.")
    point_celery_at(url, transport_options=options, queue=queue)
    yield Worker(env, queue, root / "models", root / "service_token", log)
    _stop(process)
    _purge(queue)
    point_celery_at(
        "filesystem://localhost/", transport_options=filesystem_broker_options(tmp_path_factory.mktemp("var"))
    )


def _purge(queue: str) -> None:
    from karen_host.celery import app

    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(queue)
    if app.conf.broker_url == REDIS_URL:  # the queue's bindings outlive it in Redis
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        if keys := client.keys(f"*{queue}*"):
            client.delete(*keys)


@pytest.fixture
def beat(worker, tmp_path):
    """`celery beat` with the database scheduler, publishing to the worker's queue; stopped after the test."""
    argv = [sys.executable, "-m", "celery", "-A", "karen_host", "beat", "--loglevel", "INFO"]
    process = _start(argv, worker.env, tmp_path / "beat.log", ready="beat: Starting")
    yield tmp_path / "beat.log"
    _stop(process)
    _purge(worker.queue)


@pytest.fixture
def service_token(worker, settings, transactional_db):
    """The worker's service token, issued the way `manage.py serve` issues it, in the file the worker reads."""
    from models_app.services import ensure_service_token

    settings.SERVICE_TOKEN_FILE = worker.service_token_file
    worker.service_token_file.unlink(missing_ok=True)  # the last test's token went with its database
    assert ensure_service_token()
    return worker.service_token_file.read_text().strip()


@pytest.fixture
def worker_models_dir(worker):
    """The worker's MODELS_DIR, empty when the test starts and when it ends."""
    for path in worker.models_dir.iterdir():
        path.unlink()
    yield worker.models_dir
    for path in worker.models_dir.iterdir():
        path.unlink()


@pytest.fixture
def admin_client(client, admin_user):
    """Django's test client signed in as the superuser `admin_user`."""
    client.force_login(admin_user)
    return client
