"""GET /metrics: Prometheus' text format over the live server's real counters."""

import threading
import time

import httpx

from inference.engine import get_engine
from models_app.models import UsageRecord
from tests.conftest import metric_samples
from tests.inference.conftest import NO_EOS_BIAS


def scrape(live) -> dict[tuple[str, frozenset], float]:
    """Every sample of one scrape, keyed by (sample name, labels)."""
    url, secret, _ = live
    response = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {secret}"}, timeout=60)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return metric_samples(response.text)


def of_model(samples, name: str, model: str) -> float:
    return samples[(name, frozenset({("model", model)}))]


def complete(live, **body) -> httpx.Response:
    url, secret, model = live
    return httpx.post(f"{url}/v1/completions", json={"model": model, **body},
                      headers={"Authorization": f"Bearer {secret}"}, timeout=60)  # fmt: skip


def test_metrics_needs_a_token(live):
    assert httpx.get(f"{live[0]}/metrics", timeout=60).status_code == 401


def test_metrics_count_requests_tokens_prefix_hits_and_queue_waits(live, fresh_engine):
    model = live[2]
    before = scrape(live)
    prompt = "You are KAREN, a careful assistant who answers in one short sentence. Say hello."
    bodies = [complete(live, prompt=prompt, max_tokens=3, temperature=0).json() for _ in range(2)]
    assert complete(live, prompt="Hi", max_tokens=2, mirostat=2).status_code == 400
    assert httpx.get(f"{live[0]}/models", timeout=60).status_code == 401
    unload = httpx.post(f"{live[0]}/models/unload/{model}", headers={"Authorization": f"Bearer {live[1]}"}, timeout=60)
    assert unload.status_code == 403  # this token may read models, not manage them
    after = scrape(live)

    def grew(name: str, labels: dict[str, str] | None = None) -> float:
        key = (name, frozenset((labels or {}).items()))
        return after[key] - before.get(key, 0.0)

    assert grew("karenhost_requests_total", {"endpoint": "completions", "status": "completed"}) == 2
    assert grew("karenhost_requests_rejected_total", {"route": "/v1/completions", "code": "400"}) == 1
    assert grew("karenhost_requests_rejected_total", {"route": "/models", "code": "401"}) == 1
    # A path parameter stays a parameter in the label, so the label's values stay few.
    assert grew("karenhost_requests_rejected_total", {"route": "/models/unload/<model_id>", "code": "403"}) == 1
    assert grew("karenhost_completion_tokens_total") == sum(b["usage"]["completion_tokens"] for b in bodies)
    assert grew("karenhost_prompt_tokens_total") == sum(b["usage"]["prompt_tokens"] for b in bodies)
    # The model was loaded by the first request, so its counters are this test's own.
    assert of_model(after, "karenhost_slots", model) == 4
    assert of_model(after, "karenhost_requests_running", model) == 0
    assert of_model(after, "karenhost_requests_waiting", model) == 0
    assert of_model(after, "karenhost_prefix_cache_hits_total", model) == 1  # the second request
    reused = of_model(after, "karenhost_prefix_cache_tokens_reused_total", model)
    assert reused == bodies[0]["usage"]["prompt_tokens"] - 1  # all but the last token, decoded anew
    assert of_model(after, "karenhost_queue_wait_seconds_count", model) == 2
    assert of_model(after, "karenhost_queue_wait_seconds_sum", model) > 0
    assert of_model(after, "karenhost_model_memory_estimated_bytes", model) > 50 * 2**20
    assert after[("karenhost_models_loaded", frozenset())] == 1
    assert after[("karenhost_memory_used_bytes", frozenset())] > 0
    assert after[("karenhost_pool_loads_total", frozenset())] == 1
    assert after[("process_resident_memory_bytes", frozenset())] > 0


def test_a_request_waiting_past_queue_timeout_gets_503_and_is_counted(live, one_slot, settings):
    settings.QUEUE_TIMEOUT_S = 1.0  # from entering the queue (the model load before it is not counted)
    url, secret, model = live
    headers = {"Authorization": f"Bearer {secret}"}
    before = scrape(live)
    long = {"model": model, "prompt": "Count:", "max_tokens": 2000, "stream": True, "logit_bias": NO_EOS_BIAS}
    with httpx.Client(timeout=60) as client, client.stream("POST", f"{url}/v1/completions", json=long, headers=headers):
        results = []
        waiter = threading.Thread(target=lambda: results.append(complete(live, prompt="Wait.", max_tokens=2)))
        waiter.start()
        waiter.join(timeout=60)  # the stream holds the only slot until this block ends
        assert not waiter.is_alive()
        samples = scrape(live)
    refused = results[0]
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
    error = refused.json()["error"]
    assert error["code"] == "queue_timeout" and "queue" in error["message"]
    assert of_model(samples, "karenhost_queue_timeouts_total", model) == 1
    assert of_model(samples, "karenhost_requests_running", model) == 1
    # Admitted and billed: a finished request that timed out, not a refusal.
    timeouts = ("karenhost_requests_total", frozenset({("endpoint", "completions"), ("status", "timeout")}))
    assert samples[timeouts] == before.get(timeouts, 0) + 1
    refusals = ("karenhost_requests_rejected_total", frozenset({("route", "/v1/completions"), ("code", "503")}))
    assert samples.get(refusals, 0) == before.get(refusals, 0)
    usage = UsageRecord.objects.get(request_id=refused.headers["X-Request-ID"])
    assert usage.status == "timeout" and usage.completion_tokens == 0
    deadline = time.time() + 60  # the stream's slot is freed once its client is gone
    while get_engine().pool.get(model).worker.running and time.time() < deadline:
        time.sleep(0.05)
    assert get_engine().pool.get(model).worker.running == 0
