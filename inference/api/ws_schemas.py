"""Frames of the websocket protocol (karen.v1), validated like the HTTP bodies."""

from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from inference.api.schemas import ChatMessage, ResponseFormat, SamplingParams, check_message_count

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

    @field_validator("messages")
    @classmethod
    def _bounded_messages(cls, value: list[ChatMessage] | None) -> list[ChatMessage] | None:
        return value if value is None else check_message_count(value)

    @model_validator(mode="after")
    def _one_input(self) -> "GenerateFrame":
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("send exactly one of 'messages' (chat) or 'prompt' (raw completion)")
        return self


class CancelFrame(BaseModel):
    type: Literal["cancel"]
    id: ClientId
