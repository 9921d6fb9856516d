"""Request schemas for /v1 and the native endpoints: bounded, typed, no stray fields.

Unknown fields are refused by name (400), except a few OpenAI fields that change
nothing here (`user`, `metadata`, `store`, ...), which clients send routinely.
"""

import json
import math
import re
from typing import Annotated, Any, Literal

from django.conf import settings
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from models_app.chat_templates import RESERVED_VARIABLES

_IGNORED_OPENAI_FIELDS = {"user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier"}
MAX_CHOICES = 8  # n: each choice is its own generation, in its own slot
MAX_TEMPLATE_KWARGS_BYTES = 4096
MAX_TOP_LOGPROBS = 20
MAX_TOKEN_IDS = 131072  # one prompt or input as token ids (the model's context is the real bound)
_DURATION = re.compile(r"^(-?\d+(?:\.\d+)?)(ms|s|m|h)?$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _drop_ignored(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k not in _IGNORED_OPENAI_FIELDS}
        return data


def parse_keep_alive(value: str | float | None) -> float | None:
    """Ollama's keep_alive: "5m", "30s", 300, 0 (unload now), negative (forever) -> seconds.

    ValueError for anything else, an infinite or overflowing number included.
    """
    if value is None:
        return -1.0  # the pool's default
    problem = "keep_alive is a duration like '5m', '30s', '1h' or a number of seconds"
    if isinstance(value, bool):
        raise ValueError(problem)
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError as exc:
            raise ValueError(f"{problem}; {value} is too large") from exc
    else:
        match = _DURATION.match(str(value).strip())
        if not match:
            raise ValueError(problem)
        seconds = float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]
    if not math.isfinite(seconds):
        raise ValueError(f"{problem}; it must be finite")
    return None if seconds < 0 else seconds


def _valid_keep_alive(value: str | float | None) -> str | float | None:
    parse_keep_alive(value)
    return value


# Every request field named keep_alive is checked where it is parsed: a bad one is a 400, never a 500.
KeepAlive = Annotated[str | float | None, AfterValidator(_valid_keep_alive)]


class SamplingParams(Strict):
    """Sampling shared by chat, completions and the native /inference."""

    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0, le=1000)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    repeat_penalty: Annotated[float, Field(ge=0, le=2)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    keep_alive: KeepAlive = None

    @field_validator("max_tokens")
    @classmethod
    def _cap(cls, value: int | None) -> int | None:
        if value is not None and value > settings.MAX_TOKENS_LIMIT:
            raise ValueError(f"at most {settings.MAX_TOKENS_LIMIT} (MAX_TOKENS_LIMIT)")
        return value

    @field_validator("stop")
    @classmethod
    def _bounded_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > settings.MAX_STOP_STRINGS:
            raise ValueError(f"at most {settings.MAX_STOP_STRINGS} stop strings (MAX_STOP_STRINGS)")
        if any(len(stop) > settings.MAX_STOP_CHARS for stop in stops):
            raise ValueError(f"each stop string is at most {settings.MAX_STOP_CHARS} characters (MAX_STOP_CHARS)")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is not None and len(value) > settings.MAX_LOGIT_BIAS:
            raise ValueError(f"at most {settings.MAX_LOGIT_BIAS} entries (MAX_LOGIT_BIAS)")
        for key in value or {}:
            # ASCII digits only: "²".isdigit() is true, and int("²") fails
            if not (key.isascii() and key.isdigit()) or len(key) > 10:
                raise ValueError(f"keys are token ids (non-negative integers); {key[:20]!r} is not")
        return value


def check_message_count(messages: list[Any]) -> list[Any]:
    if len(messages) > settings.MAX_MESSAGES:
        raise ValueError(f"at most {settings.MAX_MESSAGES} messages (MAX_MESSAGES)")
    return messages


def check_template_kwargs(cls: type, value: dict[str, Any] | None) -> dict[str, Any] | None:
    """`chat_template_kwargs`: a small object of template variables, none of those the server sets."""
    if value is None:
        return value
    if len(json.dumps(value)) > MAX_TEMPLATE_KWARGS_BYTES:
        raise ValueError(f"at most {MAX_TEMPLATE_KWARGS_BYTES} bytes of JSON")
    for key in value:
        if not key.isidentifier() or key in RESERVED_VARIABLES:
            raise ValueError(f"{key[:40]!r} cannot be set: keys are template variables other than "
                             f"{', '.join(sorted(RESERVED_VARIABLES))}")  # fmt: skip
    return value


class StreamOptions(Strict):
    include_usage: bool = False


class JSONSchemaFormat(BaseModel):
    name: str = "response"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> "ResponseFormat":
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs a 'json_schema' object with a 'schema'")
        return self


class ContentPart(BaseModel):
    type: Literal["text"]
    text: str


class CalledFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=64)
    arguments: str | dict[str, Any] = "{}"  # OpenAI sends JSON text; some clients send the object


