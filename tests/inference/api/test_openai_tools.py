"""Tools, reasoning and `n` on /v1/chat/completions, through the official openai client, with the real model."""

import json

import httpx
import openai
import pytest
from jsonschema import validate

from inference.api.tool_formats import family
from models_app.models import LLMModel, UsageRecord
from tests.inference.conftest import NO_EOS_BIAS

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 20},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "integer", "minimum": -12, "maximum": 14}},
            "required": ["zone"],
        },
    },
}
# One call at most (parallel_tool_calls false) of bounded size: its grammar cannot run past MAX tokens, so every
# strict reply ends by construction, never by the token limit.
MAX = 200
ONE = {"parallel_tool_calls": False}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
# Hermes / Qwen 2.5: the template renders the tools, earlier calls and their results itself.
HERMES = (
    "{% if tools %}<|im_start|>system\nYou may call functions.\n<tools>\n{% for tool in tools %}{{ tool | tojson }}\n"
    '{% endfor %}</tools>\nFor each call return <tool_call>\n{"name": <name>, "arguments": <args>}\n</tool_call>'
    "<|im_end|>\n{% endif %}"
    "{% for message in messages %}"
    "{% if message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant\n"
    '{% for call in message.tool_calls %}<tool_call>\n{"name": "{{ call.function.name }}", "arguments": '
    "{{ call.function.arguments | tojson }}}\n</tool_call>{% endfor %}<|im_end|>\n"
    "{% elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n</tool_response>"
    "<|im_end|>\n"
    "{% else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _valid(call, tool):
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == tool["function"]["name"]
    validate(json.loads(call.function.arguments), tool["function"]["parameters"])


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_a_required_call_always_validates_against_its_schema(openai_client, live, choice):
    reply = openai_client.chat.completions.create(
        model=live[2], messages=ASK, tools=[WEATHER, TIME], tool_choice=choice, max_tokens=MAX, **ONE, temperature=0,
    )  # fmt: skip
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls" and message.content is None, message.content
    assert message.tool_calls
    for call in message.tool_calls:
        _valid(call, WEATHER if call.function.name == "get_weather" else TIME)
    if isinstance(choice, dict):
        assert {c.function.name for c in message.tool_calls} == {"get_weather"}
    row = UsageRecord.objects.get()
    assert (row.status, row.completion_tokens) == ("completed", reply.usage.completion_tokens)


def test_a_streamed_call_reassembles_in_the_sdks_stream_helper(openai_client, live):
    with openai_client.chat.completions.stream(
        model=live[2], messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=MAX, **ONE, temperature=0,
    ) as stream:  # fmt: skip
        for _ in stream:
            pass
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert final.choices[0].finish_reason == "tool_calls" and len(calls) >= 1
    for call in calls:
        _valid(call, WEATHER)
    plain = openai_client.chat.completions.create(
        model=live[2], messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=MAX, **ONE, temperature=0,
    )  # fmt: skip
    assert [c.function.arguments for c in plain.choices[0].message.tool_calls] == [c.function.arguments for c in calls]


def test_auto_gives_a_valid_call_or_an_answer(openai_client, live):
    reply = openai_client.chat.completions.create(
        model=live[2], messages=ASK, tools=[WEATHER], max_tokens=MAX, temperature=0,
    )  # fmt: skip
    message = reply.choices[0].message
    if message.tool_calls:
        assert reply.choices[0].finish_reason == "tool_calls"
        for call in message.tool_calls:
            _valid(call, WEATHER)
    else:
        assert message.content and "tool_calls" not in message.content


def test_a_two_turn_loop_call_result_answer(openai_client, live):
    first = openai_client.chat.completions.create(
        model=live[2], messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=MAX, **ONE, temperature=0,
    )  # fmt: skip
    call = first.choices[0].message.tool_calls[0]
    history = [
        *ASK,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 18, "sky": "clear"}'},
    ]
    second = openai_client.chat.completions.create(
        model=live[2], messages=history, tools=[WEATHER], tool_choice="none", max_tokens=20, temperature=0,
    )  # fmt: skip
    assert second.choices[0].message.content and not second.choices[0].message.tool_calls
    alone = openai_client.chat.completions.create(
        model=live[2], messages=ASK, tools=[WEATHER], tool_choice="none", max_tokens=1, temperature=0,
    )  # fmt: skip
    # the call and its result went into the prompt: at least the result's own tokens more
    assert second.usage.prompt_tokens > alone.usage.prompt_tokens + 10


