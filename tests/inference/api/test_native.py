"""The original plan's native endpoints: same auth, engine and metering as /v1."""

import json
import subprocess

import httpx
from django.conf import settings

import karen_host
from inference.engine import get_engine
from models_app.models import UsageRecord
from models_app.services import issue_token


def get(live, path, secret=None):
    headers = {"Authorization": f"Bearer {secret or live[1]}"} if secret is not False else {}
    return httpx.get(f"{live[0]}{path}", headers=headers, timeout=60)


def post(live, path, body=None, secret=None):
    return httpx.post(
        f"{live[0]}{path}", json=body, headers={"Authorization": f"Bearer {secret or live[1]}"}, timeout=60
    )


def manager_secret(admin_user):
    return issue_token(name="ops", owner=admin_user, scopes=["models:manage", "models:read"])[1]


def test_root_names_the_server_version_and_commit(live):
    body = get(live, "/", secret=False).json()
    assert body["version"] == karen_host.__version__ and body["status"] == "running"
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=settings.BASE_DIR)
    if head.returncode == 0:  # a checkout: its commit; an image sets GIT_COMMIT instead
        assert head.stdout.strip().startswith(body["commit"])
    assert get(live, "/api/version", secret=False).json()["commit"] == body["commit"]


def test_an_image_names_its_commit(monkeypatch):
    from karen_host import version

    version.commit.cache_clear()
    monkeypatch.setenv("GIT_COMMIT", "0123456789abcdef")
    try:
        assert version.build_info() == {"version": karen_host.__version__, "commit": "0123456789abcdef"}
    finally:
        version.commit.cache_clear()


def test_health_is_open(live):
    response = get(live, "/health", secret=False)
    assert response.status_code == 200 and response.json()["status"] == "healthy"


def test_models_needs_a_token(live):
    assert get(live, "/models", secret=False).status_code == 401


def test_models_lists_available_loaded_and_current(live, admin_user, fresh_engine):
    secret = manager_secret(admin_user)
    assert post(live, "/models/load", {"model_id": live[2]}, secret).json()["status"] == "success"
    body = get(live, "/models").json()
    assert [m["id"] for m in body["available"]] == [live[2]]
    assert body["available"][0]["quantization"] == "Q4_1"
    assert [m["id"] for m in body["loaded"]] == [live[2]] and body["current"]["id"] == live[2]


def test_load_and_unload_need_the_manage_scope(live):
    assert post(live, "/models/load", {"model_id": live[2]}).status_code == 403
    assert post(live, f"/models/unload/{live[2]}").status_code == 403


def test_unload_is_idempotent(live, admin_user, fresh_engine):
    secret = manager_secret(admin_user)
    post(live, "/models/load", {"model_id": live[2]}, secret)
    assert post(live, f"/models/unload/{live[2]}", secret=secret).json()["status"] == "success"
    assert post(live, f"/models/unload/{live[2]}", secret=secret).json()["status"] == "not_loaded"
    assert not get_engine().pool.loaded()


def test_load_of_unknown_model_is_404(live, admin_user):
    assert post(live, "/models/load", {"model_id": "nope"}, manager_secret(admin_user)).status_code == 404


def test_inference_answers_and_is_metered(live):
    response = post(live, "/inference", {"prompt": "Say hi.", "parameters": {"max_tokens": 6, "temperature": 0}})
    body = response.json()
    assert response.status_code == 200 and body["response"] and body["model_id"] == live[2]
    assert body["parameters"]["max_tokens"] == 6 and body["timing"]["inference_time_ms"] > 0
    row = UsageRecord.objects.get()
    assert (row.endpoint, row.status, row.completion_tokens) == (
        "inference",
        "completed",
        body["usage"]["completion_tokens"],
    )


def test_inference_streams_tokens_then_done(live):
    with httpx.stream(
        "POST", f"{live[0]}/inference", json={"prompt": "Hi", "stream": True, "parameters": {"max_tokens": 5}},
        headers={"Authorization": f"Bearer {live[1]}"}, timeout=60,
    ) as response:  # fmt: skip
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    done = json.loads(lines[-2][6:])
    assert done["done"] is True and done["usage"]["completion_tokens"] <= 5
    assert all("token" in json.loads(line[6:]) for line in lines[:-2])


def test_inference_rejects_unknown_parameters(live):
    response = post(live, "/inference", {"prompt": "Hi", "parameters": {"max_tokens": 4, "mirostat": 2}})
    assert response.status_code == 400 and response.json()["error"]["param"] == "parameters.mirostat"


def test_performance_reports_engine_and_memory(live):
    post(live, "/inference", {"prompt": "Hi", "parameters": {"max_tokens": 2}})
    body = get(live, "/performance").json()
    assert body["process"]["rss_mb"] > 0 and "stats" in body["engine"]
    assert body["requests"]["finished"]


def test_karen_config_gives_model_and_sampling(live):
    body = get(live, "/karen/config").json()
    assert body["model"] == live[2] and body["context_window"] == 2048 // 4  # n_ctx shared by 4 slots
    assert body["endpoints"]["openai_base_url"].endswith("/v1")
