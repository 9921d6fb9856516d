"""Model aliases resolve on every surface: /v1, /api (Ollama), the native API and the websocket."""

import asyncio
import json

import httpx
import pytest
import websockets

from models_app.models import LLMModel, ModelAlias, ModelConfig, UsageRecord
from models_app.services import issue_token

CHAT = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def gpt_alias(small_model):
    return ModelAlias.objects.create(name="gpt-4o-mini", model=small_model)


def test_an_openai_name_serves_the_model_and_usage_records_the_model(openai_client, gpt_alias):
    reply = openai_client.chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=2)
    assert reply.model == "smollm2"
    assert UsageRecord.objects.get().model_id == "smollm2"


def test_embedding_names_resolve_too(openai_client, small_model):
    ModelAlias.objects.create(name="text-embedding-3-small", model=small_model)
    result = openai_client.embeddings.create(model="text-embedding-3-small", input="hello")
    assert len(result.data[0].embedding) == 576


def test_v1_models_lists_each_model_once_with_its_aliases(openai_client, gpt_alias):
    [listed] = openai_client.models.list()
    assert listed.id == "smollm2"
    assert listed.model_extra["aliases"] == ["smollm2:135m-instruct-q4_1", "gpt-4o-mini"]


def test_ollama_names_resolve_with_and_without_the_latest_tag(live, small_model):
    ModelAlias.objects.create(name="karen:latest", model=small_model)
    headers = {"Authorization": f"Bearer {live[1]}"}
    for name in ("karen", "karen:latest", "SMOLLM2:135M-Instruct-Q4_1", "smollm2:latest"):
        body = {"model": name, "prompt": "Hi", "stream": False, "options": {"num_predict": 1}}
        reply = httpx.post(f"{live[0]}/api/generate", json=body, headers=headers, timeout=60)
        assert reply.status_code == 200, (name, reply.text)
        assert reply.json()["model"] == name  # Ollama echoes the name it was asked for
    assert set(UsageRecord.objects.values_list("model_id", flat=True)) == {"smollm2"}


def test_tags_lists_the_model_once_with_every_name(live, gpt_alias):
    reply = httpx.get(f"{live[0]}/api/tags", headers={"Authorization": f"Bearer {live[1]}"}, timeout=30)
    [entry] = reply.json()["models"]
    assert entry["name"] == "smollm2:135m-instruct-q4_1"
    assert entry["aliases"] == ["smollm2", "gpt-4o-mini"]


def test_allowed_models_apply_whatever_name_is_used(live, small_model, gguf_copy, admin_user):
    other = LLMModel.objects.create(id="other", name="Other", file_path=str(gguf_copy))
    ModelConfig.objects.create(model=other, n_ctx=512)
    ModelAlias.objects.create(name="gpt-4o-mini", model=small_model)
    _, secret = issue_token(name="narrow", owner=admin_user, scopes=["inference", "models:read"], models=["other"])
    headers = {"Authorization": f"Bearer {secret}"}
    body = {"model": "gpt-4o-mini", "messages": CHAT, "max_tokens": 2}
    assert httpx.post(f"{live[0]}/v1/chat/completions", json=body, headers=headers, timeout=60).status_code == 403
    ollama_body = {"model": "smollm2:135m-instruct-q4_1", "messages": CHAT, "stream": False}
    reply = httpx.post(f"{live[0]}/api/chat", json=ollama_body, headers=headers, timeout=60)
    assert reply.status_code == 403 and "may not use 'smollm2'" in reply.json()["error"]
    tags = httpx.get(f"{live[0]}/api/tags", headers=headers, timeout=30).json()["models"]
    assert [t["model"] for t in tags] == ["other"]  # registered by hand: no Ollama name, so its id
    assert not UsageRecord.objects.exists()


def test_the_websocket_resolves_an_alias(live, gpt_alias):
    async def run() -> list[dict]:
        url = live[0].replace("http", "ws", 1) + "/ws/v1/generate"
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {live[1]}"}) as ws:
            await ws.send(json.dumps({"type": "generate", "id": "a", "model": "gpt-4o-mini", "messages": CHAT,
                                      "max_tokens": 2}))  # fmt: skip
            frames = []
            while not frames or frames[-1]["type"] not in ("done", "error"):
                frames.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
            return frames

    frames = asyncio.run(run())
    assert frames[0] == {"type": "start", "id": "a", "model": "smollm2"}
    assert frames[-1]["type"] == "done"
    assert UsageRecord.objects.get().model_id == "smollm2"


def test_native_inference_takes_an_alias(live, gpt_alias):
    body = {"prompt": "Hi", "model_id": "gpt-4o-mini", "parameters": {"max_tokens": 2}}
    reply = httpx.post(f"{live[0]}/inference", json=body, headers={"Authorization": f"Bearer {live[1]}"}, timeout=60)
    assert reply.status_code == 200 and reply.json()["model_id"] == "smollm2"