def test_bad_tools_and_choices_are_refused_by_name(live):
    url, secret, model = live
    headers = {"Authorization": f"Bearer {secret}"}
    cases = [
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools.0.function.name"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
         "tool_choice.function.name"),
        ({"tool_choice": "required"}, None),
        ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format"),
        ({"chat_template_kwargs": {"messages": []}}, "chat_template_kwargs"),
        ({"modalities": ["audio"]}, None),
        ({"chat_template_kwargs": {"self": 1}}, "chat_template_kwargs"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"a": {"$id": "http://x/a", "$ref": "#/$defs/b"}},
            "$defs": {"b": {"type": "integer"}}}}}]}, "tools.0.function.parameters"),
    ]  # fmt: skip
    for extra, param in cases:
        response = httpx.post(f"{url}/v1/chat/completions", headers=headers,
                              json={"model": model, "messages": ASK, "max_tokens": 4, **extra})  # fmt: skip
        assert response.status_code == 400, (extra, response.text)
        if param:
            assert response.json()["error"]["param"] == param, response.json()
    assert not UsageRecord.objects.exists()


def test_hermes_template_gets_the_tools_and_its_calls_parse(openai_client, live, fresh_engine):
    LLMModel.objects.filter(pk=live[2]).update(chat_template=HERMES)
    reply = openai_client.chat.completions.create(
        model=live[2], messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=MAX, **ONE, temperature=0,
    )  # fmt: skip
    calls = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls" and calls
    for call in calls:
        _valid(call, WEATHER)
    streamed = list(openai_client.chat.completions.create(
        model=live[2], messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=MAX, **ONE, temperature=0,
        stream=True,
    ))  # fmt: skip
    heads = [d for c in streamed for d in (c.choices[0].delta.tool_calls or []) if d.id]
    assert [h.function.name for h in heads] == [c.function.name for c in calls]


def test_n_choices_each_metered(openai_client, live):
    reply = openai_client.chat.completions.create(
        model=live[2], messages=ASK, n=3, max_tokens=6, temperature=0.9, seed=1,
    )  # fmt: skip
    assert [c.index for c in reply.choices] == [0, 1, 2]
    rows = list(UsageRecord.objects.order_by("request_id"))
    assert len(rows) == 3 and {r.status for r in rows} == {"completed"}
    assert reply.usage.completion_tokens == sum(r.completion_tokens for r in rows)
    assert reply.usage.prompt_tokens == sum(r.prompt_tokens for r in rows)  # each choice read it in its own slot
    stream = openai_client.chat.completions.create(
        model=live[2], messages=ASK, n=2, max_tokens=6, temperature=0.9, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    finished = sorted(c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason)
    assert finished == [0, 1]
    assert chunks[-1].usage.completion_tokens == sum(
        r.completion_tokens for r in UsageRecord.objects.order_by("-created_at")[:2]
    )


def test_models_retrieve_by_id_or_alias(openai_client, live):
    model = openai_client.models.retrieve(live[2])
    assert model.id == live[2] and model.object == "model"
    assert openai_client.models.retrieve("smollm2:135m-instruct-q4_1").id == live[2]
    with pytest.raises(openai.NotFoundError):
        openai_client.models.retrieve("no-such-model")


# ChatML whose generation prompt opens <think> (Qwen3's way), or closes an empty one when thinking is off.
QWEN3_LIKE = (
    "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{% endif %}"
)


@pytest.fixture(scope="session")
def no_close(bundled_gguf):
    """A logit_bias that bans EOS and every token with a '<' in it: no "</think>" can be written."""
    from gguf import GGUFReader

    field = GGUFReader(bundled_gguf).fields["tokenizer.ggml.tokens"]
    tokens = [bytes(field.parts[i]).decode("utf-8", "replace") for i in field.data]
    return {**{str(i): -100 for i, token in enumerate(tokens) if "<" in token}, **NO_EOS_BIAS}


def test_reasoning_goes_apart_and_is_counted(openai_client, live, fresh_engine, no_close):
    LLMModel.objects.filter(pk=live[2]).update(chat_template=QWEN3_LIKE)
    # Thinking on: the output starts inside <think>; with EOS and "</" banned it never closes, so it is all reasoning.
    kwargs = {"model": live[2], "messages": ASK, "max_tokens": 8, "temperature": 0}
    thinking = openai_client.chat.completions.create(**kwargs, logit_bias=no_close)
    message = thinking.choices[0].message
    assert message.content == "" and message.model_extra["reasoning_content"]
    assert thinking.usage.completion_tokens_details.reasoning_tokens == thinking.usage.completion_tokens
    streamed = list(openai_client.chat.completions.create(**kwargs, logit_bias=no_close, stream=True))
    reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in streamed)
    assert reasoning == message.model_extra["reasoning_content"]
    assert not "".join(c.choices[0].delta.content or "" for c in streamed)
    # Off through chat_template_kwargs: the template closes an empty thought, so everything is the answer.
    off = openai_client.chat.completions.create(
        **kwargs, extra_body={"chat_template_kwargs": {"enable_thinking": False}}
    )
    assert off.choices[0].message.content and not off.choices[0].message.model_extra.get("reasoning_content")
    assert off.usage.completion_tokens_details.reasoning_tokens == 0


