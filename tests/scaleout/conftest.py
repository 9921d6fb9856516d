"""One scale-out deployment for the whole run: a web node in remote mode and two inference nodes."""

import json

import httpx
import pytest

from inference.engine import reset_engine
from tests.scaleout.cluster import Cluster, services_reachable

EOS = 2  # SmolLM2's <|im_end|>; suppressed where a test needs a known length


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    if reason := services_reachable():
        pytest.fail(f"the scale-out tests need PostgreSQL and Redis on 127.0.0.1: {reason}")
    deployment = Cluster(tmp_path_factory.mktemp("scaleout"))
    try:
        deployment.ensure_nodes("node-a", "node-b")
        deployment.start_web()
        yield deployment
    finally:
        deployment.stop()


@pytest.fixture
def nodes(cluster):
    """Both nodes up and allowed to load on demand, smollm2 placed on node-a and loaded there."""
    cluster.ensure_nodes("node-a", "node-b")
    cluster.sql("UPDATE models_app_inferencenode SET load_on_demand = true")
    cluster.sql("DELETE FROM models_app_modelplacement")
    cluster.place("smollm2", "node-a")
    cluster.wait_for(lambda: "smollm2" in cluster.node("node-a")["loaded"], 60, "node-a to load smollm2")
    return cluster


@pytest.fixture
def only_node_a_holds_the_model(nodes):
    """node-b restarted with nothing loaded, so routing sends every smollm2 job to node-a."""
    nodes.kill("node-b")
    nodes.ensure_nodes("node-a", "node-b")
    nodes.wait_for(lambda: not nodes.node("node-b")["loaded"], 10, "node-b to report an empty pool")
    return nodes


@pytest.fixture
def local_mode():
    """This test process's own engine (local mode), unloaded afterwards."""
    reset_engine()
    yield
    reset_engine()


def chat_body(content: str = "Name three colours.", *, max_tokens: int = 24, **extra) -> dict:
    return {"model": "smollm2", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, **extra}  # fmt: skip


def long_body(max_tokens: int) -> dict:
    """A greedy chat that produces exactly `max_tokens` tokens (end-of-generation suppressed)."""
    return chat_body("Tell me a long story.", max_tokens=max_tokens, logit_bias={str(EOS): -100})


def stream_events(cluster, body: dict, *, on_chunk=None) -> list[dict]:
    """POST a streaming chat; the parsed `data:` frames, `[DONE]` as the string."""
    frames: list = []
    with httpx.stream("POST", f"{cluster.url}/v1/chat/completions", json={**body, "stream": True},
                      headers=cluster.headers, timeout=120) as response:  # fmt: skip
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: "):
                frames.append("[DONE]" if line == "data: [DONE]" else json.loads(line[6:]))
                if on_chunk is not None and on_chunk(frames):
                    break
    return frames


def streamed_text(frames: list) -> str:
    return "".join(
        f["choices"][0]["delta"].get("content") or "" for f in frames if isinstance(f, dict) and f.get("choices")
    )
