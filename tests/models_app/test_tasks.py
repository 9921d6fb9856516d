"""The Celery tasks run by a real worker process, on Redis and on the embedded broker, against a live server."""

import json
import re
import shutil

import httpx
import pytest
from django.urls import reverse
from django_celery_beat.models import IntervalSchedule, PeriodicTask, PeriodicTasks
from django_celery_results.models import TaskResult

from models_app.choices import ModelStatus
from models_app.models import LLMModel, ModelConfig, SelfTestResult
from models_app.schedules import SCAN_SCHEDULE, ensure_default_schedules
from models_app.tasks import enqueue
from models_app.tasks import preload_models as preload_models_task
from models_app.tasks import run_self_test as run_self_test_task
from tests.models_app.conftest import wait_for


def _finished(task_id: str) -> TaskResult | None:
    return TaskResult.objects.filter(task_id=task_id, status__in=["SUCCESS", "FAILURE"]).first()


@pytest.fixture
def broken_model(transactional_db, tmp_path):
    """A registered model whose file went bad after the scan: a GGUF header and nothing else."""
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\3\0\0\0" + b"\0" * 4096)
    model = LLMModel.objects.create(id="broken", name="broken", file_path=str(broken), file_size=4104)
    ModelConfig.objects.create(model=model, n_ctx=512)
    return model


def test_scheduled_scan_registers_a_dropped_in_gguf(worker, worker_models_dir, beat, bundled_gguf, transactional_db):
    ensure_default_schedules()
    every_2s, _ = IntervalSchedule.objects.get_or_create(every=2, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.filter(name=SCAN_SCHEDULE).update(interval=every_2s, queue=worker.queue)
    shutil.copyfile(bundled_gguf, worker_models_dir / "dropped-in.gguf")

    def registered() -> LLMModel | None:
        # A queryset update sends no signal, so tell the running beat its schedule changed, and
        # keep telling it: beat takes the first change stamp it reads as its baseline, so a
        # stamp written just before that read would go unseen (the flaky failure seen twice).
        PeriodicTasks.update_changed()
        return LLMModel.objects.filter(id="dropped-in", status=ModelStatus.AVAILABLE).first()

    model = wait_for(
        registered,
        timeout=180,
        what="the scheduled scan to register dropped-in.gguf",
        worker=worker,
    )
    assert model.sha256 and model.architecture == "llama"

    def reported() -> TaskResult | None:
        # The scan commits the model row before it returns, and the worker stores the task's
        # result only after that, so the result row can lag the model row by a moment.
        scans = TaskResult.objects.filter(task_name="models_app.tasks.scan_models", status="SUCCESS")
        return next((scan for scan in scans if '"dropped-in"' in scan.result), None)

    wait_for(reported, timeout=30, what="the scan's stored result to name dropped-in", worker=worker)


def test_preload_makes_the_live_server_report_the_model_loaded(worker, service_token, live, fresh_engine):
    url, secret, model_id = live
    LLMModel.objects.filter(pk=model_id).update(preload=True)
    task_id = enqueue(preload_models_task)
    result = wait_for(lambda: _finished(task_id), what="the preload task", worker=worker)
    assert result.status == "SUCCESS", result.traceback
    models = httpx.get(f"{url}/models", headers={"Authorization": f"Bearer {secret}"}).json()
    assert model_id in [m["id"] for m in models["loaded"]]
    # Readiness waits for a preload model's self-test: the preload queued the first one.
    assert list(json.loads(result.result)["self_tests"]) == [model_id]
    tested = wait_for(lambda: SelfTestResult.objects.filter(model_id=model_id).first(), what="the self-test",
                      worker=worker)  # fmt: skip
    assert tested.passed, tested.reason


def test_preload_reports_a_model_that_fails_to_load_and_the_server_records_why(
    worker, service_token, live, broken_model
):
    task_id = enqueue(preload_models_task, ["broken"])
    result = wait_for(lambda: _finished(task_id), what="the preload task", worker=worker)
    assert result.status == "SUCCESS", result.traceback  # a model that fails is reported, not raised
    assert list(json.loads(result.result)["failed"]) == ["broken"]
    broken_model.refresh_from_db()  # a failed load is retried after a back-off, not `invalid` for good
    assert broken_model.status == ModelStatus.AVAILABLE and broken_model.load_failures == 1
    assert "load" in broken_model.last_load_error


def test_admin_self_test_action_records_a_pass_with_real_tokens_per_s(worker, service_token, live, client, admin_user):
    url, _, model_id = live
    client.force_login(admin_user)
    response = client.post(
        reverse("admin:models_app_llmmodel_changelist"),
        {"action": "queue_self_test", "_selected_action": [model_id]},
        follow=True,
    )
    task_id = re.search(r"task ids: ([0-9a-f-]{36})", response.content.decode()).group(1)
    test = wait_for(lambda: SelfTestResult.objects.filter(task_id=task_id).first(), what="the self-test", worker=worker)
    assert test.passed, test.reason
    assert test.tokens_per_s > 0 and test.time_to_first_token_ms > 0 and 0 < test.completion_tokens <= 8
    assert test.output_excerpt
    health = httpx.get(f"{url}/health/selftest")
    assert health.status_code == 200 and health.json()["status"] == "pass"


def test_corrupt_model_self_test_records_the_failure_reason(worker, service_token, live, broken_model):
    url, _, _ = live
    task_id = enqueue(run_self_test_task, "broken")
    test = wait_for(lambda: SelfTestResult.objects.filter(task_id=task_id).first(), what="the self-test", worker=worker)
    assert not test.passed
    assert "503" in test.reason and "load" in test.reason
    assert test.tokens_per_s is None
    health = httpx.get(f"{url}/health/selftest")
    assert health.status_code == 503 and health.json()["status"] == "fail"
