"""Tokenize, detokenize and apply the chat template, without generating: /v1 (vLLM's shapes) and native (llama.cpp's).

They read the model's vocabulary alone (`inference.engine.vocab`): no slot, no load, no
usage row. Token ids a client sends are checked against the vocabulary first.
"""

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, TypeVar

from django.http import HttpRequest
from ninja import Router
from pydantic import Field

from inference.api import flow
from inference.api.chat import message_dicts
from inference.api.errors import InvalidRequest, Unavailable, as_api_error
from inference.api.schemas import ChatMessage, Strict, TokenId, check_message_count
from inference.auth import BearerAuth, Principal
from inference.engine.llama_runner import PromptError, render_prompt, utf8
from inference.engine.spec import ModelSpec
from inference.engine.vocab import Vocab, vocab_for

T = TypeVar("T")
v1_router = Router(tags=["OpenAI-compatible"])
native_router = Router(tags=["Native (KAREN)"])
_ERRORS = {400: dict, 401: dict, 403: dict, 404: dict, 429: dict, 500: dict, 503: dict}
# llama.cpp's tokenizer is worse than linear on text full of special-token markers (~1 s at this size);
# these endpoints run on two threads of their own, so a flood of them never holds up generation.
MAX_TEXT_CHARS = 262_144
_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tokenizer")


async def _off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(_POOL, functools.partial(fn, *args, **kwargs))


Messages = Annotated[list[ChatMessage], Field(min_length=1)]


class TokenizeRequest(Strict):
    model: str = Field(min_length=1, max_length=200)
    prompt: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    messages: Messages | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    return_token_strs: bool = False


class DetokenizeRequest(Strict):
    model: str = Field(min_length=1, max_length=200)
    tokens: Annotated[list[TokenId], Field(max_length=131072)]


class NativeTokenizeRequest(Strict):
    model_id: str | None = Field(default=None, max_length=200)
    content: str = Field(max_length=MAX_TEXT_CHARS)
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False


class NativeDetokenizeRequest(Strict):
    model_id: str | None = Field(default=None, max_length=200)
    tokens: Annotated[list[TokenId], Field(max_length=131072)]


class ApplyTemplateRequest(Strict):
    model_id: str | None = Field(default=None, max_length=200)
    messages: Messages


async def _vocab(principal: Principal, model: str) -> tuple[ModelSpec, Vocab]:
    spec = await flow.resolve_spec(principal, model)
    try:
        return spec, await _off_loop(vocab_for, spec.path)
    except OSError as exc:  # remote mode: the file may live on the inference nodes only
        message = f"{spec.model_id}'s file cannot be read on this node: {exc}"
        raise Unavailable(message, code="model_file_missing") from exc


def _render(spec: ModelSpec, messages: list[ChatMessage], add_generation_prompt: bool) -> str:
    """The prompt a chat request would get (tools aside): the same function the engine renders with."""
    check_message_count(messages)
    try:
        return render_prompt(spec, message_dicts(messages), add_generation_prompt=add_generation_prompt)
    except PromptError as exc:
        raise as_api_error(exc) from exc


def _checked(vocab: Vocab, tokens: list[int]) -> list[int]:
    for i, token in enumerate(tokens):
        if token >= vocab.n_vocab:
            raise InvalidRequest(f"tokens.{i} is {token}; this vocabulary has ids 0-{vocab.n_vocab - 1}",
                                 param=f"tokens.{i}", code="invalid_value")  # fmt: skip
    return tokens


def _text(vocab: Vocab, tokens: list[int]) -> str:
    return b"".join(vocab.piece(t, special=True) for t in _checked(vocab, tokens)).decode("utf-8", "replace")


@v1_router.post("/tokenize", auth=BearerAuth("inference"), response={200: dict, **_ERRORS})
async def tokenize(request: HttpRequest, body: TokenizeRequest) -> dict[str, Any]:
    """A prompt's or a chat's token ids (vLLM's shape): `count`, `max_model_len`, `tokens`."""
    if (body.prompt is None) == (body.messages is None):
        raise InvalidRequest("send exactly one of 'prompt' or 'messages'", param="prompt", code="invalid_value")
    spec, vocab = await _vocab(request.auth, body.model)
    if body.messages is not None:
        text = await _off_loop(_render, spec, body.messages, body.add_generation_prompt)
        add_special = spec.add_bos and not (spec.bos_token and text.startswith(spec.bos_token))
    else:
        text, add_special = body.prompt or "", body.add_special_tokens
    tokens = await _off_loop(vocab.tokenize, utf8(text, "prompt"), add_special=add_special,
                                     parse_special=True)  # fmt: skip
    out: dict[str, Any] = {"count": len(tokens), "max_model_len": spec.context_length, "tokens": tokens}
    if body.return_token_strs:
        out["token_strs"] = await _off_loop(lambda: [vocab.piece(t).decode("utf-8", "replace") for t in tokens])
    return out


@v1_router.post("/detokenize", auth=BearerAuth("inference"), response={200: dict, **_ERRORS})
async def detokenize(request: HttpRequest, body: DetokenizeRequest) -> dict[str, Any]:
    """The text of token ids (vLLM's shape: `prompt`)."""
    _, vocab = await _vocab(request.auth, body.model)
    return {"prompt": await _off_loop(_text, vocab, body.tokens)}


async def _native_model(request: HttpRequest, model_id: str | None) -> str:
    from inference.api.native import default_model_id

    return model_id or await default_model_id(request.auth)


@native_router.post("/tokenize", auth=BearerAuth("inference"), response={200: dict, **_ERRORS})
async def native_tokenize(request: HttpRequest, body: NativeTokenizeRequest) -> dict[str, Any]:
    """llama.cpp's /tokenize: `tokens`, or with `with_pieces` each `{"id", "piece"}` (bytes when not UTF-8)."""
    _, vocab = await _vocab(request.auth, await _native_model(request, body.model_id))
    tokens = await _off_loop(vocab.tokenize, utf8(body.content, "content"), add_special=body.add_special,
                                     parse_special=body.parse_special)  # fmt: skip
    if not body.with_pieces:
        return {"tokens": tokens}
    return {"tokens": await _off_loop(_pieces, vocab, tokens)}


def _pieces(vocab: Vocab, tokens: list[int]) -> list[dict[str, Any]]:
    """llama.cpp's `with_pieces`: each piece as text, or as its bytes when they are not UTF-8 on their own."""
    out = []
    for token in tokens:
        raw = vocab.piece(token)
        try:
            piece: str | list[int] = raw.decode("utf-8")
        except UnicodeDecodeError:
            piece = list(raw)
        out.append({"id": token, "piece": piece})
    return out


@native_router.post("/detokenize", auth=BearerAuth("inference"), response={200: dict, **_ERRORS})
async def native_detokenize(request: HttpRequest, body: NativeDetokenizeRequest) -> dict[str, Any]:
    """llama.cpp's /detokenize: `content`."""
    _, vocab = await _vocab(request.auth, await _native_model(request, body.model_id))
    return {"content": await _off_loop(_text, vocab, body.tokens)}


@native_router.post("/apply-template", auth=BearerAuth("inference"), response={200: dict, **_ERRORS})
async def apply_template(request: HttpRequest, body: ApplyTemplateRequest) -> dict[str, Any]:
    """llama.cpp's /apply-template: the prompt the model's chat template makes of `messages`."""
    spec = await flow.resolve_spec(request.auth, await _native_model(request, body.model_id))
    return {"prompt": await _off_loop(_render, spec, body.messages, True)}
