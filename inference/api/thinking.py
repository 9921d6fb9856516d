"""A reasoning model's thinking, split from its answer: the text between <think> and </think>.

Qwen3 and the DeepSeek R1 distills write `<think>…</think>` before the answer; their
templates often open the tag in the generation prompt already, so the output starts
inside it. `opens_thinking` says which (from the template itself), and `ThinkingSplitter`
splits a stream as it comes, holding back only what could be the start of a tag.
"""

import asyncio
import functools

from models_app.chat_templates import ChatTemplateError, render_chat_template

OPEN, CLOSE = "<think>", "</think>"


@functools.lru_cache(maxsize=256)
def _opens_thinking(template: str, bos: str, eos: str, enable_thinking: bool | None) -> bool:
    try:
        prompt = render_chat_template(template, [{"role": "user", "content": "x"}], bos_token=bos, eos_token=eos,
                                      enable_thinking=enable_thinking, timeout_s=2.0)  # fmt: skip
    except ChatTemplateError:
        return False  # the request's own rendering fails the same way and says why
    return prompt.rstrip().endswith(OPEN)


async def opens_thinking(template: str, bos: str, eos: str, enable_thinking: bool | None) -> bool:
    """Whether the template's generation prompt ends inside an open <think> (rendered once per template, off-loop)."""
    return await asyncio.to_thread(_opens_thinking, template, bos, eos, enable_thinking)


def _held_prefix(text: str, tag: str) -> int:
    """How many characters at the end of `text` could begin `tag` (kept back until the next piece)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


class ThinkingSplitter:
    """Feed output pieces; get back (thinking, content) pieces. Not thread-safe: one per request."""

    def __init__(self, *, inside: bool) -> None:
        self.state = "thinking" if inside else "start"
        self.pending = ""

    def feed(self, text: str) -> tuple[str, str]:
        self.pending += text
        thinking, content = "", ""
        while self.pending:
            if self.state == "start":  # an answer may open with <think> after whitespace
                stripped = self.pending.lstrip()
                if stripped.startswith(OPEN):
                    self.pending, self.state = stripped[len(OPEN) :], "thinking"
                elif OPEN.startswith(stripped):
                    break  # "", "<", "<thi", ...: wait for more
                else:
                    self.state = "content"
            elif self.state == "thinking":
                end = self.pending.find(CLOSE)
                if end >= 0:
                    thinking += self.pending[:end]
                    self.pending, self.state = self.pending[end + len(CLOSE) :], "after"
                    continue
                keep = _held_prefix(self.pending, CLOSE)
                thinking += self.pending[: len(self.pending) - keep]
                self.pending = self.pending[len(self.pending) - keep :]
                break
            elif self.state == "after":  # the whitespace between </think> and the answer is neither
                self.pending = self.pending.lstrip()
                if self.pending:
                    self.state = "content"
            else:
                content += self.pending
                self.pending = ""
        return thinking, content

    def finish(self) -> tuple[str, str]:
        """What was held back, at the end of the output."""
        rest, self.pending = self.pending, ""
        if self.state == "thinking":
            return rest, ""
        return "", rest.lstrip() if self.state == "after" else rest

    def split(self, text: str) -> tuple[str, str]:
        """A whole output at once: (thinking, content)."""
        thinking, content = self.feed(text)
        more_thinking, more_content = self.finish()
        return thinking + more_thinking, content + more_content
