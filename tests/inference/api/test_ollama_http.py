"""Ollama's API on the wire: NDJSON framing, nanosecond durations, load/unload, errors in Ollama's shape."""

import json

import httpx
import pytest

from inference.engine import get_engine
from models_app.models import UsageRecord
from models_app.services import issue_token

NAME = "smollm2:135m-instruct-q4_1"
USER = [{"role": "user", "content": "x"}]
TOOL = {"type": "function", "function": {"name": "f"}}
BAD_CALL = [*USER, {"role": "assistant", "tool_calls": [{"function": "x"}]}]
BAD_SCHEMA = {"type": "function", "function": {"name": "f", "parameters": {"type": "bogus"}}}


@pytest.fixture
def api(live):
    url, secret, _ = live
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {secret}"}, timeout=60)


@pytest.fixture
def manager(live, admin_user):
    _, secret = issue_token(name="ops", owner=admin_user, scopes=["inference", "models:read", "models:manage"])
    return httpx.Client(base_url=live[0], headers={"Authorization": f"Bearer {secret}"}, timeout=60)


def _lines(response: httpx.Response) -> list[dict]:
    raw = response.text
    assert raw.endswith("\n")
    return [json.loads(line) for line in raw.splitlines()]


def test_streaming_is_the_default_one_json_object_per_line(api):
    body = {"model": NAME, "messages": [{"role": "user", "content": "Hi"}], "options": {"num_predict": 4}}
    reply = api.post("/api/chat", json=body)
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/x-ndjson"
    lines = _lines(reply)
    assert len(lines) >= 2 and [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    assert all(line["model"] == NAME and line["created_at"].endswith("Z") for line in lines)
    assert all(line["message"]["role"] == "assistant" for line in lines)
    assert lines[-1]["message"]["content"] == ""


def test_the_final_object_has_counts_and_nanosecond_durations(api):
    reply = api.post("/api/generate", json={"model": NAME, "prompt": "Hi", "stream": False,
                                            "options": {"num_predict": 3}})  # fmt: skip
    final = reply.json()
    for field in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
                  "eval_duration"):  # fmt: skip
        assert isinstance(final[field], int), field
    assert final["done_reason"] in ("stop", "length")
    assert final["total_duration"] >= final["prompt_eval_duration"] + final["eval_duration"]
    row = UsageRecord.objects.get()
    assert (final["prompt_eval_count"], final["eval_count"]) == (row.prompt_tokens, row.completion_tokens)
    # nanoseconds: the usage row's milliseconds times a million, to within a millisecond
    assert abs(final["total_duration"] / 1e6 - row.duration_ms) < 1.0


def test_raw_generate_sends_the_prompt_untemplated(api):
    reply = api.post("/api/generate", json={"model": NAME, "prompt": "1, 2, 3,", "raw": True, "stream": False,
                                            "options": {"num_predict": 2, "temperature": 0}})  # fmt: skip
    templated = api.post("/api/generate", json={"model": NAME, "prompt": "1, 2, 3,", "stream": False,
                                                "options": {"num_predict": 2, "temperature": 0}})  # fmt: skip
    assert reply.json()["prompt_eval_count"] < templated.json()["prompt_eval_count"]  # no ChatML wrapping


def test_system_becomes_the_system_message(api):
    def prompt_tokens(**fields: str) -> int:
        body = {"model": NAME, "prompt": "Hi", "stream": False, "options": {"num_predict": 1}, **fields}
        return api.post("/api/generate", json=body).json()["prompt_eval_count"]

    # ChatML wraps a system message in 5 tokens of its own, whatever it says
    assert prompt_tokens(system="one two three four") == prompt_tokens(system="one two") + 2


