"""Self-tests without a worker: the command, /health/selftest, the admin, the service token, the schedules."""

import fcntl
import io
import re
import stat
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from django_celery_beat.models import PeriodicTask

from karen_host.celery import app
from models_app.models import APIToken, SelfTestResult
from models_app.scanning import scan_models_exclusively
from models_app.schedules import (
    ROLLUP_SCHEDULE,
    SCAN_SCHEDULE,
    SELF_TEST_SCHEDULE,
    STALE_USAGE_SCHEDULE,
    ensure_default_schedules,
)
from models_app.server_api import ServerUnreachable
from models_app.services import ensure_service_token, record_self_test
from models_app.serving import preload_models
from models_app.tasks import preload_models as preload_models_task
from tests.conftest import point_celery_at


@pytest.fixture
def against_live_server(live, settings):
    """`manage.py selftest` pointed at the live server with a service token, as `serve` leaves it."""
    settings.SERVER_URL = live[0]
    ensure_service_token()
    return live


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


@pytest.fixture
def broker_down():
    """The app publishes to a Redis nobody listens on; the old broker comes back afterwards."""
    previous = (app.conf.broker_url, dict(app.conf.broker_transport_options), app.conf.task_default_queue)
    point_celery_at("redis://127.0.0.1:1/0")
    yield
    point_celery_at(previous[0], transport_options=previous[1], queue=previous[2])


def test_selftest_command_passes_against_the_live_server(against_live_server):
    _, _, model_id = against_live_server
    out = io.StringIO()
    call_command("selftest", model_id, stdout=out)
    assert re.search(rf"{model_id}: passed, \d+\.\d tokens/s", out.getvalue())
    assert SelfTestResult.objects.get(model_id=model_id).passed


def test_selftest_command_exits_1_for_a_model_that_fails(against_live_server, small_model):
    small_model.enabled = False  # the server refuses a disabled model, as it refuses a broken one
    small_model.save()
    out = io.StringIO()
    with pytest.raises(CommandError, match="1 of 1 self-test") as failure:
        call_command("selftest", small_model.pk, stdout=out)
    assert failure.value.returncode == 1
    assert "FAILED" in out.getvalue() and "disabled" in SelfTestResult.objects.get().reason


def test_selftest_command_says_when_the_server_is_down(small_model, settings):
    settings.SERVER_URL = "http://127.0.0.1:1"
    ensure_service_token()
    with pytest.raises(CommandError, match="is the server running"):
        call_command("selftest", small_model.pk, stdout=io.StringIO())


def test_health_selftest_is_unknown_before_any_self_test(client, small_model):
    response = client.get("/health/selftest")
    assert response.status_code == 200 and response.json() == {"status": "unknown", "models": []}


def test_health_selftest_reports_each_models_latest_result(client, small_model):
    record_self_test(model_id=small_model.pk, passed=True, tokens_per_s=120.0, completion_tokens=8)
    record_self_test(model_id=small_model.pk, passed=False, reason="no text")
    response = client.get("/health/selftest")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "fail" and [m["reason"] for m in body["models"]] == ["no text"]


def test_model_page_shows_the_latest_self_test_and_its_history(admin_client, small_model):
    record_self_test(model_id=small_model.pk, passed=False, reason="the model produced no text")
    record_self_test(model_id=small_model.pk, passed=True, tokens_per_s=321.5, output="Blue")
    page = admin_client.get(reverse("admin:models_app_llmmodel_change", args=[small_model.pk])).content.decode()
    assert "passed, 321.5 tokens/s" in page and "Self-test history (latest 20)" in page
    assert "the model produced no text" in page  # the older, failed run, in the history
    assert admin_client.get(reverse("admin:models_app_selftestresult_changelist")).status_code == 200


def test_admin_action_queues_the_self_test_and_names_the_task_id(admin_client, small_model, transactional_db):
    folder = app.conf.broker_transport_options["data_folder_in"]
    before = len(list(Path(folder).iterdir()))
    response = admin_client.post(
        reverse("admin:models_app_llmmodel_changelist"),
        {"action": "queue_self_test", "_selected_action": [small_model.pk]},
        follow=True,
    )
    assert re.search(r"Queued 1 self-test\(s\) \(task ids: [0-9a-f-]{36}\)", response.content.decode())
    assert len(list(Path(folder).iterdir())) == before + 1


def test_scan_action_runs_with_nothing_selected(admin_client, small_model, transactional_db):
    changelist = reverse("admin:models_app_llmmodel_changelist")
    response = admin_client.post(changelist, {"action": "queue_scan", "index": "0"}, follow=True)  # as a browser does
    assert "Queued 1 scan (task ids:" in response.content.decode()


def test_broker_down_gives_the_admin_a_message_not_a_500(admin_client, small_model, broker_down, transactional_db):
    response = admin_client.post(
        reverse("admin:models_app_llmmodel_changelist"),
        {"action": "rescan", "_selected_action": [small_model.pk]},
        follow=True,
    )
    page = response.content.decode()
    assert response.status_code == 200
    assert "Could not queue the rescan(s)" in page and "redis://127.0.0.1:1/0 is not reachable" in page


def test_service_token_is_private_and_scoped_to_preload_and_self_test(db, settings):
    assert ensure_service_token() is True
    path = settings.SERVICE_TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = APIToken.objects.get(name="background worker")
    assert token.scopes == ["inference", "models:manage"] and token.matches(path.read_text().strip())
    assert ensure_service_token() is False  # the file's token still works: nothing new


def test_a_lost_service_token_file_is_replaced_and_the_old_token_revoked(db, settings):
    ensure_service_token()
    settings.SERVICE_TOKEN_FILE.unlink()
    assert ensure_service_token() is True
    assert APIToken.objects.filter(name="background worker").values_list("revoked", flat=True).count() == 2
    assert APIToken.objects.filter(name="background worker", revoked=False).count() == 1


def test_default_schedules_are_created_once_and_left_as_edited(db):
    assert ensure_default_schedules() == [SCAN_SCHEDULE, SELF_TEST_SCHEDULE, STALE_USAGE_SCHEDULE, ROLLUP_SCHEDULE]
    scan = PeriodicTask.objects.get(name=SCAN_SCHEDULE)
    assert (scan.task, scan.interval.every, scan.interval.period) == ("models_app.tasks.scan_models", 5, "minutes")
    assert PeriodicTask.objects.get(name=SELF_TEST_SCHEDULE).crontab.hour == "3"
    PeriodicTask.objects.filter(name=SCAN_SCHEDULE).update(enabled=False)
    assert ensure_default_schedules() == []
    assert not PeriodicTask.objects.get(name=SCAN_SCHEDULE).enabled


def test_a_scan_is_skipped_while_another_one_runs(db, settings, models_dir):
    with (settings.VAR_DIR / "scan.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert scan_models_exclusively(models_dir) is None
    assert scan_models_exclusively(models_dir) is not None


def test_preload_with_the_server_down_retries_and_marks_nothing(small_model, settings):
    settings.SERVER_URL = "http://127.0.0.1:1"
    ensure_service_token()
    small_model.preload = True
    small_model.save()
    with pytest.raises(ServerUnreachable):
        preload_models()
    small_model.refresh_from_db()
    assert small_model.status == "available"
    assert ServerUnreachable in preload_models_task.autoretry_for  # the task tries again later
