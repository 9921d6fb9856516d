"""The admin playground's socket: a staff session from the same origin, metered to the user's playground token."""

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from inference.auth import clear_auth_cache
from karen_host.asgi import application
from models_app.models import APIToken, UsageRecord
from models_app.services import PLAYGROUND_TOKEN_NAME
from tests.inference.test_consumers import generate, until

pytestmark = pytest.mark.django_db(transaction=True)


def _session(client, user) -> str:
    client.force_login(user)
    return client.cookies["sessionid"].value


def communicator(session, *, origin="http://localhost:8000", host="localhost:8000", scheme="ws"):
    headers = [(b"cookie", f"sessionid={session}".encode()), (b"host", host.encode())]
    if origin:
        headers.append((b"origin", origin.encode()))
    comm = WebsocketCommunicator(application, "/ws/v1/generate", headers=headers, subprotocols=["karen.v1"])
    comm.scope["scheme"] = scheme
    return comm


async def test_a_staff_session_generates_under_its_playground_token(client, admin_user, small_model):
    session = await sync_to_async(_session)(client, admin_user)
    comm = communicator(session)
    connected, _ = await comm.connect()
    assert connected
    await comm.send_json_to(generate("p1", small_model.id))
    frames = await until(comm, "done", "p1")
    assert frames[-1]["usage"]["completion_tokens"] > 0
    await comm.disconnect()
    row = await sync_to_async(UsageRecord.objects.select_related("token__owner").get)(endpoint="ws.generate")
    assert (row.token.name, row.token.owner_id, row.token.scopes) == (PLAYGROUND_TOKEN_NAME, admin_user.pk,
                                                                       ["inference"])  # fmt: skip
    # The next socket reuses the token: one per user, not one per visit.
    comm = communicator(session)
    await comm.connect()
    await comm.send_json_to(generate("p2", small_model.id))
    await until(comm, "done", "p2")
    await comm.disconnect()
    assert await sync_to_async(APIToken.objects.filter(name=PLAYGROUND_TOKEN_NAME).count)() == 1


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        (None, "localhost:8000"),  # not from a page: a session alone is not a credential here
        ("http://127.0.0.1:8000", "localhost:8000"),  # another origin, even an allowed one
        ("http://localhost", "localhost"),  # a plain-HTTP page riding on a wss:// socket (below)
    ],
)
async def test_a_session_from_elsewhere_is_refused(client, admin_user, small_model, origin, host):
    session = await sync_to_async(_session)(client, admin_user)
    comm = communicator(session, origin=origin, host=host, scheme="wss" if host == "localhost" else "ws")
    await comm.connect()
    closed = await comm.receive_output(timeout=10)
    assert closed == {"type": "websocket.close", "code": 4401, "reason": closed["reason"]}


async def test_a_user_who_is_not_staff_is_refused(client, other_user, small_model):
    session = await sync_to_async(_session)(client, other_user)
    comm = communicator(session)
    await comm.connect()
    closed = await comm.receive_output(timeout=10)
    assert closed["type"] == "websocket.close" and closed["code"] == 4401


async def test_staff_rights_taken_away_end_the_playground(client, admin_user, small_model, settings):
    settings.AUTH_CACHE_TTL_S = 0  # no cached principal: the next frame sees the change
    session = await sync_to_async(_session)(client, admin_user)
    comm = communicator(session)
    await comm.connect()
    await comm.send_json_to(generate("p1", small_model.id))
    await until(comm, "done", "p1")
    admin_user.is_staff = False
    await sync_to_async(admin_user.save)()
    await comm.send_json_to(generate("p2", small_model.id))
    frames = await until(comm, "error", "p2")
    assert "staff" in frames[-1]["error"]["message"]


async def test_a_trusted_origin_in_front_may_use_the_session(client, admin_user, small_model, settings):
    # As behind a proxy that passes its upstream's Host: the page's origin is not the Host seen here.
    settings.CSRF_TRUSTED_ORIGINS = ["http://127.0.0.1:8000"]
    session = await sync_to_async(_session)(client, admin_user)
    comm = communicator(session, origin="http://127.0.0.1:8000", host="localhost:8000")
    await comm.connect()
    await comm.send_json_to(generate("p1", small_model.id))
    assert (await until(comm, "done", "p1"))[-1]["usage"]["completion_tokens"] > 0
    await comm.disconnect()


async def test_a_revoked_playground_token_is_not_replaced(client, admin_user, small_model):
    session = await sync_to_async(_session)(client, admin_user)
    comm = communicator(session)
    await comm.connect()
    await comm.send_json_to(generate("p1", small_model.id))
    await until(comm, "done", "p1")
    await comm.disconnect()
    await sync_to_async(APIToken.objects.filter(name=PLAYGROUND_TOKEN_NAME).update)(revoked=True)
    clear_auth_cache()
    comm = communicator(session)
    await comm.connect()
    closed = await comm.receive_output(timeout=10)
    assert closed["code"] == 4401 and "revoked" in closed["reason"]
    assert await sync_to_async(APIToken.objects.filter(name=PLAYGROUND_TOKEN_NAME).count)() == 1


async def test_staff_who_may_not_mint_tokens_get_no_playground(client, django_user_model, small_model):
    user = await sync_to_async(django_user_model.objects.create_user)("staffer", password="x", is_staff=True)
    session = await sync_to_async(_session)(client, user)
    comm = communicator(session)
    await comm.connect()
    closed = await comm.receive_output(timeout=10)
    assert closed["code"] == 4401
