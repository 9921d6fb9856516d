"""Tool calls in the format the model's own chat template was trained on, as llama.cpp's common/chat.cpp does.

The family is read from the chat template:

- **hermes** (Hermes 2 Pro, Qwen 2.5 and 3, and their many fine-tunes): the template
  renders `tools` and writes `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.
- **llama3** (Llama 3.1-3.3): a bare `{"name": ..., "parameters": {...}}` object
  (after `<|python_tag|>`, a control token that does not show in the text).
- **mistral** (Mistral Nemo, Small, ...): `[TOOL_CALLS][{"name": ..., "arguments": {...}}]`.
- **firefunction** (FireFunction v2, and templates that ask for its marker): `functools[{...}, ...]`.
- **generic**: every other template (the bundled SmolLM2's plain ChatML): the tools go in
  the system message and the reply is held to a call or an answer (`tools.py`).

A `Plan` says, for one request, what the template gets, which grammar holds the output
(strict for `required` or a named function; lazy, from the family's trigger on, for
`auto`) and how the output is read back. `ReplyReader` reads it as it streams: text
before a call goes out as content at once, a partial trigger is held back, and a call is
returned only when it parses and its arguments validate against the tool's schema;
anything else comes back as content.
"""

import json
import secrets
import string
import uuid
from dataclasses import dataclass, field
from typing import Any

from inference.api import tools as generic
from inference.api.errors import InvalidRequest
from inference.api.thinking import ThinkingSplitter, _held_prefix
from inference.engine import Sampling

FAMILIES = ("hermes", "llama3", "mistral", "firefunction", "generic")
_REGEX_SPECIALS = set("\\^$.|?*+()[]{}")


# Families whose calls follow a marker as one JSON array of {"name", "arguments"}
_ARRAY_MARKERS = {"mistral": "[TOOL_CALLS]", "firefunction": "functools"}


def family(template: str) -> str:
    """Which tool-call format a chat template speaks; "generic" when it renders no tools itself."""
    if "tools" not in template:
        return "generic"
    if "[TOOL_CALLS]" in template:
        return "mistral"
    if "functools[" in template:
        return "firefunction"
    if "<tool_call>" in template:
        return "hermes"
    if "<|start_header_id|>" in template and "ipython" in template:
        return "llama3"
    return "generic"


def _escape(text: str) -> str:
    """A literal as an ECMAScript regex (llama.cpp's std::regex), for a lazy grammar's trigger."""
    return "".join("\\" + c if c in _REGEX_SPECIALS else c for c in text)


def _call_schema(tools: list[generic.Tool], arguments_key: str) -> dict[str, Any]:
    """One call of any of `tools`, `{"name": ..., <arguments_key>: {...}}`, with the tools' `$defs` hoisted."""
    defs: dict[str, Any] = {}
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, arguments_key: generic.hoisted(t, defs)},
            "required": ["name", arguments_key],
            "additionalProperties": False,
        }
        for t in tools
    ]
    schema: dict[str, Any] = options[0] if len(options) == 1 else {"anyOf": options}
    return {**schema, "$defs": defs} if defs else schema


