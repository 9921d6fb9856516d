"""Render a model's own chat template (from its GGUF) in Jinja's sandbox."""

from datetime import date
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(Exception):
    """The template is broken or refused the messages; the message says why."""


def _raise_exception(message: str) -> None:
    # Templates call raise_exception("Conversation roles must alternate...") to refuse input.
    raise ChatTemplateError(message)


def _strftime_now(fmt: str) -> str:
    return date.today().strftime(fmt)


@lru_cache(maxsize=32)
def _compile(source: str) -> Any:
    # Lenient undefined on purpose: templates test optional keys such as `tools`.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def render_chat_template(
    source: str,
    messages: list[dict[str, Any]],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
) -> str:
    """The prompt text for `messages`, as the model was trained to see it."""
    try:
        template = _compile(source)
        return template.render(
            messages=messages,
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
        )
    except ChatTemplateError:
        raise
    except TemplateError as exc:
        raise ChatTemplateError(f"chat template failed: {exc}") from exc
    except Exception as exc:  # a template is untrusted code: any failure is its failure
        raise ChatTemplateError(f"chat template failed: {type(exc).__name__}: {exc}") from exc
