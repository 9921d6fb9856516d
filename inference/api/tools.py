"""Tool calling the generic way: the tools in a system instruction, the reply constrained to a call or an answer.

This is llama.cpp's "generic" chat format (common/chat.cpp), which works with any chat
template, ChatML without tool support included: the model is told which tools exist and
its output is held by a grammar to one JSON object, either
`{"tool_calls": [{"name": ..., "arguments": {...}}, ...]}` with each call's arguments
matching that tool's parameter schema, or `{"response": "..."}`. So a call that comes
back always names a real tool and has arguments its schema accepts; output that does not
parse (cut short by the token limit) is returned as content, never as a call.
"""

import contextlib
import json
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from inference.api.errors import InvalidRequest
from inference.engine import request_bounds
from inference.engine.grammar import SchemaRefused, check_schema, schema_grammar

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_TOOLS = 128
MAX_CALLS = 4  # calls in one reply


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]

    @cached_property
    def validator(self) -> Draft202012Validator:
        return Draft202012Validator(self.parameters)


def parse_tools(tools: list[Any], param: str = "tools") -> list[Tool]:
    """Function tools as OpenAI and Ollama send them; InvalidRequest naming the field for anything else."""
    if len(tools) > MAX_TOOLS:
        raise InvalidRequest(f"at most {MAX_TOOLS} tools", param=param, code="invalid_value")
    size = len(json.dumps(tools))
    if size > request_bounds().schema.max_bytes:  # before any tool's grammar is built: those take time
        raise InvalidRequest(f"tools are {size} bytes of JSON; the limit is {request_bounds().schema.max_bytes} "
                             "(JSON_SCHEMA_MAX_BYTES)", param=param, code="unsupported_schema")  # fmt: skip
    parsed: dict[str, Tool] = {}
    for i, tool in enumerate(tools):
        where = f"{param}.{i}"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise InvalidRequest(f"{where} must be a function tool: "
                                 '{"type": "function", "function": {"name", "parameters"}}', param=where,
                                 code="invalid_value")  # fmt: skip
        function = tool.get("function")
        if not isinstance(function, dict):
            raise InvalidRequest(f"{where}.function is required", param=f"{where}.function", code="invalid_value")
        name = function.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidRequest(f"{where}.function.name must be 1-64 letters, digits, '_', '.' or '-'",
                                 param=f"{where}.function.name", code="invalid_value")  # fmt: skip
        if name in parsed:
            raise InvalidRequest(f"two tools are named {name!r}", param=f"{where}.function.name", code="invalid_value")
        parameters = function.get("parameters")
        if parameters is None:
            parameters = {"type": "object", "properties": {}}
        if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
            raise InvalidRequest(f"{where}.function.parameters must be a JSON schema of an object (the arguments)",
                                 param=f"{where}.function.parameters", code="invalid_value")  # fmt: skip
        keyword = _base_changing_keyword(parameters)
        if keyword:  # a $ref then resolves elsewhere than the grammar saw it: refused, not half-honoured
            raise InvalidRequest(f"{where}.function.parameters uses {keyword!r}, which this server does not support",
                                 param=f"{where}.function.parameters", code="unsupported_schema")  # fmt: skip
        try:  # here, so a bad schema is named by its place in `tools`, not in the grammar built from them
            check_schema(parameters, request_bounds().schema, param=f"{where}.function.parameters")
            Draft202012Validator.check_schema(parameters)
        except SchemaRefused as exc:
            raise InvalidRequest(str(exc), param=exc.param, code="unsupported_schema") from exc
        except SchemaError as exc:
            raise InvalidRequest(
                f"not a valid JSON schema: {exc.message}",
                param=f"{where}.function.parameters",
                code="unsupported_schema",
            ) from exc
        description = function.get("description")
        parsed[name] = Tool(name, description if isinstance(description, str) else "", parameters)
    tools = list(parsed.values())
    try:  # the tools together, as the grammar will see them (their sizes add up)
        schema_grammar(reply_schema(tools), request_bounds().schema, param=param)
    except SchemaRefused as exc:
        raise InvalidRequest(str(exc), param=param, code="unsupported_schema") from exc
    return tools


_BASE_CHANGING = ("$id", "$anchor", "$dynamicRef", "$dynamicAnchor", "$recursiveRef", "$recursiveAnchor")


def _base_changing_keyword(schema: Any, depth: int = 0) -> str | None:
    """The first keyword that moves where a `$ref` points ($id, anchors), if the schema holds one."""
    if depth > 64:
        return None  # check_schema refuses what is this deep
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key in _BASE_CHANGING:
                return key
            if key not in _DATA_KEYWORDS and (found := _base_changing_keyword(value, depth + 1)):
                return found
    elif isinstance(schema, list):
        for value in schema:
            if found := _base_changing_keyword(value, depth + 1):
                return found
    return None


def instruction(tools: list[Tool]) -> str:
    """The system text that tells the model its tools and the reply's shape."""
    listed = json.dumps(
        [{"name": t.name, "description": t.description, "parameters": t.parameters} for t in tools],
        ensure_ascii=False,
    )
    return (
        "You can call these tools to answer the user:\n"
        f"{listed}\n"
        'To call tools, reply with {"tool_calls": [{"name": "<tool name>", "arguments": {<its arguments>}}]}. '
        'To answer without a tool, reply with {"response": "<your answer>"}. Reply with that JSON object only.'
    )


