"""Every admitted request is one usage row, finalized once with the engine's counts."""

import threading

import httpx

from inference.engine import get_engine
from models_app.models import LLMModel, UsageRecord
from models_app.services import close_interrupted_usage, issue_token, start_usage
from tests.conftest import wait_for
from tests.inference.conftest import NO_EOS_BIAS


def test_response_carries_the_request_id_of_its_usage_row(live):
    url, secret, model = live
    response = httpx.post(
        f"{url}/v1/completions",
        json={"model": model, "prompt": "Hello", "max_tokens": 4},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=60,
    )
    row = UsageRecord.objects.get()
    assert response.headers["X-Request-Id"] == row.request_id
    assert row.endpoint == "completions" and row.client_address == "127.0.0.1"
    assert row.time_to_first_token_ms > 0 and row.duration_ms >= row.time_to_first_token_ms


def test_disconnect_mid_stream_records_one_cancelled_usage(live):
    url, secret, model = live
    body = {"model": model, "prompt": "Count: 1, 2, 3,", "max_tokens": 2000, "stream": True, "logit_bias": NO_EOS_BIAS}
    with (
        httpx.Client(timeout=60) as client,
        client.stream("POST", f"{url}/v1/completions", json=body, headers={"Authorization": f"Bearer {secret}"}) as r,
    ):
        received = 0
        for line in r.iter_lines():
            if line.startswith("data: {"):
                received += 1
            if received == 5:
                break
    assert wait_for(lambda: UsageRecord.objects.filter(status="cancelled").exists())
    row = UsageRecord.objects.get()
    assert 5 <= row.completion_tokens < 2000
    loaded = get_engine().pool.get(model)
    assert wait_for(lambda: loaded.worker.in_flight == 0 and loaded.leases == 0)


def test_two_concurrent_first_requests_load_the_model_once(live, fresh_engine):
    url, secret, model = live
    codes = []

    def ask():
        r = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
            headers={"Authorization": f"Bearer {secret}"},
            timeout=60,
        )
        codes.append(r.status_code)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [200, 200]
    assert get_engine().pool.stats.loads == 1
    assert UsageRecord.objects.filter(status="completed").count() == 2


def test_a_model_that_fails_to_load_is_retried_later_while_another_keeps_serving(live, fresh_engine, tmp_path):
    url, secret, model = live
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\3\0\0\0" + b"\0" * 4096)
    LLMModel.objects.create(id="broken", name="broken", file_path=str(broken), file_size=4104)
    headers = {"Authorization": f"Bearer {secret}"}
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    failed = httpx.post(f"{url}/v1/chat/completions", json={"model": "broken", **chat}, headers=headers, timeout=60)
    assert failed.status_code == 503 and failed.json()["error"]["code"] == "model_load_failed"
    assert int(failed.headers["Retry-After"]) == 5 and str(tmp_path) not in failed.text  # no server path
    # not `invalid`: that is the probe's verdict on a file; a load may fail for a passing reason
    broken_row = LLMModel.objects.get(pk="broken")
    assert broken_row.status == "available" and broken_row.load_failures == 1
    assert "load" in broken_row.last_load_error and broken_row.load_retry_at is not None
    ok = httpx.post(f"{url}/v1/chat/completions", json={"model": model, **chat}, headers=headers, timeout=60)
    assert ok.status_code == 200
    assert not UsageRecord.objects.filter(model_id="broken").exists()


def test_keep_alive_zero_from_a_manage_token_unloads_after_the_request(live, fresh_engine, admin_user):
    url, _, model = live
    # Only a token that may unload models may shorten a keep-alive (tests/inference/api/test_keep_alive.py).
    _, secret = issue_token(name="ops", owner=admin_user, scopes=["inference", "models:manage"])
    httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "keep_alive": 0},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=60,
    )
    assert wait_for(lambda: not get_engine().pool.loaded(), timeout=30)


def test_reconciler_closes_rows_left_started(small_model):
    start_usage(request_id="crashed", token_id=None, model_id=small_model.id, endpoint="x", client_address=None)
    assert close_interrupted_usage() == 1
    assert UsageRecord.objects.get().status == "interrupted"
    assert close_interrupted_usage() == 0


def test_periodic_reconciler_closes_only_rows_older_than_any_request(small_model):
    from datetime import timedelta

    from django.utils import timezone

    for request_id in ("old", "live"):
        start_usage(request_id=request_id, token_id=None, model_id=small_model.id, endpoint="x", client_address=None)
    UsageRecord.objects.filter(request_id="old").update(created_at=timezone.now() - timedelta(hours=7))
    assert close_interrupted_usage(older_than_s=6 * 3600) == 1
    assert dict(UsageRecord.objects.values_list("request_id", "status")) == {"old": "interrupted", "live": "started"}