def test_an_empty_prompt_loads_and_keep_alive_zero_unloads(manager, fresh_engine):
    loaded = manager.post("/api/generate", json={"model": NAME})
    assert loaded.json()["done_reason"] == "load" and loaded.json()["response"] == ""
    assert [m["model"] for m in manager.get("/api/ps").json()["models"]] == [NAME]
    unloaded = manager.post("/api/chat", json={"model": NAME, "messages": [], "keep_alive": 0})
    assert unloaded.json()["done_reason"] == "unload" and unloaded.json()["message"]["content"] == ""
    assert manager.get("/api/ps").json()["models"] == []
    assert not UsageRecord.objects.exists()  # nothing was generated, nothing is billed


def test_loading_without_a_prompt_needs_models_manage_unless_loaded(api, fresh_engine):
    refused = api.post("/api/generate", json={"model": NAME})
    assert refused.status_code == 403 and "models:manage" in refused.json()["error"]
    assert get_engine().status()["loaded"] == []
    api.post("/api/generate", json={"model": NAME, "prompt": "Hi", "stream": False, "options": {"num_predict": 1}})
    assert api.post("/api/generate", json={"model": NAME}).json()["done_reason"] == "load"


def test_keep_alive_forever_shows_in_ps(manager, fresh_engine):
    manager.post("/api/generate", json={"model": NAME, "keep_alive": -1})
    [entry] = manager.get("/api/ps").json()["models"]
    assert entry["expires_at"].startswith("2318-")
    assert entry["context_length"] == 2048 // 4  # n_ctx shared by the default four slots


def test_load_options_are_ignored_and_said_so(api):
    options = {"num_predict": 1, "num_ctx": 8192, "num_gpu": 99, "no such option\r\nSet-Cookie: x=1": 1}
    reply = api.post("/api/generate", json={"model": NAME, "prompt": "Hi", "stream": False, "options": options})
    assert reply.status_code == 200
    assert reply.headers["X-Ignored-Options"] == "num_ctx,num_gpu"  # names we know; never what a client typed


def test_embed_truncates_unless_told_not_to(api):
    long_text = "word " * 3000  # past the embedding context (2048 tokens)
    assert api.post("/api/embed", json={"model": NAME, "input": long_text}).status_code == 200
    refused = api.post("/api/embed", json={"model": NAME, "input": long_text, "truncate": False})
    assert refused.status_code == 400 and "at most 2048" in refused.json()["error"]


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/api/chat", {"messages": []}, 400, "model is required"),
        ("/api/generate", {"model": "ghost:1b", "prompt": "x"}, 404, 'model "ghost:1b" not found'),
        (
            "/api/chat",
            {"model": NAME, "messages": [{"role": "user", "content": "x"}], "options": {"temperature": 9}},
            400,
            "'options.temperature'",
        ),
        ("/api/generate", {"model": NAME, "prompt": "x", "options": {"num_predict": 0}}, 400, "options.num_predict"),
        ("/api/generate", {"model": NAME, "prompt": "x", "options": {"mirostat": 2}}, 400, "options.mirostat"),
        ("/api/generate", {"model": NAME, "prompt": "x", "options": {"typical_p": 0}}, 400, "options.typical_p"),
        ("/api/generate", {"model": NAME, "prompt": "x", "options": {"repeat_last_n": 2**30}}, 400, "at most 512"),
        ("/api/generate", {"model": NAME, "prompt": "x", "keep_alive": "soon"}, 400, "keep_alive"),
        ("/api/chat", {"model": NAME, "messages": USER, "tools": [TOOL], "format": "json"}, 400, "format and tools"),
        ("/api/chat", {"model": NAME, "messages": USER, "tools": [{"type": "function"}]}, 400, "tools.0.function"),
        ("/api/chat", {"model": NAME, "messages": USER, "tools": [BAD_SCHEMA]}, 400, "tools.0.function.parameters"),
        ("/api/chat", {"model": NAME, "messages": USER, "tools": [TOOL, TOOL]}, 400, "two tools are named 'f'"),
        ("/api/chat", {"model": NAME, "messages": BAD_CALL}, 400, "messages.1.tool_calls.0.function"),
        (
            "/api/chat",
            {"model": NAME, "messages": [{"role": "user", "content": "x"}], "think": True},
            400,
            f'"{NAME}" does not support thinking',
        ),
        (
            "/api/chat",
            {"model": NAME, "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]},
            400,
            "does not support images",
        ),
        ("/api/generate", {"model": NAME, "prompt": "x", "template": "{{ .Prompt }}"}, 400, "raw: true"),
        ("/api/generate", {"model": NAME, "prompt": "x", "context": [1, 2]}, 400, "/api/chat"),
        ("/api/chat", {"model": NAME, "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role"),
        ("/api/embed", {"model": NAME, "input": ""}, 400, "input is required"),
        ("/api/show", {}, 400, "model is required"),
        ("/api/create", {"model": "x"}, 501, "admin"),
        ("/api/copy", {"source": "a", "destination": "b"}, 501, "alias"),
    ],
)
def test_errors_come_in_ollamas_shape(api, path, body, status, message):
    reply = api.post(path, json=body)
    assert reply.status_code == status, reply.text
    assert set(reply.json()) == {"error"} and message in reply.json()["error"]
    assert not UsageRecord.objects.exists()


