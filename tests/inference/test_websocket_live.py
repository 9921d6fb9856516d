"""End to end: the `websockets` client library against the live web server `make run` runs, with the real model."""

import asyncio
import json

import pytest
from websockets.asyncio.client import connect

pytestmark = pytest.mark.django_db(transaction=True)


async def test_websockets_client_streams_from_the_live_server(live_web_url, small_model, api_token):
    url = live_web_url.replace("http://", "ws://") + "/ws/v1/generate"
    async with connect(url, subprotocols=["karen.v1", f"bearer.{api_token[1]}"]) as ws:
        assert ws.subprotocol == "karen.v1"
        await ws.send(json.dumps({"type": "generate", "id": "e2e", "model": small_model.id,
                                  "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8}))  # fmt: skip
        frames = []
        while not frames or frames[-1]["type"] not in ("done", "error"):
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), timeout=120)))
    assert frames[0]["type"] == "start", frames
    assert frames[-1]["type"] == "done" and frames[-1]["usage"]["completion_tokens"] > 0
    assert "".join(f["text"] for f in frames if f["type"] == "token")


async def test_bad_token_is_closed_with_4401_by_the_live_server(live_web_url):
    url = live_web_url.replace("http://", "ws://") + "/ws/v1/generate"
    async with connect(url, additional_headers={"Authorization": "Bearer khk_nope"}) as ws:
        with pytest.raises(Exception):  # noqa: B017 - ConnectionClosed, whichever subclass
            await asyncio.wait_for(ws.recv(), timeout=60)
    assert ws.close_code == 4401
