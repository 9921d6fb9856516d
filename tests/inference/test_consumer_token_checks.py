"""An open websocket checks its token again at each `generate` frame, through the auth cache."""

import asyncio
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from inference.auth import clear_auth_cache
from models_app.models import APIToken, UsageRecord
from models_app.services import revoke_token, update_token
from tests.inference.test_consumers import communicator, generate, until

pytestmark = pytest.mark.django_db(transaction=True)


def _revoke(token: APIToken) -> None:
    revoke_token(token=token)


def _expire(token: APIToken) -> None:
    APIToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))


def _deactivate_owner(token: APIToken) -> None:
    token.owner.is_active = False
    token.owner.save(update_fields=["is_active"])


@pytest.mark.parametrize(
    ("invalidate", "reason"),
    [(_revoke, "revoked"), (_expire, "expired"), (_deactivate_owner, "deactivated")],
    ids=["revoked", "expired", "owner-deactivated"],
)
async def test_a_token_no_longer_valid_gets_an_error_frame_then_4401_at_its_next_generate(
    api_token, small_model, invalidate, reason
):
    token, secret = api_token
    comm = communicator(secret)
    assert (await comm.connect())[0]
    await sync_to_async(invalidate)(token)
    clear_auth_cache()  # stands in for AUTH_CACHE_TTL_S passing
    await comm.send_json_to(generate("a", small_model.id))
    frame = await comm.receive_json_from(timeout=60)
    assert frame["type"] == "error" and frame["id"] == "a"
    assert frame["error"]["type"] == "authentication_error" and reason in frame["error"]["message"]
    closed = await comm.receive_output(timeout=30)
    assert closed["type"] == "websocket.close" and closed["code"] == 4401
    assert not await sync_to_async(UsageRecord.objects.exists)()


async def test_a_revoked_token_is_refused_once_the_cache_ttl_passes(api_token, small_model, settings):
    settings.AUTH_CACHE_TTL_S = 0.2
    token, secret = api_token
    comm = communicator(secret)
    await comm.connect()
    await comm.send_json_to(generate("before", small_model.id, max_tokens=2))
    assert (await until(comm, "done", "before"))[-1]["type"] == "done"
    await sync_to_async(revoke_token)(token=token)
    await asyncio.sleep(0.3)
    await comm.send_json_to(generate("after", small_model.id))
    assert (await comm.receive_json_from(timeout=60))["error"]["code"] == "invalid_api_key"
    assert (await comm.receive_output(timeout=30))["code"] == 4401
    assert await sync_to_async(UsageRecord.objects.count)() == 1  # only the generation before the revocation


async def test_a_scope_removed_from_an_open_sockets_token_applies_at_its_next_generate(api_token, small_model):
    token, secret = api_token
    comm = communicator(secret)
    await comm.connect()
    await sync_to_async(update_token)(token=token, changes={"scopes": ["models:read"]})
    clear_auth_cache()
    await comm.send_json_to(generate("a", small_model.id))
    assert (await comm.receive_json_from(timeout=60))["error"]["code"] == "insufficient_scope"
    assert await comm.receive_nothing(timeout=0.5)  # still open: a scope is not an authentication failure
    await comm.disconnect()
