"""Refusals: each a clear status, OpenAI's error shape, and nothing billed."""

from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

from inference.auth import clear_auth_cache
from models_app.models import APIToken, ModelConfig, UsageRecord
from models_app.services import issue_token, revoke_token


def post(live, path, body, secret=None, **kwargs):
    url, default_secret, _ = live
    headers = {"Authorization": f"Bearer {secret or default_secret}"}
    return httpx.post(f"{url}{path}", json=body, headers=headers, timeout=60, **kwargs)


def chat(live, **overrides):
    return {"model": live[2], "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, **overrides}


def assert_error(response, status, error_type, param=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == error_type and error["message"]
    if param:
        assert error["param"] == param
    return error


def test_missing_token_is_401(live):
    response = httpx.post(f"{live[0]}/v1/chat/completions", json=chat(live))
    assert_error(response, 401, "authentication_error")


def test_expired_token_gets_401_in_openai_shape(live, admin_user):
    token, secret = issue_token(name="old", owner=admin_user, scopes=["inference"])
    APIToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    error = assert_error(post(live, "/v1/chat/completions", chat(live), secret), 401, "authentication_error")
    assert "expired" in error["message"]


def test_revoked_token_stops_working_once_the_cache_expires(live, api_token):
    assert post(live, "/v1/chat/completions", chat(live)).status_code == 200
    revoke_token(token=api_token[0])
    clear_auth_cache()  # stands in for AUTH_CACHE_TTL_S passing
    error = assert_error(post(live, "/v1/chat/completions", chat(live)), 401, "authentication_error")
    assert "revoked" in error["message"]


def test_token_without_inference_scope_is_403(live, admin_user):
    _, secret = issue_token(name="reader", owner=admin_user, scopes=["models:read"])
    error = assert_error(post(live, "/v1/chat/completions", chat(live), secret), 403, "permission_error")
    assert "'inference'" in error["message"]


def test_model_not_allowed_for_the_token_is_403(live, admin_user, gguf_copy):
    from models_app.models import LLMModel

    LLMModel.objects.create(id="other", name="other", file_path=str(gguf_copy))
    _, secret = issue_token(name="narrow", owner=admin_user, scopes=["inference"], models=["other"])
    assert_error(post(live, "/v1/chat/completions", chat(live), secret), 403, "permission_error", "model")


def test_disabled_model_is_404(live, small_model):
    small_model.enabled = False
    small_model.save()
    error = assert_error(post(live, "/v1/chat/completions", chat(live)), 404, "not_found_error", "model")
    assert "disabled" in error["message"]


def test_invalid_json_is_400(live):
    response = httpx.post(
        f"{live[0]}/v1/chat/completions", content=b"{not json", headers={"Authorization": f"Bearer {live[1]}"}
    )
    assert_error(response, 400, "invalid_request_error")


@pytest.mark.parametrize(
    ("override", "param"),
    [
        ({"max_tokens": -1}, "max_tokens"),
        ({"temperature": 9}, "temperature"),
        ({"messages": "hello"}, "messages"),
        ({"n": 9}, "n"),
        ({"frobnicate": True}, "frobnicate"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"keep_alive": "soon"}, "keep_alive"),
    ],
)
def test_bad_field_is_400_naming_it(live, override, param):
    error = assert_error(post(live, "/v1/chat/completions", chat(live, **override)), 400, "invalid_request_error")
    assert error["param"] == param or error["param"].startswith(param)


def test_prompt_longer_than_the_context_is_400(live, small_model, fresh_engine):
    ModelConfig.objects.filter(model=small_model).update(n_ctx=256)
    long = chat(live, messages=[{"role": "user", "content": "word " * 400}])
    error = assert_error(post(live, "/v1/chat/completions", long), 400, "invalid_request_error", "messages")
    assert error["code"] == "context_length_exceeded"


def test_oversized_body_is_413(live, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    big = chat(live, messages=[{"role": "user", "content": "x" * 20_000}])
    assert_error(post(live, "/v1/chat/completions", big), 413, "invalid_request_error")


def test_refused_requests_are_not_billed(live):
    post(live, "/v1/chat/completions", chat(live, max_tokens=-1))
    post(live, "/v1/chat/completions", chat(live, model="nope"))
    assert not UsageRecord.objects.exists()