def test_bad_json_and_missing_tokens_are_ollama_shaped(live):
    bad = httpx.post(f"{live[0]}/api/chat", content=b"{nope", headers={"Authorization": f"Bearer {live[1]}"})
    assert bad.status_code == 400 and bad.json() == {"error": "Request body is not valid JSON."}
    anonymous = httpx.get(f"{live[0]}/api/tags")
    assert anonymous.status_code == 401 and "bearer token" in anonymous.json()["error"]
    unknown = httpx.get(f"{live[0]}/api/nothing-here")
    assert unknown.status_code == 404 and set(unknown.json()) == {"error"}


def test_version_is_open_and_the_management_api_still_answers(live):
    assert httpx.get(f"{live[0]}/api/version").json()["version"]
    # /api/v1/ is the management API (session or token auth), not Ollama's
    assert httpx.get(f"{live[0]}/api/v1/models/", headers={"Authorization": f"Bearer {live[1]}"}).status_code == 200


def test_tools_go_through_a_hermes_template_and_its_history_renders_natively(api, live, fresh_engine):
    from inference.api.tool_formats import plan_for
    from inference.engine.llama_runner import render_prompt
    from inference.engine.spec import ModelSpec
    from inference.engine.vocab import vocab_for
    from models_app.models import LLMModel
    from tests.inference.api.test_openai_tools import HERMES, WEATHER

    LLMModel.objects.filter(pk=live[2]).update(chat_template=HERMES)
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather",
                                                                           "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_name": "get_weather", "content": "18C"},
    ]  # fmt: skip
    options = {"num_predict": 1, "temperature": 0}
    plain = api.post("/api/chat", json={"model": NAME, "messages": history, "stream": False, "options": options})
    with_tools = api.post("/api/chat", json={"model": NAME, "messages": history, "stream": False, "options": options,
                                             "tools": [WEATHER]})  # fmt: skip
    assert plain.status_code == with_tools.status_code == 200, with_tools.text
    # exactly the prompt the template makes with the tools and the native history (no generic instruction)
    spec = ModelSpec.from_model(LLMModel.objects.get(pk=live[2]))
    plan = plan_for(HERMES, [WEATHER], "auto")
    text = render_prompt(spec, plan.messages(history, ""), tools=plan.template_tools())
    tokens = vocab_for(spec.path).tokenize(text.encode(), add_special=spec.add_bos, parse_special=True)
    assert with_tools.json()["prompt_eval_count"] == len(tokens) > plain.json()["prompt_eval_count"]
    prompt = api.post("/apply-template", json={"model_id": live[2], "messages": history}).json()["prompt"]
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
