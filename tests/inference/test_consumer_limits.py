"""A token's limits on the websocket's `generate` frames: an error frame with retry_after, never billed."""

import pytest
from asgiref.sync import sync_to_async

from inference.limits.admission import reset_limiter
from inference.metering import counters
from models_app.models import APIToken, UsageRecord
from models_app.services import issue_token
from tests.inference.conftest import NO_EOS_BIAS
from tests.inference.test_consumers import communicator, generate, until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh_limits():
    reset_limiter()
    yield
    reset_limiter()


@sync_to_async
def limited_secret(admin_user, **limits) -> str:
    token, secret = issue_token(name="limited", owner=admin_user, scopes=["inference"])
    APIToken.objects.filter(pk=token.pk).update(**limits)
    return secret


async def test_past_rpm_a_generate_gets_an_error_frame_with_retry_after(admin_user, small_model):
    secret = await limited_secret(admin_user, rate_limit_rpm=1)
    refused_before = counters.snapshot()["rejected"].get("/ws/v1/generate:429", 0)
    comm = communicator(secret)
    await comm.connect()
    await comm.send_json_to(generate("a", small_model.id, max_tokens=2))
    assert (await until(comm, "done", "a"))[-1]["type"] == "done"
    await comm.send_json_to(generate("b", small_model.id, max_tokens=2))
    frame = await comm.receive_json_from(timeout=60)
    assert (frame["type"], frame["id"], frame["error"]["code"]) == ("error", "b", "rate_limit_exceeded")
    assert frame["error"]["type"] == "rate_limit_error" and 1 <= frame["retry_after"] <= 60
    assert counters.snapshot()["rejected"]["/ws/v1/generate:429"] == refused_before + 1
    assert await sync_to_async(UsageRecord.objects.count)() == 1
    await comm.disconnect()


async def test_max_concurrent_holds_across_generations_on_one_socket(admin_user, small_model):
    secret = await limited_secret(admin_user, max_concurrent=1)
    comm = communicator(secret)
    await comm.connect()
    await comm.send_json_to(generate("long", small_model.id, max_tokens=2000, logit_bias=NO_EOS_BIAS))
    await until(comm, "token", "long")
    await comm.send_json_to(generate("second", small_model.id, max_tokens=2))
    refused = (await until(comm, "error", "second"))[-1]
    assert refused["error"]["code"] == "concurrency_limit_exceeded" and refused["retry_after"] == 1
    await comm.send_json_to({"type": "cancel", "id": "long"})
    await until(comm, "done", "long")
    await comm.send_json_to(generate("third", small_model.id, max_tokens=2))
    assert (await until(comm, "done", "third"))[-1]["type"] == "done"
    await comm.disconnect()
