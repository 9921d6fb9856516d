"""/health/ready: 200 only when every check passes, 503 naming each failing one; the same in /metrics."""

import http.server
import threading

import llama_cpp
import pytest
from asgiref.sync import async_to_sync

from inference.engine import get_engine
from inference.engine.spec import ModelSpec
from inference.readiness import readiness
from models_app.models import LLMModel, ModelConfig
from models_app.services import record_self_test
from tests.conftest import _free_port, point_celery_at

pytestmark = pytest.mark.django_db


def _ready(client) -> tuple[int, dict]:
    response = client.get("/health/ready")
    return response.status_code, response.json()


def test_ready_when_every_check_passes(client, small_model):
    status, body = _ready(client)
    assert (status, body["status"], body["failing"]) == (200, "ready", [])
    names = [c["name"] for c in body["checks"]]
    assert names == ["serving", "database", "broker", "preload_models", "self_tests", "disk", "model_files", "gpu",
                     "karen"]  # fmt: skip
    assert all(c["since"] for c in body["checks"])


def test_a_preload_model_must_be_loaded_and_pass_its_self_test(client, small_model, fresh_engine):
    LLMModel.objects.filter(pk=small_model.pk).update(preload=True)
    status, body = _ready(client)
    assert status == 503 and body["failing"] == ["preload_models", "self_tests"]
    async_to_sync(get_engine().load)(ModelSpec.from_model(small_model))
    record_self_test(model_id=small_model.pk, passed=False, reason="garbled output")
    status, body = _ready(client)
    assert status == 503 and body["failing"] == ["self_tests"]
    assert "failed: " + small_model.pk in next(c["detail"] for c in body["checks"] if c["name"] == "self_tests")
    record_self_test(model_id=small_model.pk, passed=True)
    assert _ready(client)[0] == 200


def test_each_check_keeps_when_it_last_changed(client, small_model, settings):
    first = {c.name: c.since for c in readiness()}
    assert {c.name: c.since for c in readiness()} == first  # nothing changed: the same times
    settings.DISK_MIN_FREE_MB = 10**9  # no disk has a petabyte free
    status, body = _ready(client)
    assert status == 503 and body["failing"] == ["disk"] and "low on space" in body["checks"][5]["detail"]
    after = {c["name"]: c["since"] for c in body["checks"]}
    assert after["disk"] > first["disk"].isoformat() and after["database"] == first["database"].isoformat()


def test_a_model_file_that_is_gone_fails(client, small_model, tmp_path):
    LLMModel.objects.filter(pk=small_model.pk).update(file_path=str(tmp_path / "gone.gguf"))
    status, body = _ready(client)
    assert status == 503 and body["failing"] == ["model_files"]


@pytest.mark.skipif(bool(llama_cpp.llama_supports_gpu_offload()), reason="this build has a GPU backend")
def test_a_config_counting_on_a_gpu_fails_on_a_cpu_build(client, small_model):
    ModelConfig.objects.filter(model=small_model).update(n_gpu_layers=12)
    status, body = _ready(client)
    assert status == 503 and body["failing"] == ["gpu"]
    ModelConfig.objects.filter(model=small_model).update(n_gpu_layers=-1)  # "all there are": fine without one
    assert _ready(client)[0] == 200


def test_karen_is_checked_where_its_url_is_set(client, small_model, settings):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings.KAREN_URL = f"http://127.0.0.1:{server.server_address[1]}/"
        assert _ready(client)[0] == 200
    finally:
        server.shutdown()
        server.server_close()
    settings.KAREN_URL = f"http://127.0.0.1:{_free_port()}/"  # nothing listens there
    status, body = _ready(client)
    assert status == 503 and body["failing"] == ["karen"]


def test_a_broker_that_does_not_answer_fails(client, small_model):
    from karen_host.celery import app

    before = app.conf.broker_url, dict(app.conf.broker_transport_options), app.conf.task_default_queue
    point_celery_at(f"redis://127.0.0.1:{_free_port()}/0")
    try:
        status, body = _ready(client)
    finally:  # back to the session's broker, which the worker fixtures consume from
        point_celery_at(before[0], transport_options=before[1], queue=before[2])
    assert status == 503 and body["failing"] == ["broker"]


def test_a_check_that_breaks_is_a_failed_one_not_a_500(client, small_model, monkeypatch):
    def broken() -> tuple[bool, str]:
        raise RuntimeError("boom")

    monkeypatch.setattr("inference.readiness._PROBES", [("database", broken)])
    status, body = _ready(client)
    assert status == 503 and "boom" in body["checks"][0]["detail"]


def test_metrics_carry_each_check(client, small_model, api_token, settings):
    settings.DISK_MIN_FREE_MB = 10**9
    text = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {api_token[1]}").content.decode()
    assert "karenhost_ready 0.0" in text
    assert 'karenhost_ready_check{check="disk"} 0.0' in text and 'karenhost_ready_check{check="database"} 1.0' in text
    assert 'karenhost_ready_check_changed_timestamp_seconds{check="disk"}' in text
