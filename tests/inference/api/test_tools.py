"""The generic tool-call format: tools checked, the reply's schema, earlier calls shown, replies parsed."""

import json

import pytest

from inference.api.errors import InvalidRequest
from inference.api.tools import Tool, history, parse_reply, parse_tools, reply_schema, with_instruction
from inference.engine.grammar import SchemaBounds, schema_grammar

CALL = '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}'
WEATHER = Tool("get_weather", "", {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})


def test_a_tool_without_parameters_takes_an_empty_object():
    [tool] = parse_tools([{"type": "function", "function": {"name": "now"}}])
    assert tool.parameters == {"type": "object", "properties": {}}


@pytest.mark.parametrize(
    ("tools", "param"),
    [
        (["f"], "tools.0"),
        ([{"type": "retrieval"}], "tools.0"),
        ([{"function": {"name": "has space"}}], "tools.0.function.name"),
        ([{"function": {"name": "f", "parameters": []}}], "tools.0.function.parameters"),
        ([{"function": {"name": "f", "parameters": {"type": "string"}}}], "tools.0.function.parameters"),
        ([{"function": {"name": "f", "parameters": {"type": "object", "required": "x"}}}], "tools.0.function"),
        (
            [{"function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"pattern": "("}}}}}],
            "tools.0.function.parameters.properties.a.pattern",
        ),
    ],
)
def test_bad_tools_are_refused_by_their_place(db, tools, param):
    with pytest.raises(InvalidRequest) as refused:
        parse_tools(tools)
    assert refused.value.param.startswith(param)


def test_the_reply_schema_becomes_a_grammar():
    grammar = schema_grammar(reply_schema([WEATHER]), SchemaBounds())
    assert "get_weather" in grammar and "response" in grammar


def test_a_tools_own_definitions_still_resolve_inside_the_reply_schema():
    # pydantic writes a tool's nested models as $defs with $refs to its own root
    unit = {"enum": ["C", "F"]}
    tool = Tool("get_weather", "", {"type": "object", "$defs": {"Unit": unit},
                                    "properties": {"unit": {"$ref": "#/$defs/Unit"}}})  # fmt: skip
    other = Tool("other", "", {"type": "object", "definitions": {"Unit": {"type": "integer"}},
                               "properties": {"n": {"$ref": "#/definitions/Unit"}}})  # fmt: skip
    schema = reply_schema([tool, other])
    assert schema["$defs"] == {"get_weather:Unit": unit, "other:Unit": {"type": "integer"}}
    grammar = schema_grammar(schema, SchemaBounds())
    assert 'get-weather-Unit ::= "\\"C\\"" | "\\"F\\""' in grammar and "arguments-n ::= integer" in grammar


@pytest.mark.parametrize(
    ("text", "calls", "content"),
    [
        (
            '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}',
            [{"name": "get_weather", "arguments": {"city": "Paris"}}],
            "",
        ),
        ('{"response": "It is sunny."}', [], "It is sunny."),
        (
            '{"tool_calls": [{"name": "get_weather", "arguments": {"ci',
            [],
            '{"tool_calls": [{"name": "get_weather", "arguments": {"ci',
        ),
        (
            '{"tool_calls": [{"name": "rm_rf", "arguments": {}}]}',
            [],
            '{"tool_calls": [{"name": "rm_rf", "arguments": {}}]}',
        ),
        ("[1, 2]", [], "[1, 2]"),
        (  # arguments its schema refuses
            '{"tool_calls": [{"name": "get_weather", "arguments": {"city": 7}}]}',
            [],
            '{"tool_calls": [{"name": "get_weather", "arguments": {"city": 7}}]}',
        ),
    ],
)
def test_only_whole_calls_of_real_tools_come_back_as_calls(text, calls, content):
    assert parse_reply(text, [WEATHER]) == (calls, content)


def test_what_the_grammar_cannot_hold_is_checked_after_it():
    properties = {"n": {"type": "integer", "minimum": 100, "maximum": 200}, "tags": {"uniqueItems": True}}
    tool = Tool("pick", "", {"type": "object", "properties": properties})
    for arguments in ({"n": 3689}, {"n": 150, "tags": [1, 2, 2]}):
        text = json.dumps({"tool_calls": [{"name": "pick", "arguments": arguments}]})
        assert parse_reply(text, [tool]) == ([], text)
    ok = json.dumps({"tool_calls": [{"name": "pick", "arguments": {"n": 150}}]})
    assert parse_reply(ok, [tool]) == ([{"name": "pick", "arguments": {"n": 150}}], "")


def test_deep_data_in_a_schema_is_not_walked():
    deep: list = []
    for _ in range(900):
        deep = [deep]
    tool = Tool("f", "", {"type": "object", "properties": {"a": {"enum": [deep]}}})
    call = reply_schema([tool])["anyOf"][0]["properties"]["tool_calls"]["items"]["anyOf"][0]
    assert call["properties"]["arguments"]["properties"]["a"]["enum"][0] is deep


def test_a_tool_result_names_its_tool():
    [shown] = history([{"role": "tool", "content": "18C", "tool_name": "get_weather"}])
    assert json.loads(shown["content"]) == {"tool_response": {"name": "get_weather", "content": "18C"}}


def test_earlier_calls_are_shown_as_the_json_the_model_writes_in_either_shape():
    openai_call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    ollama_call = {"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    for call in (openai_call, ollama_call):
        [shown] = history([{"role": "assistant", "content": None, "tool_calls": [call]}])
        assert json.loads(shown["content"]) == {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}


def test_the_instruction_joins_the_system_message_or_the_models_own():
    sent = with_instruction([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                            [WEATHER], "Configured.")  # fmt: skip
    assert sent[0]["content"].startswith("Be brief.\n\n") and "get_weather" in sent[0]["content"]
    default = with_instruction([{"role": "user", "content": "Hi"}], [WEATHER], "Configured.")
    assert default[0]["content"].startswith("Configured.\n\n") and len(default) == 2
