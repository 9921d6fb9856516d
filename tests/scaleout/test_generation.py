"""Chat, streaming and websocket generation through a web node in remote mode."""

import json

import httpx
import pytest
from django.test import Client
from websockets.sync.client import connect

from models_app.models import ModelConfig
from tests.conftest import metric_samples
from tests.scaleout.conftest import chat_body, stream_events, streamed_text


def forced_body() -> dict:
    """A chat whose text is fixed by its grammar: the same on every path by construction.

    Greedy text alone is not: a prompt reused from a slot's cache and one computed afresh
    differ in llama.cpp's arithmetic enough to flip a near-tie, and which one a request
    meets depends on what ran before it. A one-value enum leaves no choice but how to
    tokenize it, and every tokenization spells the same text.
    """
    schema = {"enum": ["red, green and blue"]}
    return chat_body(response_format={"type": "json_schema", "json_schema": {"name": "colours", "schema": schema}})


@pytest.fixture
def remote_text(nodes) -> str:
    response = httpx.post(f"{nodes.url}/v1/chat/completions", json=forced_body(), headers=nodes.headers, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


@pytest.mark.django_db(transaction=True)
def test_chat_through_the_web_node_gives_local_modes_text(remote_text, small_model, api_token, local_mode):
    ModelConfig.objects.filter(model=small_model).update(n_parallel=2)  # as the cluster's config
    response = Client().post(
        "/v1/chat/completions", data=json.dumps(forced_body()), content_type="application/json",
        headers={"Authorization": f"Bearer {api_token[1]}"},
    )  # fmt: skip
    assert response.status_code == 200, response.content
    assert remote_text == '"red, green and blue"' == response.json()["choices"][0]["message"]["content"]


def test_stream_through_the_web_node_gives_the_same_text(nodes, remote_text):
    frames = stream_events(nodes, forced_body())
    assert frames[-1] == "[DONE]"
    assert streamed_text(frames) == remote_text


def test_websocket_through_the_web_node_gives_the_same_text_and_usage(nodes, remote_text):
    url = nodes.url.replace("http://", "ws://") + "/ws/v1/generate"
    with connect(url, additional_headers=nodes.headers) as ws:
        ws.send(json.dumps({"type": "generate", "id": "w1", **forced_body()}))
        frames = [json.loads(ws.recv(timeout=120))]
        while frames[-1]["type"] not in ("done", "error"):
            frames.append(json.loads(ws.recv(timeout=120)))
    assert frames[0]["type"] == "start"
    assert frames[-1]["type"] == "done", frames[-1]
    assert "".join(f["text"] for f in frames if f["type"] == "token") == remote_text
    assert frames[-1]["usage"]["completion_tokens"] > 0


def test_each_request_is_metered_once_with_the_nodes_counts(nodes):
    before = {row["request_id"] for row in nodes.usage()}
    response = httpx.post(f"{nodes.url}/v1/chat/completions", json=chat_body(), headers=nodes.headers, timeout=120)
    assert response.status_code == 200
    new = [row for row in nodes.usage() if row["request_id"] not in before]
    assert len(new) == 1
    assert new[0]["status"] == "completed"
    assert new[0]["completion_tokens"] == response.json()["usage"]["completion_tokens"]
    assert new[0]["prompt_tokens"] == response.json()["usage"]["prompt_tokens"]


def test_embeddings_through_the_web_node(nodes):
    body = {"model": "smollm2", "input": ["hello", "a longer sentence to embed"]}
    response = httpx.post(f"{nodes.url}/v1/embeddings", json=body, headers=nodes.headers, timeout=120)
    assert response.status_code == 200, response.text
    vectors = [item["embedding"] for item in response.json()["data"]]
    assert len(vectors) == 2 and len(vectors[0]) == len(vectors[1]) > 0


def test_the_web_nodes_metrics_carry_the_nodes_per_model_series(nodes, remote_text):
    on_a = {("model", "smollm2"), ("node", "node-a")}
    scraped = {}

    def reported() -> bool:  # the node's counters reach the web node with its next heartbeat
        response = httpx.get(f"{nodes.url}/metrics", headers=nodes.headers, timeout=60)
        assert response.status_code == 200, response.text
        scraped.update(metric_samples(response.text))
        return scraped.get(("karenhost_queue_wait_seconds_count", frozenset(on_a)), 0) >= 1

    nodes.wait_for(reported, 30, "node-a's heartbeat to report the request in /metrics")
    assert scraped[("karenhost_slots", frozenset(on_a))] >= 1
    completed = frozenset({("endpoint", "chat.completions"), ("status", "completed")})
    assert scraped[("karenhost_requests_total", completed)] >= 1  # counted where it was answered
