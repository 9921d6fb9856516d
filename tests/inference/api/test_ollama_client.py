"""The official `ollama` Python client, unchanged, against a live server with the real model."""

import ollama
import pytest

from models_app.models import UsageRecord

OLLAMA_NAME = "smollm2:135m-instruct-q4_1"
CHAT = [{"role": "user", "content": "Say hello."}]
OPTIONS = {"num_predict": 8, "temperature": 0}


@pytest.fixture
def client(live):
    url, secret, _ = live
    return ollama.Client(host=url, headers={"Authorization": f"Bearer {secret}"}, timeout=60)


def test_chat_returns_a_message_with_counts(client):
    reply = client.chat(model=OLLAMA_NAME, messages=CHAT, options=OPTIONS)
    assert reply.message.role == "assistant" and reply.message.content
    assert reply.done and reply.done_reason in ("stop", "length")
    assert 0 < reply.eval_count <= 8 and reply.prompt_eval_count > 0
    assert reply.total_duration >= reply.eval_duration > 0
    row = UsageRecord.objects.get()
    assert (row.model_id, row.endpoint, row.status) == ("smollm2", "ollama.chat", "completed")
    assert (row.prompt_tokens, row.completion_tokens) == (reply.prompt_eval_count, reply.eval_count)


def test_chat_stream_gives_the_same_greedy_text(client):
    plain = client.chat(model=OLLAMA_NAME, messages=CHAT, options=OPTIONS).message.content
    parts = list(client.chat(model=OLLAMA_NAME, messages=CHAT, options=OPTIONS, stream=True))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.message.content for p in parts) == plain
    assert parts[-1].eval_count == UsageRecord.objects.order_by("created_at").last().completion_tokens


def test_generate_answers_a_prompt(client):
    reply = client.generate(model=OLLAMA_NAME, prompt="The capital of France is", options=OPTIONS)
    assert reply.response and reply.done and 0 < reply.eval_count <= 8
    assert UsageRecord.objects.get().endpoint == "ollama.generate"


def test_generate_stream(client):
    parts = list(client.generate(model=OLLAMA_NAME, prompt="1, 2, 3,", options=OPTIONS, stream=True))
    assert "".join(p.response for p in parts) and parts[-1].done and parts[-1].done_reason in ("stop", "length")


def test_json_format_gives_json(client):
    reply = client.chat(model=OLLAMA_NAME, messages=[{"role": "user", "content": "A person, as JSON."}],
                        format="json", options={"num_predict": 40, "temperature": 0})  # fmt: skip
    assert reply.message.content.lstrip().startswith("{")


def test_embed_is_normalised_and_metered(client):
    result = client.embed(model=OLLAMA_NAME, input=["hello world", "goodbye"])
    assert [len(v) for v in result.embeddings] == [576, 576]
    assert abs(sum(x * x for x in result.embeddings[0]) - 1) < 1e-3
    assert result.prompt_eval_count == UsageRecord.objects.get().prompt_tokens > 0


def test_legacy_embeddings(client):
    result = client.embeddings(model=OLLAMA_NAME, prompt="hello world")
    assert len(result.embedding) == 576


def test_list_shows_the_model_once_with_its_names(client):
    models = client.list().models
    assert [m.model for m in models] == [OLLAMA_NAME]
    assert models[0].details.family == "llama" and models[0].details.quantization_level == "Q4_1"
    assert models[0].size > 0


def test_show_has_template_details_and_model_info(client):
    info = client.show(OLLAMA_NAME)
    assert "<|im_start|>" in info.template
    assert info.details.parameter_size == "135M"
    assert info.modelinfo["general.architecture"] == "llama"
    assert info.modelinfo["llama.context_length"] == 8192
    assert "temperature" in info.parameters


def test_ps_lists_what_is_loaded(client):
    client.generate(model=OLLAMA_NAME, prompt="Hi", options={"num_predict": 1})
    loaded = client.ps().models
    assert [m.model for m in loaded] == [OLLAMA_NAME]
    assert loaded[0].size > 0 and loaded[0].size_vram == 0  # this build runs on the CPU
    assert loaded[0].expires_at is not None


def test_unknown_model_is_a_response_error_404(client):
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model="no-such-model:7b", messages=CHAT)
    assert caught.value.status_code == 404
    assert 'model "no-such-model:7b" not found' in caught.value.error


def test_pull_says_what_to_do_instead(client):
    with pytest.raises(ollama.ResponseError) as caught:
        client.pull("llama3.2")
    assert caught.value.status_code == 501 and "MODELS_DIR" in caught.value.error


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather now in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
        },
    },
}


def test_chat_with_tools_returns_a_valid_call_or_an_answer(client):
    question = [{"role": "user", "content": "What is the weather in Paris? Use the tool."}]
    reply = client.chat(model=OLLAMA_NAME, messages=question, tools=[WEATHER],
                        options={"num_predict": 48, "temperature": 0})  # fmt: skip
    assert reply.done_reason == "stop"  # the grammar closed the JSON object within the budget
    if reply.message.tool_calls:  # a call names a real tool with arguments its schema accepts, by construction
        assert reply.message.content == ""
        for call in reply.message.tool_calls:
            assert call.function.name == "get_weather" and isinstance(call.function.arguments["city"], str)
    else:
        assert isinstance(reply.message.content, str)
    plain = client.chat(model=OLLAMA_NAME, messages=question, options={"num_predict": 1})
    assert reply.prompt_eval_count > plain.prompt_eval_count  # the tools' instruction is in the prompt


def test_a_tool_result_continues_the_conversation(client):
    history = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather",
                                                                            "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "18 degrees and sunny", "tool_name": "get_weather"},
    ]  # fmt: skip
    parts = list(client.chat(model=OLLAMA_NAME, messages=history, tools=[WEATHER], stream=True,
                             options={"num_predict": 48, "temperature": 0}))  # fmt: skip
    assert [p.done for p in parts] == [False, True]  # with tools the reply comes whole, then done
    assert parts[0].message.tool_calls or isinstance(parts[0].message.content, str)
    assert parts[1].eval_count == UsageRecord.objects.get().completion_tokens
