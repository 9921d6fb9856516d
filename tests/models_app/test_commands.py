import io
import re
from pathlib import Path

import pytest
from django.core.management import call_command

from models_app.models import APIToken, LLMModel

pytestmark = pytest.mark.django_db


def test_create_token_prints_a_working_secret(admin_user, small_model):
    out = io.StringIO()
    call_command("create_token", "karen", "--scopes", "inference", "--models", "smollm2", stdout=out)
    secret = re.search(r"khk_\S+", out.getvalue()).group(0)
    token = APIToken.objects.get(name="karen")
    assert token.matches(secret) and token.scopes == ["inference"]


def test_serve_prepares_once_and_prints_secrets_only_the_first_time(models_dir, bundled_gguf, settings, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    first, second = io.StringIO(), io.StringIO()
    call_command("serve", "--no-serve", "--models-dir", str(elsewhere), stdout=first)
    assert models_dir == settings.MODELS_DIR  # --models-dir is passed on, never written into settings
    assert f"Models in {elsewhere}: 1 added" in first.getvalue()
    call_command("serve", "--no-serve", "--models-dir", str(elsewhere), stdout=second)
    assert "Password:" in first.getvalue() and "khk_" in first.getvalue()
    assert "Password:" not in second.getvalue() and "khk_" not in second.getvalue()
    assert LLMModel.objects.get().status == "available"


@pytest.mark.parametrize("eager", [False, True])
def test_serve_queues_the_startup_scan_for_the_worker_but_not_under_an_eager_celery(models_dir, settings, eager):
    # Eager, the scan would run in serve's own process on settings' MODELS_DIR, not on --models-dir;
    # serve has just scanned that directory itself.
    from models_app.management.commands.serve import Command

    settings.CELERY_TASK_ALWAYS_EAGER = eager
    out = io.StringIO()
    Command(stdout=out)._queue_startup_work()
    assert out.getvalue().startswith("Queued the preload" if eager else "Queued a scan (")


def test_scan_models_command_summarises(models_dir, bundled_gguf):
    (models_dir / "m.gguf").symlink_to(bundled_gguf)
    out = io.StringIO()
    call_command("scan_models", str(models_dir), stdout=out)
    assert "1 added" in out.getvalue()


def test_serve_web_only_becomes_the_web_server_with_the_models_dir_it_was_given(tmp_path):
    # A real `manage.py serve --web-only` on its own database: once prepared it execs the web server in its place
    # (same pid, so signals and supervisors still reach the server), which serves the models dir it was given.
    import os
    import subprocess
    import sys
    import time

    import httpx
    from django.conf import settings

    from tests.conftest import _free_port

    port = _free_port()
    env = {**os.environ, "VAR_DIR": str(tmp_path / "var"), "LOG_LEVEL": "WARNING"}
    env.pop("DATABASE_URL", None)
    manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
    models = tmp_path / "elsewhere"
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen([*manage, "serve", "--web-only", "--port", str(port), "--models-dir", str(models)],
                              env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.time() + 120
        while time.time() < deadline and server.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
        cmdline = (Path(f"/proc/{server.pid}/cmdline").read_bytes()).split(b"\0")
        assert cmdline[1:3] == [b"-m", b"karen_host.web"]
        out = subprocess.run([*manage, "create_token", "t", "--scopes", "models:read"], env=env, capture_output=True,
                             text=True, check=True)  # fmt: skip
        secret = re.search(r"khk_\S+", out.stdout).group(0)
        listed = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {secret}"})
        assert listed.status_code == 200 and listed.json()["data"], listed.text
        assert (models / "SmolLM2-135M-Instruct.Q4_1.gguf").exists()  # the bundled model was linked there
    finally:
        server.terminate()
        assert server.wait(timeout=60) == 0
        log.close()