class MessageToolCall(BaseModel):
    """A call an assistant made earlier, as the client sends it back in the history."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(default="", max_length=100)
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # refusal, audio, ... carry nothing for llama.cpp

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = Field(default=None, max_length=64)
    tool_calls: Annotated[list[MessageToolCall], Field(max_length=64)] | None = None
    tool_call_id: str | None = Field(default=None, max_length=100)
    reasoning_content: str | None = None  # an earlier answer's reasoning; templates that show it get it


class _Generation(SamplingParams):
    model: str = Field(min_length=1, max_length=200)
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("n")
    @classmethod
    def _choices(cls, value: int) -> int:
        if not 1 <= value <= MAX_CHOICES:
            raise ValueError(f"n is 1 to {MAX_CHOICES} choices")
        return value


class ChosenFunction(BaseModel):
    name: str = Field(min_length=1, max_length=64)


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: ChosenFunction


class ChatCompletionRequest(_Generation):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    tools: list[dict[str, Any]] | None = None  # checked in the view, each named by its place (tools.parse_tools)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    modalities: list[Literal["text"]] | None = None  # text is all this server writes

    @field_validator("messages")
    @classmethod
    def _bounded_messages(cls, value: list[ChatMessage]) -> list[ChatMessage]:
        return check_message_count(value)

    _template_kwargs = field_validator("chat_template_kwargs")(check_template_kwargs)

    @property
    def n_probs(self) -> int:
        return (self.top_logprobs or 0) if self.logprobs else -1

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> "ChatCompletionRequest":
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    @model_validator(mode="after")
    def _tool_choice_needs_tools(self) -> "ChatCompletionRequest":
        if self.tool_choice not in (None, "none", "auto") and not self.tools:
            raise ValueError("tool_choice 'required' or a named function needs 'tools'")
        return self


TokenId = Annotated[int, Field(ge=0, le=2**31 - 1)]
TokenIds = Annotated[list[TokenId], Field(min_length=1, max_length=MAX_TOKEN_IDS)]


class CompletionRequest(_Generation):
    # text, token ids, or several of either: each prompt is its own choice (n each)
    prompt: (
        str
        | Annotated[list[str], Field(min_length=1, max_length=MAX_CHOICES)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_CHOICES)]
    )
    echo: bool = False
    suffix: str | None = None
    logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None

    @property
    def n_probs(self) -> int:
        return -1 if self.logprobs is None else self.logprobs

    @model_validator(mode="after")
    def _bounded_choices(self) -> "CompletionRequest":
        if len(self.prompts()) * self.n > MAX_CHOICES:
            raise ValueError(f"prompts times n is at most {MAX_CHOICES} choices")
        return self

    def prompts(self) -> list[str | list[int]]:
        """Each prompt: a text or a list of token ids."""
        if isinstance(self.prompt, str) or (self.prompt and isinstance(self.prompt[0], int)):
            return [self.prompt]
        return list(self.prompt)

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool) -> bool:
        if value:
            raise ValueError("echo is not supported by this server")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("suffix (fill-in-the-middle) is not supported by this server")
        return value


class EmbeddingRequest(Strict):
    model: str = Field(min_length=1, max_length=200)
    # text, texts, token ids (what LangChain's OpenAIEmbeddings sends), or lists of token ids
    input: (
        str
        | Annotated[list[str], Field(min_length=1, max_length=256)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1, max_length=256)]
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    keep_alive: KeepAlive = None

    @field_validator("dimensions")
    @classmethod
    def _no_dimensions(cls, value: int | None) -> int | None:
        if value is not None:
            raise ValueError("dimensions is not supported; the model's own embedding size is returned")
        return value


class LoadRequest(Strict):
    model_id: str = Field(min_length=1, max_length=200)
    keep_alive: KeepAlive = None


class NativeInferenceRequest(Strict):
    prompt: str = Field(min_length=1)
    parameters: SamplingParams = Field(default_factory=SamplingParams)
    stream: bool = False
    model_id: str | None = None
    system_prompt: str | None = None
