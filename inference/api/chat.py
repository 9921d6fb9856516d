"""A chat request made ready for the engine: tools, reasoning and template variables, for /v1 and the websocket.

Both surfaces send the same fields (`tools`, `tool_choice`, `parallel_tool_calls`,
`chat_template_kwargs`, `reasoning_effort`, `response_format`) and read the reply the
same way (a `ReplyReader` per choice), so both come through `prepare_chat`.
"""

import asyncio
import dataclasses
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from inference.api import flow
from inference.api.errors import InvalidRequest
from inference.api.schemas import ChatMessage, ResponseFormat, SamplingParams
from inference.api.thinking import ThinkingSplitter, opens_thinking
from inference.api.tool_formats import Plan, ReplyReader, plan_for
from inference.engine import Job
from inference.engine.spec import ModelSpec
from models_app.chat_templates import supports_thinking


@dataclass
class ChatSetup:
    job: Job
    plan: Plan
    split_thinking: bool  # the template marks reasoning with <think>: it goes apart from the answer
    inside_thinking: bool  # the prompt opens <think>: the output starts inside it

    def reader(self) -> ReplyReader:
        splitter = ThinkingSplitter(inside=self.inside_thinking) if self.split_thinking else None
        return ReplyReader(self.plan, splitter)


def choice_jobs(job: Job, n: int) -> list[Job]:
    """The job once per choice; with a seed, choice i samples with seed + i (n answers, not n copies)."""
    jobs = [job]
    for i in range(1, n):
        sampling = dataclasses.replace(job.sampling)
        if sampling.seed is not None:
            sampling.seed += i
        jobs.append(dataclasses.replace(job, id=uuid.uuid4().hex, sampling=sampling))
    return jobs


def response_schema(response_format: ResponseFormat | None) -> dict[str, Any] | None:
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return {}
    return response_format.json_schema.schema_ or {}


def message_dicts(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as the template reads them: `developer` is a system message; unset fields are left out."""
    out = []
    for m in messages:
        data = m.model_dump(exclude_none=True)
        if m.role == "developer":
            data["role"] = "system"
        content = data.get("content")  # text parts joined: every template and the generic tools read text
        data["content"] = content if isinstance(content, str) else "".join(p["text"] for p in content or [])
        out.append(data)
    return out


async def prepare_chat(
    spec: ModelSpec,
    body: SamplingParams,
    messages: list[ChatMessage],
    *,
    tools: list[Any] | None = None,
    tool_choice: Any = None,
    parallel_tool_calls: bool = True,
    response_format: ResponseFormat | None = None,
    chat_template_kwargs: dict[str, Any] | None = None,
    reasoning_effort: str | None = None,
    max_tokens: int | None = None,
    n_probs: int = -1,
) -> ChatSetup:
    """The job and the reply's reading for one chat request; InvalidRequest naming the field."""
    if isinstance(tool_choice, BaseModel):
        tool_choice = tool_choice.model_dump()
    # Off the event loop: each tool's schema becomes a grammar, which takes time for large ones.
    plan = await asyncio.to_thread(plan_for, spec.chat_template, tools, tool_choice, parallel=parallel_tool_calls)
    schema = response_schema(response_format)
    if plan.active and schema is not None:
        raise InvalidRequest("response_format and tools both shape the reply; send one of them",
                             param="response_format", code="invalid_value")  # fmt: skip
    variables = dict(chat_template_kwargs or {})
    enable_thinking = variables.pop("enable_thinking", None)
    if enable_thinking is not None and not isinstance(enable_thinking, bool):
        raise InvalidRequest("enable_thinking is true or false", param="chat_template_kwargs.enable_thinking",
                             code="invalid_value")  # fmt: skip
    if reasoning_effort is not None:
        variables["reasoning_effort"] = reasoning_effort  # gpt-oss's template reads it; the checked field wins
        if reasoning_effort == "none" and enable_thinking is None:
            enable_thinking = False
    split = supports_thinking(spec.chat_template)
    # A grammar that holds the output from its first token (a response_format, the generic tools, a
    # required call) leaves no room for thinking: thinking is turned off, or the request refused.
    held_from_start = schema is not None or (plan.active and (plan.family == "generic" or plan.strict))
    if split and held_from_start and enable_thinking is None:
        enable_thinking = False
    inside = split and await opens_thinking(spec.chat_template, spec.bos_token, spec.eos_token, enable_thinking)
    if held_from_start and inside:
        field = "response_format" if schema is not None else "tool_choice" if plan.strict else "tools"
        raise InvalidRequest(f"this model's template opens its thinking here, and {field} holds the answer to a "
                             "grammar from its first token, which leaves no room for it: set "
                             "chat_template_kwargs.enable_thinking to false"
                             + (", or use tool_choice 'auto' with a template that renders tools"
                                if field != "response_format" else ""),
                             param=field, code="unsupported_feature")  # fmt: skip
    sampling = flow.build_sampling(body, spec, max_tokens=max_tokens, json_schema=schema, n_probs=n_probs)
    plan.constrain(sampling, thinking=("inside" if inside else "maybe") if split else "")
    job = flow.make_job(
        spec, body, kind="chat", sampling=sampling, messages=plan.messages(message_dicts(messages), spec.system_prompt),
        tools=plan.template_tools(), template_kwargs=variables, enable_thinking=enable_thinking,
    )  # fmt: skip
    return ChatSetup(job, plan, split, inside)
