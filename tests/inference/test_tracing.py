"""Traces: a span per request, its request id an attribute, with model load, queue wait, prefill and decode."""

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from inference import tracing
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    assert tracing.configure(exporter)
    yield exporter
    tracing.stop()


def test_a_request_is_one_span_with_its_phases(client, small_model, api_token, spans, fresh_engine):
    body = {"model": small_model.id, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    response = client.post("/v1/chat/completions", body, content_type="application/json",
                           HTTP_AUTHORIZATION=f"Bearer {api_token[1]}")  # fmt: skip
    assert response.status_code == 200
    assert wait_for(lambda: any(s.name == "chat.completions" for s in spans.get_finished_spans()), timeout=30)
    finished = spans.get_finished_spans()
    (root,) = [s for s in finished if s.name == "chat.completions"]
    assert root.attributes["karen.request_id"] == response["X-Request-Id"]
    assert root.attributes["gen_ai.request.model"] == small_model.id
    assert root.attributes["gen_ai.usage.output_tokens"] == 3 and root.attributes["karen.status"] == "completed"
    children = {s.name: s for s in finished if s.parent is not None and s.parent.span_id == root.context.span_id}
    assert {"model_load", "prefill", "decode"} <= set(children)  # a fresh engine: this request loaded the model
    for child in children.values():
        assert root.start_time <= child.start_time <= child.end_time <= root.end_time
    assert children["model_load"].end_time <= children["prefill"].start_time <= children["decode"].start_time


def test_tracing_is_off_without_an_endpoint(monkeypatch):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    assert tracing.configure() is False


def test_an_otlp_endpoint_turns_it_on(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    try:
        assert tracing.configure() is True
    finally:
        tracing.stop()
