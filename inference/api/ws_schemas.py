"""Frames of the websocket protocol (karen.v1), validated like the HTTP bodies."""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from inference.api.schemas import (
    ChatMessage,
    NamedToolChoice,
    ResponseFormat,
    SamplingParams,
    check_message_count,
    check_template_kwargs,
)

PROTOCOL = "karen.v1"
ClientId = Annotated[str, Field(min_length=1, max_length=100)]


class GenerateFrame(SamplingParams):
    """`{"type": "generate", "id", "model", "messages" | "prompt", ...sampling}`."""

    type: Literal["generate"]
    id: ClientId
    model: str = Field(min_length=1, max_length=200)
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    prompt: str | None = None
    response_format: ResponseFormat | None = None
    # chat only, as on /v1/chat/completions
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    @field_validator("messages")
    @classmethod
    def _bounded_messages(cls, value: list[ChatMessage] | None) -> list[ChatMessage] | None:
        return value if value is None else check_message_count(value)

    @model_validator(mode="after")
    def _one_input(self) -> "GenerateFrame":
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("send exactly one of 'messages' (chat) or 'prompt' (raw completion)")
        if self.prompt is not None and (self.tools or self.chat_template_kwargs or self.reasoning_effort):
            raise ValueError("tools, chat_template_kwargs and reasoning_effort go with 'messages' (chat)")
        if self.tool_choice not in (None, "none", "auto") and not self.tools:
            raise ValueError("tool_choice 'required' or a named function needs 'tools'")
        return self

    _template_kwargs = field_validator("chat_template_kwargs")(check_template_kwargs)


class CancelFrame(BaseModel):
    type: Literal["cancel"]
    id: ClientId
