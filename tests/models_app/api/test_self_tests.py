"""/api/v1/selftests: self-test results, latest first, per model."""

from datetime import timedelta

from django.utils import timezone

from models_app.models import LLMModel, SelfTestResult
from models_app.services import issue_token
from tests.models_app.api.conftest import client_for

URL = "/api/v1/selftests/"


def record(model_id, passed, minutes_ago):
    result = SelfTestResult.objects.create(model_id=model_id, passed=passed, reason="" if passed else "no tokens")
    SelfTestResult.objects.filter(pk=result.pk).update(created_at=timezone.now() - timedelta(minutes=minutes_ago))
    return result


def test_results_are_listed_latest_first(reader, small_model):
    old, new = record("smollm2", False, 60), record("smollm2", True, 1)
    rows = reader.get(URL).json()["results"]
    assert [r["id"] for r in rows] == [new.pk, old.pk]
    assert rows[1]["passed"] is False and rows[1]["reason"] == "no tokens"


def test_results_filter_by_model(reader, small_model, gguf_copy):
    LLMModel.objects.create(id="other", name="other", file_path=str(gguf_copy))
    record("smollm2", True, 5)
    record("other", True, 5)
    assert {r["model"] for r in reader.get(URL, {"model": "other"}).json()["results"]} == {"other"}


def test_a_token_limited_to_one_model_sees_only_its_results(admin_user, small_model, gguf_copy):
    LLMModel.objects.create(id="other", name="other", file_path=str(gguf_copy))
    record("smollm2", True, 5)
    record("other", True, 5)
    _, secret = issue_token(name="narrow", owner=admin_user, scopes=["models:read"], models=["other"])
    assert {r["model"] for r in client_for(secret).get(URL).json()["results"]} == {"other"}


def test_results_need_a_token(client, small_model):
    assert client.get(URL).status_code == 401
