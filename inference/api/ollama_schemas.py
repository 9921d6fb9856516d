"""Request schemas for Ollama's API (/api), and Ollama's `options` mapped onto our sampling fields.

Ollama ignores fields it does not know, and so do these schemas: its clients send
whatever their version of the API has. What they send that this server cannot honour
(images, a Go template, a `context`) is refused by name, never dropped silently.
"""

from typing import Annotated, Any, Literal

from django.conf import settings
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from inference.api.errors import InvalidRequest, describe_validation_error
from inference.api.schemas import KeepAlive, SamplingParams, check_message_count

# Ollama's option -> our SamplingParams field.
_SAMPLING_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repeat_penalty": "repeat_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "seed": "seed",
    "stop": "stop",
}
# Options that choose how a model is loaded: here they are the model's config in the admin, the same
# for every client of a shared model, so a request's values are ignored (reported in X-Ignored-Options).
LOAD_OPTIONS = frozenset(
    {"num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "use_mmap", "use_mlock", "low_vram",
     "numa", "num_keep", "f16_kv", "vocab_only", "logits_all", "embedding_only", "penalize_newline"}
)  # fmt: skip
# Samplers llama.cpp has and this server does not apply: accepted only at their neutral value.
_NEUTRAL = {"mirostat": 0, "tfs_z": 1.0}


class OllamaOptions(BaseModel):
    """What `options` turned into: the sampling fields, the penalties' look-back and typical-p, and what was ignored."""

    sampling: SamplingParams
    num_predict: int | None = None
    repeat_last_n: int | None = None
    typical_p: float = 1.0
    ignored: list[str] = Field(default_factory=list)


def parse_options(options: dict[str, Any] | None, keep_alive: str | float | None) -> OllamaOptions:
    """Validate Ollama's `options` (InvalidRequest naming `options.<name>` for a bad one)."""
    options = options or {}
    fields: dict[str, Any] = {"keep_alive": keep_alive}
    ignored: list[str] = []
    for name, value in options.items():
        if name in _SAMPLING_OPTIONS:
            fields[_SAMPLING_OPTIONS[name]] = value
        elif name in _NEUTRAL:
            if value is not None and value != _NEUTRAL[name]:
                raise InvalidRequest(
                    f"options.{name} is not supported by this server (only {_NEUTRAL[name]}, off).",
                    param=f"options.{name}",
                    code="unsupported_option",
                )
        elif name in LOAD_OPTIONS:
            ignored.append(name)
        # any other name: unknown to Ollama as well, which ignores it too
    num_predict = _integer(options, "num_predict")
    if num_predict is not None and num_predict not in (-1, -2) and not 1 <= num_predict <= settings.MAX_TOKENS_LIMIT:
        raise InvalidRequest(
            f"options.num_predict is -1 (up to MAX_TOKENS_LIMIT, {settings.MAX_TOKENS_LIMIT}) or 1 to "
            f"{settings.MAX_TOKENS_LIMIT}; it was {num_predict}.",
            param="options.num_predict",
            code="invalid_value",
        )
    repeat_last_n = _integer(options, "repeat_last_n")
    if repeat_last_n is not None and repeat_last_n < -1:
        raise InvalidRequest("options.repeat_last_n is -1 (the context), 0 (off) or a count of tokens.",
                             param="options.repeat_last_n", code="invalid_value")  # fmt: skip
    typical_p = options.get("typical_p", 1.0)
    if typical_p is None:
        typical_p = 1.0
    if isinstance(typical_p, bool) or not isinstance(typical_p, int | float) or not 0 < typical_p <= 1:
        raise InvalidRequest("options.typical_p is a number in (0, 1]; 1 turns it off.",
                             param="options.typical_p", code="invalid_value")  # fmt: skip
    try:
        sampling = SamplingParams.model_validate(fields)
    except ValidationError as exc:
        message, param = describe_validation_error(exc.errors())
        name = next((k for k, v in _SAMPLING_OPTIONS.items() if v == param), param)
        where = "keep_alive" if param == "keep_alive" else f"options.{name}"
        raise InvalidRequest(message.replace(f"'{param}'", f"'{where}'"), param=where, code="invalid_value") from exc
    return OllamaOptions(sampling=sampling, num_predict=num_predict, repeat_last_n=repeat_last_n,
                         typical_p=float(typical_p), ignored=sorted(ignored))  # fmt: skip


def _integer(options: dict[str, Any], name: str) -> int | None:
    value = options.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"options.{name} is an integer.", param=f"options.{name}", code="invalid_value")
    return value


class _Ollama(BaseModel):
    model_config = ConfigDict(extra="ignore")


Format = Literal["json", ""] | dict[str, Any] | None
Think = bool | Literal["high", "medium", "low"] | None


class OllamaCalledFunction(_Ollama):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    arguments: dict[str, Any] | str = Field(default_factory=dict)


class OllamaToolCall(_Ollama):
    function: OllamaCalledFunction


class OllamaMessage(_Ollama):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = ""
    images: list[str] | None = None
    tool_calls: list[OllamaToolCall] | None = None
    thinking: str | None = None  # the model's earlier reasoning; chat templates drop it from the history
    tool_name: str | None = None


class _Generation(_Ollama):
    model: Annotated[str, Field(max_length=200)] = ""
    format: Format = None
    options: dict[str, Any] | None = None
    stream: bool = True
    keep_alive: KeepAlive = None
    think: Think = None


class OllamaChatRequest(_Generation):
    messages: list[OllamaMessage] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None

    @field_validator("messages")
    @classmethod
    def _bounded_messages(cls, value: list[OllamaMessage]) -> list[OllamaMessage]:
        return check_message_count(value)


class OllamaGenerateRequest(_Generation):
    prompt: str = ""
    suffix: str | None = None
    images: list[str] | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool = False


class OllamaEmbedRequest(_Ollama):
    model: Annotated[str, Field(max_length=200)] = ""
    input: str | Annotated[list[str], Field(max_length=256)] = ""
    truncate: bool = True
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None
    dimensions: int | None = None


class OllamaEmbeddingsRequest(_Ollama):
    model: Annotated[str, Field(max_length=200)] = ""
    prompt: str = ""
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None


class OllamaShowRequest(_Ollama):
    model: Annotated[str, Field(max_length=200)] = ""
    name: Annotated[str, Field(max_length=200)] = ""  # the field's name before Ollama 0.5
    verbose: bool = False