def test_a_grammar_from_the_first_token_turns_thinking_off(openai_client, live, fresh_engine):
    LLMModel.objects.filter(pk=live[2]).update(chat_template=QWEN3_LIKE)
    reply = openai_client.chat.completions.create(
        model=live[2], messages=ASK, max_tokens=40, temperature=0, response_format={"type": "json_object"},
    )  # fmt: skip
    message = reply.choices[0].message
    assert message.content.startswith("{") and not (message.model_extra or {}).get("reasoning_content")
    calls = openai_client.chat.completions.create(
        model=live[2], messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=MAX, temperature=0, **ONE,
    ).choices[0].message.tool_calls  # fmt: skip
    assert calls and calls[0].function.name == "get_weather"


def test_hostile_history_is_no_server_error(live):
    url, secret, model = live
    deep = "[" * 20000 + "]" * 20000
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": deep}}]},
        {"role": "tool", "tool_call_id": "unknown", "content": [{"type": "text", "text": "18C"}]}]  # fmt: skip
    for tools in (None, [WEATHER]):
        response = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                              json={"model": model, "messages": history, "max_tokens": 2, "tools": tools},
                              timeout=60)  # fmt: skip
        # the deep arguments go into the prompt as text: far past this model's context, and said so
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "context_length_exceeded"


def test_each_choice_reuses_the_first_ones_prompt(openai_client, live, fresh_engine):
    from inference.engine import get_engine

    def reused() -> int:
        loaded = get_engine().status()["loaded"]
        return sum(m["scheduler"]["prefix_tokens_reused"] for m in loaded) if loaded else 0

    # ~300 tokens: their prefill takes far longer than submitting the next choice does
    text = " ".join(f"river{i} meanders" for i in range(60))
    question = [{"role": "user", "content": f"A question no other test asks: {text}. Why?"}]
    openai_client.models.retrieve(live[2])
    reply = openai_client.chat.completions.create(model=live[2], messages=question, n=3, max_tokens=4,
                                                  temperature=0.8, seed=5)  # fmt: skip
    prompt = reply.usage.prompt_tokens // 3
    # Choices 2 and 3 were admitted after choice 1's first token: their prompt came from its slot
    # (copied, or their own slot if choice 1 had left it), never computed again.
    assert reused() >= 2 * (prompt - 1)


def test_a_gguf_with_a_hermes_template_is_detected_rendered_and_parsed(openai_client, live, models_dir, bundled_gguf):
    """A copy of the bundled GGUF whose tokenizer.chat_template is Hermes-style, made with gguf_new_metadata."""
    import subprocess
    import sys

    from models_app.scanning import scan_models

    target = models_dir / "smol-hermes.gguf"
    subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", str(bundled_gguf), str(target),
                    "--chat-template", HERMES, "--force"], check=True, capture_output=True, timeout=120)  # fmt: skip
    [added] = scan_models(models_dir).added
    model = LLMModel.objects.get(pk=added)
    assert model.chat_template == HERMES and family(model.chat_template) == "hermes"
    url, secret, _ = live
    rendered = httpx.post(f"{url}/v1/tokenize", headers={"Authorization": f"Bearer {secret}"},
                          json={"model": model.id, "messages": ASK, "return_token_strs": True}).json()  # fmt: skip
    assert rendered["count"] > 0
    reply = openai_client.chat.completions.create(
        model=model.id, messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=MAX, temperature=0, **ONE,
    )  # fmt: skip
    [call] = reply.choices[0].message.tool_calls
    _valid(call, WEATHER)
    # The template got the tools: the prompt holds their JSON, which the bare ChatML prompt does not.
    bare = openai_client.chat.completions.create(model=model.id, messages=ASK, max_tokens=1)
    assert reply.usage.prompt_tokens > bare.usage.prompt_tokens + 20