_DATA_KEYWORDS = ("enum", "const", "default", "examples")  # values, not schemas: never rewritten


def hoisted(tool: Tool, defs: dict[str, Any]) -> dict[str, Any]:
    """The tool's parameters with its `$defs` moved into `defs` under its own prefix, and its `$ref`s to match.

    A tool's `$ref: "#/$defs/x"` points at the root of its own schema (pydantic writes them
    so); inside the reply's schema that root is the reply's, so the definitions go there,
    as `<tool name>:<name>` (no tool name has a ':', so two tools' names cannot meet).
    The walk is as deep as the schema, which check_schema has bounded.
    """
    prefix = f"{tool.name}:"

    def rewrite(node: Any) -> Any:
        if isinstance(node, list):
            return [rewrite(item) for item in node]
        if not isinstance(node, dict):
            return node
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith(("#/$defs/", "#/definitions/")):
                out[key] = "#/$defs/" + prefix + value.split("/", 2)[2]
            else:
                out[key] = value if key in _DATA_KEYWORDS else rewrite(value)
        return out

    parameters = dict(tool.parameters)
    for section in ("$defs", "definitions"):
        for name, definition in (parameters.pop(section, None) or {}).items():
            if prefix + name in defs:
                raise InvalidRequest(f"tool {tool.name!r} defines {name!r} in both $defs and definitions",
                                     param="tools", code="invalid_value")  # fmt: skip
            defs[prefix + name] = rewrite(definition)
    return rewrite(parameters)


def reply_schema(tools: list[Tool], *, answer_allowed: bool = True, max_calls: int = MAX_CALLS) -> dict[str, Any]:
    """The JSON schema the output is held to: calls of these tools, or (if allowed) an answer."""
    defs: dict[str, Any] = {}
    arguments = {t.name: hoisted(t, defs) for t in tools}
    calls = {
        "type": "array",
        "minItems": 1,
        "maxItems": max_calls,  # a small model would otherwise add calls until its token limit
        "items": {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {"name": {"const": t.name}, "arguments": arguments[t.name]},
                    "required": ["name", "arguments"],
                    "additionalProperties": False,
                }
                for t in tools
            ]
        },
    }
    call = {"type": "object", "properties": {"tool_calls": calls}, "required": ["tool_calls"],
            "additionalProperties": False}  # fmt: skip
    answer = {"type": "object", "properties": {"response": {"type": "string"}}, "required": ["response"],
              "additionalProperties": False}  # fmt: skip
    schema: dict[str, Any] = {"anyOf": [call, answer]} if answer_allowed else call
    return {**schema, "$defs": defs} if defs else schema


def with_instruction(messages: list[dict[str, Any]], tools: list[Tool], default_system: str) -> list[dict[str, Any]]:
    """`messages` with the tools' instruction in the system message (the model's configured one if none is sent)."""
    text = instruction(tools)
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{text}"}, *messages[1:]]
    return [{"role": "system", "content": f"{default_system}\n\n{text}" if default_system else text}, *messages]


def history(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Earlier turns as the generic format shows them: an assistant's calls as the JSON it would have written."""
    shown = []
    for m in messages:
        calls, content = m.get("tool_calls"), m.get("content") or ""
        if m["role"] == "assistant" and calls:
            text = json.dumps({"tool_calls": [_as_written(c) for c in calls]}, ensure_ascii=False)
            shown.append({"role": "assistant", "content": f"{content}\n{text}" if content else text})
        elif m["role"] == "tool" and m.get("tool_name"):  # which call this answers, when there are several
            text = json.dumps({"tool_response": {"name": m["tool_name"], "content": content}}, ensure_ascii=False)
            shown.append({"role": "tool", "content": text})
        else:
            shown.append({"role": m["role"], "content": content})
    return shown


def _as_written(call: Any) -> dict[str, Any]:
    """A call in OpenAI's or Ollama's shape ({"function": {...}}, arguments as JSON text or object) as the JSON."""
    function = call.get("function", call) if isinstance(call, dict) else {}
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        with contextlib.suppress(ValueError, RecursionError):
            arguments = json.loads(arguments)
    return {"name": function.get("name"), "arguments": arguments}


def _valid(tool: Tool, arguments: dict[str, Any]) -> bool:
    try:
        return tool.validator.is_valid(arguments)
    except RecursionError:  # arguments nested past the interpreter's limit are no arguments
        return False


def parse_reply(text: str, tools: list[Tool]) -> tuple[list[dict[str, Any]], str]:
    """(calls as {"name", "arguments": dict}, content) from the constrained output; unparsable text is content."""
    try:
        reply = json.loads(text)
    except (ValueError, RecursionError):
        return [], text
    if not isinstance(reply, dict):
        return [], text
    if isinstance(reply.get("response"), str):
        return [], reply["response"]
    by_name = {t.name: t for t in tools}
    calls = reply.get("tool_calls")
    if not isinstance(calls, list) or not calls:
        return [], text
    parsed = []
    for call in calls:
        name = call.get("name") if isinstance(call, dict) else None
        tool = by_name.get(name) if isinstance(name, str) else None
        arguments = call.get("arguments") if tool else None
        # The grammar cannot hold every keyword (minimum, uniqueItems, not, ...): what it let through
        # is checked against the tool's own schema, and a call that fails is no call.
        if tool is None or not isinstance(arguments, dict) or not _valid(tool, arguments):
            return [], text
        parsed.append({"name": tool.name, "arguments": arguments})
    return parsed, ""