@dataclass
class Plan:
    """What one chat request does about tools: the template's `family`, and the tools when they take part."""

    family: str
    tools: list[generic.Tool] = field(default_factory=list)
    strict: bool = False  # required or named: the output is calls only
    max_calls: int = 1

    @property
    def active(self) -> bool:
        return bool(self.tools)

    def template_tools(self) -> list[dict[str, Any]] | None:
        """The tools as HF templates take them (native families only)."""
        if not self.active or self.family == "generic":
            return None
        return [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                  "parameters": t.parameters}} for t in self.tools]  # fmt: skip

    def messages(self, messages: list[dict[str, Any]], default_system: str) -> list[dict[str, Any]]:
        """The history as the template takes it; for generic, earlier calls as JSON and the tools' instruction."""
        if self.family != "generic":
            return [_native_message(m) for m in messages]
        shown = generic.history([_named_result(m, messages) for m in messages])
        return generic.with_instruction(shown, self.tools, default_system) if self.active else shown

    def constrain(self, sampling: Sampling, *, thinking: str = "") -> None:
        """Set the grammar that holds the output to calls (strict) or lets them start (lazy).

        `thinking`: "inside" when the prompt opens <think> (calls only after </think>),
        "maybe" when the model may open it, "" for a template without reasoning.
        """
        if not self.active:
            return
        if self.family == "generic":
            sampling.json_schema = generic.reply_schema(self.tools, answer_allowed=not self.strict,
                                                        max_calls=self.max_calls)  # fmt: skip
            return
        if self.family == "hermes":
            sampling.json_schema = _call_schema(self.tools, "arguments")
            sampling.grammar_open, sampling.grammar_close = "<tool_call>\n", "\n</tool_call>"
            sampling.grammar_repeat = self.max_calls
            trigger = _escape("<tool_call>")
        elif self.family in _ARRAY_MARKERS:  # a marker, then every call in one JSON array
            one = _call_schema(self.tools, "arguments")
            defs = one.pop("$defs", None)
            array = {"type": "array", "items": one, "minItems": 1, "maxItems": self.max_calls}
            sampling.json_schema = {**array, "$defs": defs} if defs else array
            sampling.grammar_open = _ARRAY_MARKERS[self.family]
            trigger = _escape(_ARRAY_MARKERS[self.family])
        else:  # llama3: one call, a bare object at the start of the answer (after the python tag, if shown)
            sampling.json_schema = _call_schema(self.tools, "parameters")
            sampling.grammar_trigger = "" if self.strict else r"^\s{0,8}(?:<\|python_tag\|>)?(\{)"
            return
        if self.strict:
            return
        # llama.cpp tests the trigger against the whole output after every token with std::regex, whose
        # matcher recurses once per character an unbounded quantifier covers: past ~45,000 characters
        # that overflows the thread's stack. So no trigger has one: a literal, or a bounded gap.
        if thinking == "inside":  # a call the model writes while thinking is no call: only after </think>
            sampling.grammar_trigger = r"</think>\s{0,8}(" + trigger + ")"
        else:
            sampling.grammar_trigger = "(" + trigger + ")"

    # -- reading the output ------------------------------------------------------------
    def marker(self) -> tuple[str, bool]:
        """(the text that starts calls, whether only at the start of the answer) for holding back while streaming."""
        if self.family == "hermes":
            return "<tool_call>", False
        if self.family == "mistral":
            return "[", True  # "[TOOL_CALLS]" is a control token: the text shows the array
        if self.family == "firefunction":
            return "functools", False
        if self.family == "llama3":
            return "{", True
        return "", True

    def parse(self, text: str) -> tuple[list[dict[str, Any]], str]:
        """(calls as {"name", "arguments": dict}, content); text that is not valid calls is content."""
        if not self.active:
            return [], text
        if self.family == "generic":
            return generic.parse_reply(text, self.tools)
        try:  # a model's output is as hostile as a request: whatever it holds, it is content or calls
            return self._parse(text)
        except Exception:
            return [], text

    def _parse(self, text: str) -> tuple[list[dict[str, Any]], str]:
        if self.family == "hermes":
            start = text.find("<tool_call>")
            if start < 0:
                return [], text
            found = _hermes_calls(text[start:])
            return self._checked(found, "arguments", text, text[:start].strip())
        body = text.strip()
        if self.family == "mistral":
            body = body.removeprefix("[TOOL_CALLS]").strip()
            found = _loads(body) if body.startswith("[") else None
            return self._checked(found if isinstance(found, list) else None, "arguments", text, "")
        if self.family == "firefunction":
            start = text.find("functools")
            body = text[start + len("functools") :].strip() if start >= 0 else ""
            found = _loads(body) if body.startswith("[") else None
            return self._checked(found if isinstance(found, list) else None, "arguments", text, text[:start].strip())
        body = body.removeprefix("<|python_tag|>").strip()
        found = _loads(body) if body.startswith("{") else None
        return self._checked([found] if found is not None else None, "parameters", text, "")

    def _checked(self, found: list[Any] | None, key: str, text: str, content: str) -> tuple[list[dict], str]:
        by_name = {t.name: t for t in self.tools}
        if not found or len(found) > self.max_calls:
            return [], text
        calls = []
        for call in found:
            name = call.get("name") if isinstance(call, dict) else None
            tool = by_name.get(name) if isinstance(name, str) else None
            arguments = call.get(key, call.get("arguments")) if tool else None
            if tool is None or not isinstance(arguments, dict) or not tool.validator.is_valid(arguments):
                return [], text
            calls.append({"name": tool.name, "arguments": arguments})
        return calls, content


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested past the interpreter's limit
        return None


def _hermes_calls(text: str) -> list[Any] | None:
    """The JSON of each `<tool_call> {...} </tool_call>` in `text`, which starts at the first; None unless all are."""
    found, at, decoder = [], 0, json.JSONDecoder()
    while at < len(text):
        if not text.startswith("<tool_call>", at):
            return None
        at += len("<tool_call>")
        at += len(text[at:]) - len(text[at:].lstrip())
        value, at = decoder.raw_decode(text, at)  # the JSON's own end: a "</tool_call>" inside a string stays in it
        rest = text[at:].lstrip()
        if not rest.startswith("</tool_call>"):
            return None
        found.append(value)
        at = len(text) - len(rest) + len("</tool_call>")
        at += len(text[at:]) - len(text[at:].lstrip())
    return found


