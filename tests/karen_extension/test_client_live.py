"""The async client against a live server with the real model, and against servers that fail."""

import json
import logging
import time

import pytest

from karen_extension import ClientConfig, KarenHostClient, StreamEnd, TextPiece
from karen_extension.errors import TokenRefused

HI = [{"role": "user", "content": "Say hello."}]
TRANSPORTS = ["http", "sse", "websocket"]
# Loggers on the client's side of the wire; the server's own logging is not ours to police.
CLIENT_LOGGERS = ("karen_extension", "httpx", "httpcore", "websockets", "extension.")


def client_for(url: str, monkeypatch, secret: str | None = None, **settings) -> KarenHostClient:
    if secret is not None:
        monkeypatch.setenv("KAREN_HOST_API_KEY", secret)
    # Generous: a first request may load the model on a busy CI machine; timeouts have their own test.
    return KarenHostClient(ClientConfig(base_url=url, **{"timeout_s": 120.0, **settings}))


def generate_kwargs(transport: str) -> dict:
    return {"stream": transport != "http", "transport": None if transport == "http" else transport, "max_tokens": 8}


async def test_health_needs_no_token(live, monkeypatch):
    client = client_for(live[0], monkeypatch)
    assert (await client.health())["status"] == "healthy"


async def test_models_lists_the_bundled_model(live, monkeypatch):
    url, secret, model = live
    client = client_for(url, monkeypatch, secret)
    assert [m["id"] for m in await client.list_models()] == [model]
    assert await client.resolve_model() == model  # the server's default, from /karen/config


async def test_chat_answers_with_the_servers_token_counts(live, monkeypatch):
    url, secret, model = live
    result = await client_for(url, monkeypatch, secret).generate(HI, max_tokens=8)
    assert result.status == "success" and not result.fallback_used and result.transport == "http"
    assert result.model == model and 1 <= result.usage["completion_tokens"] <= 8
    assert result.finish_reason in ("stop", "length")


@pytest.mark.parametrize("transport", ["sse", "websocket"])
async def test_stream_yields_text_then_one_end_with_usage(live, monkeypatch, transport):
    url, secret, model = live
    client = client_for(url, monkeypatch, secret)
    events = [e async for e in client.stream_chat(HI, transport=transport, max_tokens=8)]
    *pieces, end = events
    assert isinstance(end, StreamEnd) and end.model == model and end.usage["completion_tokens"] >= 1
    assert pieces and all(isinstance(p, TextPiece) for p in pieces)
    assert "".join(p.text for p in pieces).strip()


@pytest.mark.parametrize("transport", ["sse", "websocket"])
async def test_generate_streams_over_either_transport(live, monkeypatch, transport):
    url, secret, _ = live
    result = await client_for(url, monkeypatch, secret).generate(HI, **generate_kwargs(transport))
    assert result.status == "success" and result.transport == transport and result.text


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_refused_token_falls_back_with_the_reason_and_never_leaks(live, monkeypatch, caplog, transport):
    caplog.set_level(logging.DEBUG)
    secret = "khk_refused_secret_0123456789abcdefghijklmnop"
    client = client_for(live[0], monkeypatch, secret, model=live[2])
    result = await client.generate(HI, **generate_kwargs(transport))
    assert result.fallback_used and result.status == "fallback" and result.text == ""
    assert result.reason == "token_refused"
    assert secret not in json.dumps(result.to_dict())
    client_logs = [r.getMessage() for r in caplog.records if r.name.startswith(CLIENT_LOGGERS)]
    assert client_logs and not [line for line in client_logs if secret in line]


async def test_refused_token_raises_typed_error_from_the_plain_calls(live, monkeypatch):
    client = client_for(live[0], monkeypatch, "khk_refused_secret_0123456789abcdefghijklmnop")
    with pytest.raises(TokenRefused) as caught:
        await client.list_models()
    assert caught.value.status == 401 and "khk_refused" not in str(caught.value)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_server_down_falls_back(down_url, monkeypatch, transport):
    client = client_for(down_url, monkeypatch, "khk_whatever_0123456789", model="smollm2")
    result = await client.generate(HI, **generate_kwargs(transport))
    assert result.fallback_used and result.reason == "server_unreachable"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_timeout_is_honoured(stalled_url, monkeypatch, transport):
    client = client_for(stalled_url, monkeypatch, "khk_whatever_0123456789", model="smollm2", connect_timeout_s=5)
    started = time.monotonic()
    result = await client.generate(HI, timeout_s=0.5, **generate_kwargs(transport))
    assert result.fallback_used and result.reason == "timeout"
    assert 0.4 < time.monotonic() - started < 2.5


async def test_missing_token_falls_back_before_any_request(live, monkeypatch):
    result = await client_for(live[0], monkeypatch, model=live[2]).generate(HI, max_tokens=8)
    assert result.reason == "no_token" and "KAREN_HOST_API_KEY" in result.error


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_unknown_model_falls_back_with_model_not_found(live, monkeypatch, transport):
    client = client_for(live[0], monkeypatch, live[1])
    result = await client.generate(HI, model="no-such-model", **generate_kwargs(transport))
    assert result.fallback_used and result.reason == "model_not_found"
