"""A token's limits (requests/min, tokens/min, requests in flight) on every generation endpoint, live."""

import json
import time

import httpx
import pytest
import redis

from inference.limits.admission import get_limiter, reset_limiter
from models_app.models import APIToken, UsageRecord
from models_app.services import issue_token
from tests.conftest import WebServer, metric_samples, wait_for
from tests.inference.conftest import NO_EOS_BIAS

REDIS_URL = "redis://127.0.0.1:6379/13"
RATE_HEADERS = {f"x-ratelimit-{kind}-{unit}" for kind in ("limit", "remaining", "reset")
                for unit in ("requests", "tokens")}  # fmt: skip


@pytest.fixture(autouse=True)
def _fresh_limits():
    reset_limiter()
    yield
    reset_limiter()


@pytest.fixture
def redis_limits(settings):
    """The live server's limits in the real Redis (db 13), emptied before and after."""
    client = redis.Redis.from_url(REDIS_URL)

    def empty() -> None:
        if keys := list(client.scan_iter(match="karenhost:limit:*")):
            client.delete(*keys)

    empty()
    settings.REDIS_URL = REDIS_URL
    yield client
    empty()


def limited(admin_user, **limits) -> tuple[APIToken, str]:
    token, secret = issue_token(name="limited", owner=admin_user, scopes=["inference", "models:read"])
    APIToken.objects.filter(pk=token.pk).update(**limits)
    return token, secret


def chat(url, secret, model, content="Say hello.", **body) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 2, **body},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=60,
    )


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_rpm_3_gets_three_200s_then_429_with_retry_after_and_headers(live, admin_user, request, store):
    if store == "redis":
        request.getfixturevalue("redis_limits")
    url, _, model = live
    token, secret = limited(admin_user, rate_limit_rpm=3)
    started = time.monotonic()
    responses = [chat(url, secret, model) for _ in range(5)]
    elapsed = time.monotonic() - started
    assert [r.status_code for r in responses] == [200, 200, 200, 429, 429]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in responses] == ["2", "1", "0", "0", "0"]
    for response in responses:
        assert response.headers["x-ratelimit-limit-requests"] == "3"
        assert response.headers["x-ratelimit-reset-requests"].endswith("s")
        assert not {h for h in RATE_HEADERS if "tokens" in h} & set(response.headers)  # the token has no tpm
    refused = responses[3]
    assert 60 - elapsed - 1 <= int(refused.headers["Retry-After"]) <= 60  # when the first leaves the window
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert "3 requests per minute" in error["message"]
    assert UsageRecord.objects.filter(token=token).count() == 3  # the refused two are not billed


def test_tpm_refuses_the_second_request_by_construction(live, admin_user):
    url, _, model = live
    token, secret = limited(admin_user, rate_limit_tpm=50)
    prompt = "Please answer in one short sentence: what colour is the sky on a clear day, and why is that?"
    assert 20 + len(prompt) // 3 == 50  # the first reserves the whole budget; whatever it uses, none is left
    first = chat(url, secret, model, prompt, max_tokens=20)
    assert first.status_code == 200 and first.headers["x-ratelimit-limit-tokens"] == "50"
    second = chat(url, secret, model, prompt, max_tokens=20)
    assert second.status_code == 429, second.text
    assert "50 tokens per minute" in second.json()["error"]["message"]
    assert second.headers["x-ratelimit-remaining-tokens"] == "0"
    assert UsageRecord.objects.filter(token=token).count() == 1