def _named_result(m: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
    """A tool message with the name of the call it answers (OpenAI sends only the call's id)."""
    if m["role"] != "tool" or m.get("tool_name"):  # Ollama names it itself
        return m
    if m.get("name") or not m.get("tool_call_id"):
        return {**m, "tool_name": m.get("name")}
    for earlier in messages:
        for call in earlier.get("tool_calls") or []:
            if call.get("id") == m["tool_call_id"]:
                return {**m, "tool_name": call["function"]["name"]}
    return m


def _arguments(value: Any) -> Any:
    if isinstance(value, str):
        parsed = _loads(value)
        return parsed if isinstance(parsed, dict) else value
    return value


def _native_message(m: dict[str, Any]) -> dict[str, Any]:
    """A message as HF templates read it: a call's arguments as an object, not JSON text."""
    out = {k: v for k, v in m.items() if v is not None}
    if out.get("tool_calls"):
        out["tool_calls"] = [
            {**c, "function": {**c["function"], "arguments": _arguments(c["function"].get("arguments"))}}
            for c in out["tool_calls"]
        ]
    return out


def plan_for(template: str, raw_tools: list[Any] | None, tool_choice: Any, *, parallel: bool = True) -> Plan:
    """The Plan for a request's `tools` and `tool_choice` (OpenAI's meanings); InvalidRequest naming the field."""
    chosen = family(template)
    if not raw_tools or tool_choice == "none":
        return Plan(chosen)
    tools = generic.parse_tools(raw_tools)
    strict = tool_choice == "required"
    if isinstance(tool_choice, dict):
        name = tool_choice["function"]["name"]
        tools = [t for t in tools if t.name == name]
        if not tools:
            raise InvalidRequest(f"tool_choice names {name!r}, which is not in tools",
                                 param="tool_choice.function.name", code="invalid_value")  # fmt: skip
        strict = True
    # Llama 3.x writes one call per turn
    max_calls = generic.MAX_CALLS if parallel and chosen != "llama3" else 1
    return Plan(chosen, tools, strict, max_calls)


def call_id(plan: Plan) -> str:
    if plan.family == "mistral":  # Mistral's templates refuse ids that are not 9 letters and digits
        return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(9))
    return "call_" + uuid.uuid4().hex[:24]


class ReplyReader:
    """Reads a reply as it streams: reasoning apart, content at once, calls once whole and valid.

    `feed(text)` and `finish()` return ("reasoning" | "content", text) pieces; after
    `finish()`, `calls` holds the tool calls (OpenAI's shape, with ids).
    """

    def __init__(self, plan: Plan, splitter: ThinkingSplitter | None) -> None:
        self.plan, self.splitter = plan, splitter
        self.calls: list[dict[str, Any]] = []
        self.reasoning_parts: list[str] = []
        self._marker, self._at_start = plan.marker()
        # generic and strict: the whole reply decides; otherwise content flows until a call may begin
        self._holding = plan.active and (plan.family == "generic" or plan.strict)
        self._seen = ""  # content so far, for a marker that counts only at the start
        self._held = ""

    def feed(self, text: str) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self.splitter is not None:
            thinking, text = self.splitter.feed(text)
            if thinking:
                self.reasoning_parts.append(thinking)
                out.append(("reasoning", thinking))
        if text:
            content = self._content(text)
            if content:
                out.append(("content", content))
        return out

    def _content(self, text: str) -> str:
        if not self.plan.active:
            return text
        if self._holding:
            self._held += text
            return ""
        self._held += text
        if self._at_start:
            stripped = self._held.lstrip()
            if not stripped:
                return ""
            if self._seen or not stripped.startswith(self._marker):
                self._seen += self._held
                out, self._held = self._held, ""
                return out
            self._holding = True
            return ""
        start = self._held.find(self._marker)
        if start >= 0:
            out, self._held, self._holding = self._held[:start], self._held[start:], True
            return out
        keep = _held_prefix(self._held, self._marker)
        out, self._held = self._held[: len(self._held) - keep], self._held[len(self._held) - keep :]
        return out

    def finish(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self.splitter is not None:
            thinking, text = self.splitter.finish()
            if thinking:
                self.reasoning_parts.append(thinking)
                out.append(("reasoning", thinking))
            content = self._content(text) if text else ""
            if content:
                out.append(("content", content))
        held, self._held = self._held, ""
        calls, content = self.plan.parse(held) if self._holding else ([], held)
        self.calls = [
            {"id": call_id(self.plan), "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
            for c in calls
        ]  # fmt: skip
        if content:
            out.append(("content", content))
        return out
