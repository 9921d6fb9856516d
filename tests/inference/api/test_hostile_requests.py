"""Hostile requests: each is refused with a 400 naming its field, and the server answers the next one."""

import json

import pytest
from websockets.sync.client import connect

from models_app.models import LLMModel, UsageRecord
from tests.inference.api.test_errors_and_auth import assert_error, chat, post

SCHEMA = "response_format.json_schema.schema"


def with_schema(live, schema, **overrides):
    response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    return chat(live, response_format=response_format, **overrides)


def assert_still_serving(live):
    """A plain chat answers normally and no usage row is left open."""
    response = post(live, "/v1/chat/completions", chat(live))
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] is not None
    assert not UsageRecord.objects.filter(status="started").exists()


@pytest.mark.parametrize(
    ("schema", "param"),
    [
        ({"type": "foo"}, f"{SCHEMA}.type"),
        ({"$ref": "#/defs/missing"}, f"{SCHEMA}.$ref"),
        ({"type": "string", "pattern": "abc"}, f"{SCHEMA}.pattern"),
        ({"type": "array", "items": {"type": "integer"}, "maxItems": 20000}, f"{SCHEMA}.maxItems"),
        (
            {"type": "object", "properties": {"n": {"type": "string", "minLength": 5000}}},
            f"{SCHEMA}.properties.n.minLength",
        ),
        ({"type": "string", "pattern": "^(a{1000}){1000}$"}, f"{SCHEMA}.pattern"),
        ({"type": "object", "properties": {"x": {"type": "integer"}}, "items": 5}, f"{SCHEMA}.items"),
    ],
)
def test_a_schema_the_grammar_cannot_take_is_a_400_naming_the_keyword(live, schema, param):
    before = UsageRecord.objects.count()
    error = assert_error(post(live, "/v1/chat/completions", with_schema(live, schema)), 400, "invalid_request_error")
    assert error["param"] == param, error
    assert UsageRecord.objects.count() == before  # refused before admission: not billed
    assert_still_serving(live)


def test_a_schema_nested_past_the_depth_limit_is_refused(live):
    schema: dict = {"type": "string"}
    for _ in range(40):
        schema = {"type": "array", "items": schema}
    error = assert_error(post(live, "/v1/chat/completions", with_schema(live, schema)), 400, "invalid_request_error")
    assert error["param"].startswith(SCHEMA) and "JSON_SCHEMA_MAX_DEPTH" in error["message"]
    assert_still_serving(live)


def test_a_grammar_llama_cpp_refuses_to_parse_is_a_400_too(live):
    # Within JSON_SCHEMA_MAX_REPETITIONS, but past what llama.cpp's parser takes: it says so, we pass it on.
    schema = {"type": "array", "items": {"type": "integer"}, "maxItems": 2000}
    assert_error(post(live, "/v1/chat/completions", with_schema(live, schema)), 400, "invalid_request_error")
    assert_still_serving(live)


def test_a_schema_within_the_bounds_is_served(live):
    schema = {"type": "array", "items": {"type": "integer"}, "maxItems": 100}
    response = post(live, "/v1/chat/completions", with_schema(live, schema, max_tokens=8))
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"].startswith("[")
    assert_still_serving(live)


@pytest.mark.parametrize(
    "bias",
    [
        {"²": 5},  # "²".isdigit() is true and int("²") fails
        {"999999999": 100},  # no such token
        {"-1": 5},
        {str(i): 1 for i in range(100_000, 160_000)},  # 60,000 entries, all past the vocabulary
    ],
    ids=["superscript-digit", "past-the-vocabulary", "negative", "sixty-thousand"],
)
def test_a_bad_logit_bias_is_a_400_naming_logit_bias(live, bias):
    body = chat(live, logit_bias=bias, temperature=0.7, max_tokens=8)
    assert_error(post(live, "/v1/chat/completions", body), 400, "invalid_request_error", "logit_bias")
    assert_still_serving(live)


def test_a_logit_bias_past_the_vocabulary_is_refused_on_the_native_api_too(live):
    body = {"prompt": "Hi", "model_id": live[2], "parameters": {"max_tokens": 4, "logit_bias": {"49152": 5}}}
    assert_error(post(live, "/inference", body), 400, "invalid_request_error", "logit_bias")
    assert_still_serving(live)


@pytest.mark.parametrize("stop", [["a"] * 5, "x" * 257], ids=["five-stop-strings", "a-stop-string-of-257-characters"])
def test_stop_strings_past_their_bounds_are_a_400(live, stop):
    assert_error(post(live, "/v1/chat/completions", chat(live, stop=stop)), 400, "invalid_request_error", "stop")
    assert_still_serving(live)


def test_too_many_messages_is_a_400(live, settings):
    settings.MAX_MESSAGES = 3
    body = chat(live, messages=[{"role": "user", "content": "Hi"}] * 4)
    assert_error(post(live, "/v1/chat/completions", body), 400, "invalid_request_error", "messages")
    assert_still_serving(live)


@pytest.mark.parametrize(
    "template",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",  # never ends
        "{% for m in messages %}{% for a in m.content %}{% for b in m.content %}{% for c in m.content %}"
        "{% endfor %}{% endfor %}{% endfor %}{% endfor %}",  # cubic in the request's own text
        "{{ 'x' * 100000000 }}",  # a huge value in one step
        "{% for i in range(2000) %}{{ 'y' * 999999 }}{% endfor %}",  # output past the size limit
    ],
    ids=["nested-loops", "cubic-in-the-content", "huge-product", "huge-output"],
)
def test_a_chat_template_past_its_budget_is_refused_and_the_server_goes_on(live, fresh_engine, template):
    # The pool loads the model with the template the registry holds now (fresh_engine: nothing loaded).
    LLMModel.objects.filter(pk=live[2]).update(chat_template=template)
    body = chat(live, messages=[{"role": "user", "content": "z" * 2000}])
    response = post(live, "/v1/chat/completions", body)
    error = assert_error(response, 400, "invalid_request_error", "messages")
    assert "chat template" in error["message"]
    assert not UsageRecord.objects.exists()
    assert_still_serving_raw(live)


def assert_still_serving_raw(live):
    """The same model still answers a raw completion (its template is the broken one)."""
    response = post(live, "/v1/completions", {"model": live[2], "prompt": "Hello", "max_tokens": 4})
    assert response.status_code == 200, response.text


def test_a_websocket_frame_past_its_size_limit_is_an_error_frame(live, settings):
    settings.WS_MAX_FRAME_BYTES = 1000
    url, secret, model = live
    headers = {"Authorization": f"Bearer {secret}"}
    with connect(url.replace("http", "ws") + "/ws/v1/generate", additional_headers=headers) as ws:
        ws.send(json.dumps({"type": "generate", "id": "a", "model": model, "prompt": "x" * 2000}))
        frame = json.loads(ws.recv(timeout=30))
    assert frame["type"] == "error" and frame["error"]["code"] == "frame_too_large"
    assert_still_serving(live)


def test_a_pattern_that_nests_repetitions_is_refused_before_it_can_stall_the_decode_thread(live):
    # 337 bytes of grammar, but one stack per way to read a string of a's: minutes per token.
    schema = {"type": "string", "pattern": "^((((a{0,10}){0,10}){0,10}){0,10})$"}
    error = assert_error(post(live, "/v1/chat/completions", with_schema(live, schema)), 400, "invalid_request_error")
    assert error["param"] == f"{SCHEMA}.pattern" and "repetition inside a repetition" in error["message"]
    assert_still_serving(live)