def test_a_finished_request_counts_the_engines_tokens_not_the_estimate(live, admin_user):
    url, _, model = live
    token, secret = limited(admin_user, rate_limit_tpm=1000)
    first = chat(url, secret, model, max_tokens=8)
    assert first.headers["x-ratelimit-remaining-tokens"] == str(1000 - (8 + len("Say hello.") // 3))
    row = UsageRecord.objects.get(token=token)
    used = row.prompt_tokens + row.completion_tokens
    assert get_limiter().usage(str(token.pk)) == (1, used, 0)
    second = chat(url, secret, model, "Hi", max_tokens=4)
    assert second.headers["x-ratelimit-remaining-tokens"] == str(1000 - used - 4)


def test_a_request_larger_than_the_tpm_is_refused_naming_max_tokens(live, admin_user):
    url, _, model = live
    _, secret = limited(admin_user, rate_limit_tpm=50)
    refused = chat(url, secret, model, max_tokens=100)
    assert refused.status_code == 429 and refused.json()["error"]["param"] == "max_tokens"


def test_a_streamed_response_carries_the_headers(live, admin_user):
    url, _, model = live
    _, secret = limited(admin_user, rate_limit_rpm=10, rate_limit_tpm=1000)
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {secret}"}, timeout=60) as response:  # fmt: skip
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert set(response.headers) >= RATE_HEADERS
        assert response.headers["x-ratelimit-remaining-requests"] == "9"
        assert list(response.iter_lines())[-2] == "data: [DONE]"


def test_an_unlimited_token_gets_no_ratelimit_headers(live):
    url, secret, model = live
    response = chat(url, secret, model)
    assert response.status_code == 200 and not RATE_HEADERS & set(response.headers)


def test_max_concurrent_1_refuses_a_second_request_until_the_first_ends(live, admin_user):
    url, _, model = live
    token, secret = limited(admin_user, max_concurrent=1)
    body = {"model": model, "prompt": "Count: 1, 2, 3,", "max_tokens": 2000, "stream": True, "logit_bias": NO_EOS_BIAS}
    with (
        httpx.Client(timeout=60) as client,
        client.stream("POST", f"{url}/v1/completions", json=body, headers={"Authorization": f"Bearer {secret}"}) as r,
    ):
        lines = r.iter_lines()
        while not next(lines).startswith("data: {"):
            pass  # the first is generating
        second = chat(url, secret, model)
        assert second.status_code == 429
        assert second.json()["error"]["code"] == "concurrency_limit_exceeded"
        assert second.headers["Retry-After"] == "1"
        assert "1 request in flight" in second.json()["error"]["message"]
    assert wait_for(lambda: UsageRecord.objects.filter(token=token, status="cancelled").exists())
    assert chat(url, secret, model).status_code == 200
    assert UsageRecord.objects.filter(token=token).count() == 2


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
        ("/v1/completions", {"prompt": "Hi", "max_tokens": 2}),
        ("/v1/embeddings", {"input": "Hi"}),
        ("/inference", {"prompt": "Hi", "parameters": {"max_tokens": 2}}),
    ],
)
def test_every_generation_endpoint_is_limited(live, admin_user, path, body):
    url, _, model = live
    _, secret = limited(admin_user, rate_limit_rpm=1)
    key = "model_id" if path == "/inference" else "model"

    def post() -> httpx.Response:
        return httpx.post(f"{url}{path}", json={key: model, **body}, headers={"Authorization": f"Bearer {secret}"},
                          timeout=60)  # fmt: skip

    first, second = post(), post()
    assert (first.status_code, second.status_code) == (200, 429), second.text
    assert first.headers["x-ratelimit-remaining-requests"] == "0"
    assert second.json()["error"]["code"] == "rate_limit_exceeded" and int(second.headers["Retry-After"]) >= 1


def test_a_request_the_engine_refuses_gives_its_reservation_back(live, admin_user):
    url, _, model = live
    token, secret = limited(admin_user, rate_limit_rpm=1, rate_limit_tpm=100_000, max_concurrent=1)
    too_long = chat(url, secret, model, "word " * 5000)  # over the context: refused at tokenization
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "context_length_exceeded"
    assert get_limiter().usage(str(token.pk)) == (0, 0, 0)
    assert chat(url, secret, model).status_code == 200


def test_refusals_are_counted_in_metrics_and_never_billed(live, admin_user):
    url, secret, model = live
    token, limited_secret = limited(admin_user, rate_limit_rpm=1)

    def scrape() -> dict:
        return metric_samples(httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {secret}"}).text)

    before = scrape()
    assert chat(url, limited_secret, model).status_code == 200
    assert chat(url, limited_secret, model).status_code == 429
    after = scrape()
    for name, labels in [
        ("karenhost_requests_rejected_total", {("route", "/v1/chat/completions"), ("code", "429")}),
        ("karenhost_requests_limited_total", {("limit", "requests")}),
    ]:
        key = (name, frozenset(labels))
        assert after[key] - before.get(key, 0) == 1
    assert UsageRecord.objects.filter(token=token).count() == 1


@pytest.fixture
def second_web_node(live_server_url, redis_limits, tmp_path):
    """Another web server (karen_host.web, its own process and engine) on the test database and the same Redis."""
    server = WebServer(tmp_path / "web.log", REDIS_URL=REDIS_URL, CELERY_BROKER_URL="memory://")
    yield server.url
    server.stop()


def test_two_web_servers_share_one_rpm_budget_in_redis(live, admin_user, second_web_node):
    url, _, model = live
    token, secret = limited(admin_user, rate_limit_rpm=4)
    codes = [chat(server, secret, model).status_code for server in (url, second_web_node, url, second_web_node)]
    assert codes == [200, 200, 200, 200]
    refused = [chat(server, secret, model) for server in (url, second_web_node)]
    assert [r.status_code for r in refused] == [429, 429]
    assert all(r.headers["x-ratelimit-remaining-requests"] == "0" for r in refused)
    assert UsageRecord.objects.filter(token=token).count() == 4
    assert json.loads(refused[1].text)["error"]["code"] == "rate_limit_exceeded"


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_browser_client_may_read_the_headers(live, admin_user, settings):
    settings.CORS_ALLOWED_ORIGINS = ["https://karen.example"]
    url, _, model = live
    _, secret = limited(admin_user, rate_limit_rpm=2)
    response = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
        headers={"Authorization": f"Bearer {secret}", "Origin": "https://karen.example"},
        timeout=60,
    )
    exposed = {h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")}
    assert {"x-ratelimit-remaining-requests", "retry-after", "x-request-id"} <= exposed
