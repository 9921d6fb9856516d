"""Graceful stop of the real web server: SIGTERM lets running generations finish, refuses new ones, closes rows."""

import asyncio
import json
import signal
import threading

import httpx
import pytest
from websockets.asyncio.client import connect

from models_app.models import UsageRecord
from tests.conftest import WebServer, wait_for
from tests.inference.conftest import NO_EOS_BIAS

pytestmark = pytest.mark.django_db(transaction=True)


def _chat(model_id: str, max_tokens: int) -> dict:
    return {"model": model_id, "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": max_tokens, "stream": True, "logit_bias": NO_EOS_BIAS}  # fmt: skip


class Stream(threading.Thread):
    """One SSE chat request read to its end in a thread: its request id, its chunks, whether [DONE] came."""

    def __init__(self, url: str, secret: str, body: dict) -> None:
        super().__init__(daemon=True)
        self.url, self.secret, self.body = url, secret, body
        self.request_id, self.lines, self.done, self.error = "", [], False, None
        self.first = threading.Event()
        self.start()

    def run(self) -> None:
        try:
            with httpx.stream("POST", f"{self.url}/v1/chat/completions", json=self.body, timeout=120,
                              headers={"Authorization": f"Bearer {self.secret}"}) as response:  # fmt: skip
                self.request_id = response.headers["x-request-id"]
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.lines.append(line)
                        self.first.set()
                        self.done = self.done or line == "data: [DONE]"
        except Exception as exc:
            self.error = exc
        finally:
            self.first.set()


def _not_ready(url: str) -> bool:
    response = httpx.get(f"{url}/health/ready", timeout=10)
    return response.status_code == 503 and "serving" in response.json()["failing"]


def test_sigterm_lets_a_stream_finish_and_refuses_new_requests(tmp_path, small_model, api_token):
    server = WebServer(tmp_path / "web.log", DRAIN_TIMEOUT_S="60")
    try:
        stream = Stream(server.url, api_token[1], _chat(small_model.id, 400))  # seconds: outlives the checks
        assert stream.first.wait(60) and stream.error is None
        server.process.send_signal(signal.SIGTERM)
        assert wait_for(lambda: _not_ready(server.url), timeout=10)
        refused = httpx.post(f"{server.url}/v1/chat/completions", json=_chat(small_model.id, 4), timeout=30,
                             headers={"Authorization": f"Bearer {api_token[1]}"})  # fmt: skip
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
        assert int(refused.headers["Retry-After"]) == 60
        stream.join(120)
        assert stream.done and stream.error is None  # the whole answer, then [DONE]
        assert server.process.wait(timeout=60) == 0
    finally:
        server.stop()
    row = UsageRecord.objects.get(request_id=stream.request_id)
    assert (row.status, row.completion_tokens) == ("completed", 400)
    assert not UsageRecord.objects.filter(status="started").exists()


def test_past_the_drain_time_a_stream_is_cancelled_and_its_row_closed(tmp_path, small_model, api_token):
    server = WebServer(tmp_path / "web.log", DRAIN_TIMEOUT_S="1")
    try:
        stream = Stream(server.url, api_token[1], _chat(small_model.id, 3000))  # far past one second
        assert stream.first.wait(60) and stream.error is None
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0
        stream.join(60)
    finally:
        server.stop()
    row = UsageRecord.objects.get(request_id=stream.request_id)
    assert row.status == "cancelled" and 0 < row.completion_tokens < 3000


def test_a_websocket_client_is_told_before_the_close(tmp_path, small_model, api_token):
    server = WebServer(tmp_path / "web.log", DRAIN_TIMEOUT_S="60")

    async def talk() -> tuple[list[dict], int | None]:
        url = server.url.replace("http://", "ws://") + "/ws/v1/generate"
        frames: list[dict] = []
        async with connect(url, subprotocols=["karen.v1", f"bearer.{api_token[1]}"]) as ws:
            await ws.send(
                json.dumps(
                    {
                        "type": "generate",
                        "id": "g1",
                        "model": small_model.id,
                        "max_tokens": 200,
                        "messages": [{"role": "user", "content": "Hi"}],
                        "logit_bias": NO_EOS_BIAS,
                    }
                )
            )
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=60))
                frames.append(frame)
                if frame["type"] == "token" and len(frames) == 2:
                    server.process.send_signal(signal.SIGTERM)
                if frame["type"] == "shutdown":
                    await ws.send(json.dumps({"type": "generate", "id": "g2", "model": small_model.id,
                                              "messages": [{"role": "user", "content": "Hi"}]}))  # fmt: skip
                if frame["type"] in ("done", "error") and frame["id"] == "g1":
                    break
            try:
                while True:
                    frames.append(json.loads(await asyncio.wait_for(ws.recv(), timeout=60)))
            except Exception:
                pass
        return frames, ws.close_code

    try:
        frames, close_code = asyncio.run(talk())
        assert server.process.wait(timeout=60) == 0
    finally:
        server.stop()
    kinds = [(f["type"], f.get("id")) for f in frames if f["type"] != "token"]
    assert ("shutdown", None) in kinds and kinds.index(("shutdown", None)) < kinds.index(("done", "g1"))
    refused = next(f for f in frames if f["type"] == "error" and f["id"] == "g2")
    assert refused["error"]["code"] == "shutting_down" and refused["retry_after"] == 60
    assert next(f for f in frames if f["type"] == "done")["usage"]["completion_tokens"] == 200
    assert close_code == 4503
