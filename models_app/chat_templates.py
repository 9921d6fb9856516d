"""Render a model's own chat template (from its GGUF) in Jinja's sandbox, within a time and size budget.

A template is untrusted code: the sandbox keeps it away from Python's internals, and the
budget keeps it from hanging the thread that renders it. Every call, attribute or item
lookup, `range` step and step over the request's own strings and lists checks the clock;
`*` and `**` may not build huge values; the output stops at a size limit. What the budget
cannot see is a loop over the template's own constants that does nothing else, which is
as long as the template text itself.
"""

import operator
import threading
import time
from datetime import date
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

DEFAULT_TIMEOUT_S = 2.0
DEFAULT_MAX_OUTPUT_CHARS = 4 * 1024 * 1024
_MAX_BUILT = 1_000_000  # items or characters one `*` may produce


class ChatTemplateError(Exception):
    """The template is broken, refused the messages, or ran past its budget; the message says why."""


class _Budget(threading.local):
    deadline: float = float("inf")
    timeout_s: float = DEFAULT_TIMEOUT_S


_budget = _Budget()


def _tick() -> None:
    if time.perf_counter() > _budget.deadline:
        raise ChatTemplateError(f"chat template took longer than {_budget.timeout_s:g}s to render; refused")


class _Text(str):
    """A request string whose characters, when a template walks them, count against the budget."""

    def __iter__(self) -> Any:
        for char in str.__iter__(self):
            _tick()
            yield char


class _List(list):
    def __iter__(self) -> Any:
        for item in list.__iter__(self):
            _tick()
            yield item


def _bounded_range(*args: int) -> Any:
    for value in range(*args):
        _tick()
        yield value


def _wrap(value: Any) -> Any:
    if isinstance(value, str):
        return _Text(value)
    if isinstance(value, dict):
        return {k: _wrap(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return _List(_wrap(v) for v in value)
    return value


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _tick()
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _tick()
        return super().getitem(obj, argument)

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        _tick()
        if operator_name == "**":
            if isinstance(right, int | float) and abs(right) > 64:
                raise ChatTemplateError("chat template raised a number to a power above 64; refused")
            return operator.pow(left, right)
        sequences = str | list | tuple
        sized = left if isinstance(left, sequences) else right if isinstance(right, sequences) else None
        times = right if sized is left else left
        if sized is not None and isinstance(times, int) and len(sized) * times > _MAX_BUILT:
            raise ChatTemplateError(f"chat template built a value over {_MAX_BUILT} items with '*'; refused")
        return operator.mul(left, right)


def _raise_exception(message: str) -> None:
    # Templates call raise_exception("Conversation roles must alternate...") to refuse input.
    raise ChatTemplateError(message)


def _strftime_now(fmt: str) -> str:
    return date.today().strftime(fmt)


# What a request's `chat_template_kwargs` may not set: the template's inputs that come from elsewhere.
RESERVED_VARIABLES = frozenset({
    "messages", "bos_token", "eos_token", "add_generation_prompt", "tools", "raise_exception", "strftime_now",
    "range", "self", "namespace", "dict", "cycler", "joiner", "lipsum", "loop", "caller", "varargs", "kwargs",
})  # fmt: skip


@lru_cache(maxsize=32)
def _compile(source: str) -> Any:
    # Lenient undefined on purpose: templates test optional keys such as `tools`.
    env = _BoundedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["range"] = _bounded_range
    return env.from_string(source)


def render_chat_template(
    source: str,
    messages: list[dict[str, Any]],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    enable_thinking: bool | None = None,
    tools: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
) -> str:
    """The prompt text for `messages`, as the model was trained to see it; ChatTemplateError if it fails.

    `enable_thinking` is passed to templates that read it (Qwen3's); None leaves it undefined (their default).
    `tools` are the request's tools as HF templates take them; `extra` adds variables (a request's
    `chat_template_kwargs`, `reasoning_effort`), never over the ones set here.
    """
    _budget.timeout_s = timeout_s
    _budget.deadline = time.perf_counter() + timeout_s
    try:
        template = _compile(source)
        parts: list[str] = []
        size = 0
        context = {k: _wrap(v) for k, v in (extra or {}).items() if k not in RESERVED_VARIABLES}
        context.update({
            "messages": _wrap(messages), "bos_token": bos_token, "eos_token": eos_token,
            "add_generation_prompt": add_generation_prompt,
        })  # fmt: skip
        if enable_thinking is not None:
            context["enable_thinking"] = enable_thinking
        if tools:
            context["tools"] = _wrap(tools)
        for part in template.generate(**context):
            size += len(part)
            if size > max_output_chars:
                raise ChatTemplateError(f"chat template output passed {max_output_chars} characters; refused")
            parts.append(part)
            _tick()
        return "".join(parts)
    except ChatTemplateError:
        raise
    except TemplateError as exc:
        raise ChatTemplateError(f"chat template failed: {exc}") from exc
    except Exception as exc:  # a template is untrusted code: any failure is its failure
        raise ChatTemplateError(f"chat template failed: {type(exc).__name__}: {exc}") from exc
    finally:
        _budget.deadline = float("inf")


def supports_thinking(source: str) -> bool:
    """Whether a chat template is a reasoning model's that marks its thinking with <think> tags (Qwen3, R1)."""
    return "<think>" in source or "enable_thinking" in source
