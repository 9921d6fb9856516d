"""The websocket protocol at /ws/v1/generate, driven with Channels' WebsocketCommunicator."""

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from inference.metering import counters
from karen_host.asgi import application
from models_app.models import LLMModel, UsageRecord
from models_app.services import issue_token
from tests.inference.conftest import NO_EOS_BIAS

pytestmark = pytest.mark.django_db(transaction=True)


def communicator(secret=None, *, subprotocols=None, origin=None):
    headers = []
    if secret:
        headers.append((b"authorization", f"Bearer {secret}".encode()))
    if origin:
        headers.append((b"origin", origin.encode()))
    return WebsocketCommunicator(application, "/ws/v1/generate", headers=headers, subprotocols=subprotocols)


async def until(comm, frame_type, frame_id=None, timeout=60):
    """Frames received until (and including) the first of `frame_type` for `frame_id`."""
    frames = []
    while True:
        frame = await comm.receive_json_from(timeout=timeout)
        frames.append(frame)
        if frame["type"] == frame_type and (frame_id is None or frame.get("id") == frame_id):
            return frames


def generate(frame_id, model, **extra):
    return {"type": "generate", "id": frame_id, "model": model, "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 6, **extra}  # fmt: skip


@pytest.fixture
def secret(api_token):
    return api_token[1]


async def test_header_token_streams_start_tokens_done(secret, small_model):
    comm = communicator(secret)
    connected, _ = await comm.connect()
    assert connected
    await comm.send_json_to(generate("a", small_model.id))
    frames = await until(comm, "done", "a")
    assert frames[0] == {"type": "start", "id": "a", "model": small_model.id}
    assert all(f["type"] == "token" and f["text"] for f in frames[1:-1])
    done = frames[-1]
    assert done["finish_reason"] in ("stop", "length") and 0 < done["usage"]["completion_tokens"] <= 6
    row = await sync_to_async(UsageRecord.objects.get)()
    assert (row.endpoint, row.status, row.completion_tokens) == (
        "ws.generate",
        "completed",
        done["usage"]["completion_tokens"],
    )
    await comm.disconnect()


async def test_subprotocol_token_is_accepted_and_karen_v1_is_selected(secret, small_model):
    comm = communicator(subprotocols=["karen.v1", f"bearer.{secret}"])
    connected, subprotocol = await comm.connect()
    assert connected and subprotocol == "karen.v1"
    await comm.send_json_to(generate("a", small_model.id, max_tokens=2))
    assert (await until(comm, "done"))[-1]["id"] == "a"
    await comm.disconnect()


@pytest.mark.parametrize("secret_value", [None, "khk_" + "x" * 43])
async def test_bad_or_missing_token_closes_with_4401(db, secret_value):
    refused_before = counters.snapshot()["rejected"].get("/ws/v1/generate:401", 0)
    comm = communicator(secret_value)
    await comm.connect()
    closed = await comm.receive_output(timeout=30)
    assert closed["type"] == "websocket.close" and closed["code"] == 4401
    assert counters.snapshot()["rejected"]["/ws/v1/generate:401"] == refused_before + 1


async def test_token_in_the_query_string_is_not_accepted(secret):
    comm = WebsocketCommunicator(application, f"/ws/v1/generate?token={secret}")
    await comm.connect()
    assert (await comm.receive_output(timeout=30))["code"] == 4401


async def test_foreign_origin_is_refused(secret):
    comm = communicator(secret, origin="https://evil.example")
    connected, _ = await comm.connect()
    assert not connected


async def test_two_concurrent_ids_both_finish_and_are_metered(secret, small_model):
    comm = communicator(secret)
    await comm.connect()
    await comm.send_json_to(generate("one", small_model.id))
    await comm.send_json_to(generate("two", small_model.id, messages=[{"role": "user", "content": "Bye"}]))
    done = {}
    while len(done) < 2:
        frame = await comm.receive_json_from(timeout=60)
        if frame["type"] == "done":
            done[frame["id"]] = frame
    assert set(done) == {"one", "two"}
    assert await sync_to_async(UsageRecord.objects.filter(status="completed").count)() == 2
    await comm.disconnect()


async def test_cancel_stops_one_generation_and_meters_it_cancelled(secret, small_model):
    comm = communicator(secret)
    await comm.connect()
    await comm.send_json_to(generate("long", small_model.id, max_tokens=2000, logit_bias=NO_EOS_BIAS))
    await until(comm, "token", "long")
    await comm.send_json_to({"type": "cancel", "id": "long"})
    done = (await until(comm, "done", "long"))[-1]
    assert done["finish_reason"] == "cancelled" and done["usage"]["completion_tokens"] < 2000
    row = await sync_to_async(UsageRecord.objects.get)()
    assert row.status == "cancelled" and row.completion_tokens == done["usage"]["completion_tokens"]
    await comm.disconnect()


async def test_disconnect_cancels_everything_in_flight(secret, small_model):
    comm = communicator(secret)
    await comm.connect()
    for frame_id in ("x", "y"):
        await comm.send_json_to(generate(frame_id, small_model.id, max_tokens=2000, logit_bias=NO_EOS_BIAS))
    started = set()
    while started != {"x", "y"}:  # both admitted (usage rows exist); a job not yet admitted leaves no row
        frame = await comm.receive_json_from(timeout=60)
        if frame["type"] == "start":
            started.add(frame["id"])
    await comm.disconnect()
    for _ in range(1200):  # up to a minute on a loaded machine
        statuses = await sync_to_async(lambda: sorted(UsageRecord.objects.values_list("status", flat=True)))()
        if statuses == ["cancelled", "cancelled"]:
            break
        await asyncio.sleep(0.05)
    assert statuses == ["cancelled", "cancelled"]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("not json", "invalid_json"),
        ("[1, 2]", "invalid_frame"),
        ('{"type": "dance", "id": "q"}', "invalid_frame"),
        ('{"type": "generate", "id": "q", "model": "m"}', "invalid_value"),
        ('{"type": "generate", "id": "q", "model": "m", "prompt": "a", "max_tokens": -3}', "invalid_value"),
        ('{"type": "cancel", "id": "nothing"}', "unknown_id"),
    ],
)
async def test_malformed_frames_get_an_error_frame_and_the_socket_stays(secret, small_model, raw, code):
    comm = communicator(secret)
    await comm.connect()
    await comm.send_to(text_data=raw)
    frame = await comm.receive_json_from(timeout=60)
    assert frame["type"] == "error" and frame["error"]["code"] == code
    await comm.send_json_to(generate("after", small_model.id, max_tokens=2))
    assert (await until(comm, "done", "after"))[-1]["type"] == "done"
    await comm.disconnect()


