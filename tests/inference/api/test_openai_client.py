"""The official openai client, unchanged, against a live server with the real model."""

import json

import openai
import pytest

from models_app.models import UsageRecord

CHAT = [{"role": "user", "content": "Say hello."}]


def test_models_list_shows_the_registered_model(openai_client, live):
    ids = [m.id for m in openai_client.models.list()]
    assert ids == [live[2]]


def test_chat_completion_returns_text_and_usage(openai_client, live):
    reply = openai_client.chat.completions.create(model=live[2], messages=CHAT, max_tokens=8, temperature=0)
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert 0 < reply.usage.completion_tokens <= 8
    row = UsageRecord.objects.get()
    assert (row.status, row.prompt_tokens, row.completion_tokens) == (
        "completed",
        reply.usage.prompt_tokens,
        reply.usage.completion_tokens,
    )


def test_chat_stream_ends_with_usage_when_asked(openai_client, live):
    stream = openai_client.chat.completions.create(
        model=live[2], messages=CHAT, max_tokens=8, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text and finishes in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 8
    assert UsageRecord.objects.get().completion_tokens == chunks[-1].usage.completion_tokens


def test_usage_says_how_many_prompt_tokens_were_cached(openai_client, live):
    # The same prompt twice: the second finds the first's KV (in a slot or the prompt cache) and computes
    # only its last token again; the first, never sent before, found less.
    messages = [{"role": "user", "content": "Which prompt tokens were cached, and how many? A unique question 7"}]
    first = openai_client.chat.completions.create(model=live[2], messages=messages, max_tokens=2, temperature=0)
    again = openai_client.chat.completions.create(
        model=live[2], messages=messages, max_tokens=2, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    usage = list(again)[-1].usage
    assert usage.prompt_tokens == first.usage.prompt_tokens
    assert usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens - 1
    assert first.usage.prompt_tokens_details.cached_tokens < usage.prompt_tokens_details.cached_tokens


def test_stream_and_plain_give_the_same_greedy_text(openai_client, live):
    kwargs = {"model": live[2], "messages": CHAT, "max_tokens": 12, "temperature": 0, "seed": 7}
    plain = openai_client.chat.completions.create(**kwargs).choices[0].message.content
    streamed = "".join(
        c.choices[0].delta.content or "" for c in openai_client.chat.completions.create(stream=True, **kwargs)
    )
    assert plain == streamed


def test_completions_continue_a_prompt(openai_client, live):
    reply = openai_client.completions.create(model=live[2], prompt="The capital of France is", max_tokens=6)
    assert reply.choices[0].text and reply.usage.completion_tokens <= 6


def test_completions_stream(openai_client, live):
    chunks = list(openai_client.completions.create(model=live[2], prompt="1, 2, 3,", max_tokens=6, stream=True))
    assert "".join(c.choices[0].text for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_embeddings_have_the_model_width(openai_client, live):
    result = openai_client.embeddings.create(model=live[2], input=["hello world", "goodbye"])
    assert [len(d.embedding) for d in result.data] == [576, 576]
    assert result.usage.prompt_tokens > 0
    assert abs(sum(x * x for x in result.data[0].embedding) - 1) < 1e-3  # normalized


def test_json_schema_output_parses_and_matches(openai_client, live):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    reply = openai_client.chat.completions.create(
        model=live[2],
        messages=[{"role": "user", "content": "Describe a person as JSON."}],
        max_tokens=48,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
    )
    data = json.loads(reply.choices[0].message.content)
    assert set(data) == {"name", "age"} and isinstance(data["age"], int) and isinstance(data["name"], str)


def test_json_object_mode_gives_an_object(openai_client, live):
    reply = openai_client.chat.completions.create(
        model=live[2], messages=[{"role": "user", "content": "A JSON object please."}], max_tokens=32,
        temperature=0, response_format={"type": "json_object"},
    )  # fmt: skip
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(reply.choices[0].message.content), dict)
    else:
        assert reply.choices[0].message.content.lstrip().startswith("{")


def test_unknown_model_is_404_saying_where_to_look(openai_client):
    with pytest.raises(openai.NotFoundError) as err:
        openai_client.chat.completions.create(model="no-such-model", messages=CHAT, max_tokens=4)
    assert "GET /v1/models" in err.value.body["message"] and err.value.body["param"] == "model"


def test_bad_key_is_401(live):
    client = openai.OpenAI(base_url=f"{live[0]}/v1", api_key="khk_" + "x" * 43, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
