"""Ollama's `think`: a reasoning template's thinking returned apart from the answer."""

import json

import httpx
import pytest

from inference.api.thinking import ThinkingSplitter
from models_app.models import LLMModel, UsageRecord

# ChatML with Qwen3's switch: the generation prompt opens <think>, or closes an empty one when thinking is off.
QWEN3_LIKE = (
    "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{% endif %}"
)
# Mentions the switch but opens nothing: the answer would have to open <think> itself.
SWITCH_ONLY = QWEN3_LIKE.replace("{% else %}<think>\n", "{% else %}")
NAME = "smollm2:135m-instruct-q4_1"
HI = [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.mark.parametrize(
    ("inside", "text", "thinking", "content"),
    [
        (True, "step one\nstep two</think>\n\nThe answer is 4.", "step one\nstep two", "The answer is 4."),
        (False, "\n<think>hmm</think>4", "hmm", "4"),
        (False, "Just 4, <think> is only text here", "", "Just 4, <think> is only text here"),
        (True, "never closed </thin", "never closed </thin", ""),
        (False, "  ", "", "  "),
        (True, "</think>", "", ""),
    ],
)
def test_every_way_of_cutting_the_stream_splits_the_same(inside, text, thinking, content):
    assert ThinkingSplitter(inside=inside).split(text) == (thinking, content)
    for cut in range(len(text) + 1):
        for second_cut in range(cut, len(text) + 1):
            splitter = ThinkingSplitter(inside=inside)
            parts = [splitter.feed(text[:cut]), splitter.feed(text[cut:second_cut]), splitter.feed(text[second_cut:])]
            parts.append(splitter.finish())
            assert ("".join(p[0] for p in parts), "".join(p[1] for p in parts)) == (thinking, content), (
                cut,
                second_cut,
            )


@pytest.fixture
def thinking_model(live, small_model, fresh_engine):  # fresh: a loaded model keeps the template it loaded with
    LLMModel.objects.filter(pk=small_model.pk).update(chat_template=QWEN3_LIKE)
    return httpx.Client(base_url=live[0], headers={"Authorization": f"Bearer {live[1]}"}, timeout=60)


def _chat(api: httpx.Client, **fields) -> dict:
    # "</think>" as a stop string: the reply never closes the block, so all of it is thinking, by construction
    body = {"model": NAME, "messages": HI, "stream": False,
            "options": {"num_predict": 6, "temperature": 0, "stop": ["</think>"]}, **fields}  # fmt: skip
    reply = api.post("/api/chat", json=body)
    assert reply.status_code == 200, reply.text
    return reply.json() if not fields.get("stream") else [json.loads(line) for line in reply.text.splitlines()]


def test_think_true_returns_the_thinking_apart(thinking_model):
    reply = _chat(thinking_model, think=True)
    assert reply["message"]["thinking"] and reply["message"]["content"] == ""
    assert reply["eval_count"] == UsageRecord.objects.get().completion_tokens


def test_think_true_streams_thinking_in_its_own_field(thinking_model):
    lines = _chat(thinking_model, think=True, stream=True)
    assert lines[-1]["done"] is True
    assert "".join(line["message"].get("thinking", "") for line in lines[:-1])
    assert all(line["message"]["content"] == "" for line in lines)


def test_think_false_closes_the_block_in_the_prompt(thinking_model):
    off = _chat(thinking_model, think=False)
    on = _chat(thinking_model, think=True)
    assert "thinking" not in off["message"]
    assert off["prompt_eval_count"] > on["prompt_eval_count"]  # "<think>\n\n</think>\n\n" against "<think>\n"


def test_unset_think_leaves_the_output_as_it_comes(thinking_model):
    reply = _chat(thinking_model)
    assert "thinking" not in reply["message"] and reply["message"]["content"]


def test_generate_has_a_top_level_thinking_field(thinking_model):
    body = {"model": NAME, "prompt": "What is 2 + 2?", "think": True, "stream": False,
            "options": {"num_predict": 4, "temperature": 0, "stop": ["</think>"]}}  # fmt: skip
    reply = thinking_model.post("/api/generate", json=body).json()
    assert reply["thinking"] and reply["response"] == ""


def test_a_template_that_opens_nothing_gives_the_answer_as_content(live, small_model, fresh_engine):
    LLMModel.objects.filter(pk=small_model.pk).update(chat_template=SWITCH_ONLY)
    api = httpx.Client(base_url=live[0], headers={"Authorization": f"Bearer {live[1]}"}, timeout=60)
    reply = _chat(api, think=True)
    assert reply["message"]["thinking"] == "" and reply["message"]["content"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"think": "high"}, "send true or false"),
        ({"raw": True, "think": True}, "think has no effect with raw: true"),
    ],
)
def test_what_think_cannot_do_is_refused(thinking_model, fields, message):
    reply = thinking_model.post("/api/generate", json={"model": NAME, "prompt": "x", **fields})
    assert reply.status_code == 400 and message in reply.json()["error"]