async def test_model_not_allowed_is_an_error_frame_not_a_close(admin_user, small_model, gguf_copy):
    await sync_to_async(LLMModel.objects.create)(id="other", name="o", file_path=str(gguf_copy))
    _, secret = await sync_to_async(issue_token)(name="n", owner=admin_user, scopes=["inference"], models=["other"])
    refused_before = counters.snapshot()["rejected"]
    comm = communicator(secret)
    await comm.connect()
    await comm.send_json_to(generate("a", small_model.id))
    frame = await comm.receive_json_from(timeout=60)
    assert frame["type"] == "error" and frame["id"] == "a" and frame["error"]["type"] == "permission_error"
    await comm.send_json_to({"type": "generate", "id": "b", "model": "nope", "prompt": "x"})
    assert (await comm.receive_json_from(timeout=60))["error"]["type"] == "not_found_error"
    await comm.disconnect()
    refused = counters.snapshot()["rejected"]
    for key in ("/ws/v1/generate:403", "/ws/v1/generate:404"):  # counted as refusals, not billed
        assert refused[key] == refused_before.get(key, 0) + 1
    assert not await sync_to_async(UsageRecord.objects.exists)()


async def test_token_without_inference_scope_gets_an_error_frame(admin_user, small_model):
    _, secret = await sync_to_async(issue_token)(name="r", owner=admin_user, scopes=["models:read"])
    comm = communicator(secret)
    connected, _ = await comm.connect()
    assert connected
    await comm.send_json_to(generate("a", small_model.id))
    assert (await comm.receive_json_from(timeout=60))["error"]["code"] == "insufficient_scope"
    await comm.disconnect()


async def test_a_required_tool_call_comes_whole_in_the_done_frame(secret, small_model):
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 20}},
                "required": ["city"],
            },
        },
    }
    comm = communicator(secret)
    await comm.connect()
    await comm.send_json_to(generate("t", small_model.id, tools=[weather], tool_choice="required",
                                     parallel_tool_calls=False, max_tokens=120, temperature=0))  # fmt: skip
    frames = await until(comm, "done", "t")
    done = frames[-1]
    assert done["finish_reason"] == "tool_calls", frames
    [call] = done["tool_calls"]
    assert call["function"]["name"] == "get_weather" and call["id"].startswith("call_")
    assert isinstance(json.loads(call["function"]["arguments"])["city"], str)
    assert not [f for f in frames if f["type"] == "token"]  # the call's JSON is not also sent as text
    await comm.disconnect()


async def test_tools_with_a_prompt_are_refused_naming_the_field(secret, small_model):
    comm = communicator(secret)
    await comm.connect()
    await comm.send_json_to({"type": "generate", "id": "p", "model": small_model.id, "prompt": "Hi",
                             "tools": [{"type": "function", "function": {"name": "f"}}]})  # fmt: skip
    [error] = await until(comm, "error", "p")
    assert error["error"]["code"] in ("invalid_request_error", "invalid_value") or error["error"]["message"]
    assert "messages" in error["error"]["message"]
    await comm.send_json_to(generate("q", small_model.id, tool_choice="required"))
    [error] = await until(comm, "error", "q")
    assert "needs 'tools'" in error["error"]["message"]
    await comm.disconnect()


async def test_a_cancel_right_after_generate_still_ends_it_with_one_done(api_token, small_model):
    # Whether the cancel lands before admission or after: one `done`, cancelled, nothing else after it.
    comm = communicator(api_token[1])
    await comm.connect()
    await comm.send_json_to(generate("c1", small_model.id, max_tokens=2000, logit_bias=NO_EOS_BIAS))
    await comm.send_json_to({"type": "cancel", "id": "c1"})
    frames = await until(comm, "done", "c1")
    assert frames[-1]["finish_reason"] == "cancelled"
    assert [f["type"] for f in frames if f["type"] in ("done", "error")] == ["done"]
    assert await comm.receive_nothing(timeout=0.5)
    await comm.disconnect()
