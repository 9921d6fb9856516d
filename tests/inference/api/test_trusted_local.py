"""Trusted local clients: header-less requests from allowed addresses act as the configured token."""

import asyncio
import json

import httpx
import pytest
import websockets
from django.core.checks import run_checks

from models_app.models import UsageRecord
from models_app.services import issue_token, revoke_token

CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "stream": False,
        "options": {"num_predict": 2, "temperature": 0}}  # fmt: skip


@pytest.fixture
def karen_token(admin_user):
    """The token KAREN's Ollama provider is served as: inference and model listing only."""
    return issue_token(name="karen", owner=admin_user, scopes=["inference", "models:read"])


@pytest.fixture
def trusted(settings, karen_token):
    settings.TRUSTED_LOCAL_TOKEN = karen_token[0].prefix
    return karen_token[0]


def test_a_local_request_without_a_header_is_served_and_metered_as_the_token(live, trusted):
    reply = httpx.post(f"{live[0]}/api/chat", json=CHAT, timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.json()["done"] is True
    row = UsageRecord.objects.get()
    assert (row.token_id, row.endpoint, row.completion_tokens) == (
        trusted.pk,
        "ollama.chat",
        reply.json()["eval_count"],
    )


def test_the_same_request_is_401_with_the_setting_off(live, settings, karen_token):
    settings.TRUSTED_LOCAL_TOKEN = ""
    reply = httpx.post(f"{live[0]}/api/chat", json=CHAT, timeout=60)
    assert reply.status_code == 401
    assert "Missing bearer token" in reply.json()["error"]
    assert not UsageRecord.objects.exists()


def test_tags_and_openai_surface_work_without_a_header(live, trusted):
    assert httpx.get(f"{live[0]}/api/tags", timeout=30).json()["models"][0]["name"] == "smollm2:135m-instruct-q4_1"
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    assert httpx.post(f"{live[0]}/v1/chat/completions", json=body, timeout=60).status_code == 200


def test_a_bearer_token_is_authenticated_as_before(live, trusted):
    reply = httpx.post(f"{live[0]}/api/chat", json=CHAT, headers={"Authorization": "Bearer khk_wrong"}, timeout=60)
    assert reply.status_code == 401 and reply.json()["error"] == "Invalid API token."
    ok = httpx.post(f"{live[0]}/api/chat", json=CHAT, headers={"Authorization": f"Bearer {live[1]}"}, timeout=60)
    assert ok.status_code == 200
    assert UsageRecord.objects.get().token.name == "tests"  # the caller's own token, not the trusted one


@pytest.mark.parametrize(
    ("header", "why"),
    [
        ({"X-Forwarded-For": "203.0.113.9"}, "proxy"),
        ({"Forwarded": "for=203.0.113.9"}, "proxy"),
        ({"Via": "1.1 nginx"}, "proxy"),
        ({"Origin": "http://evil.example"}, "web page"),
        ({"Sec-Fetch-Site": "cross-site"}, "web browser"),
    ],
)
def test_proxied_and_browser_requests_are_not_trusted(live, trusted, header, why):
    reply = httpx.post(f"{live[0]}/api/chat", json=CHAT, headers=header, timeout=60)
    assert reply.status_code == 401 and why in reply.json()["error"]


def test_a_dns_name_is_not_trusted_even_where_allowed_hosts_lets_it_in(live, trusted, settings):
    settings.ALLOWED_HOSTS = ["*"]  # a page rebinding rebound.example to 127.0.0.1 gets this far
    reply = httpx.post(f"{live[0]}/api/chat", json=CHAT, headers={"Host": "rebound.example:8080"}, timeout=60)
    assert reply.status_code == 401 and "not localhost or an address" in reply.json()["error"]
    assert httpx.post(f"{live[0]}/api/chat", json=CHAT, headers={"Host": "localhost"}, timeout=60).status_code == 200


def test_a_websocket_with_another_kind_of_authorization_is_refused(live, trusted):
    async def run() -> int:
        url = live[0].replace("http", "ws", 1) + "/ws/v1/generate"
        async with websockets.connect(url, additional_headers={"Authorization": "Basic eDp5"}) as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 30)
            return closed.value.rcvd.code

    assert asyncio.run(run()) == 4401


def test_an_address_outside_the_allowlist_is_not_trusted(live, trusted, settings):
    import ipaddress

    settings.TRUSTED_LOCAL_ADDRESSES = (ipaddress.ip_network("10.0.0.0/8"),)
    reply = httpx.post(f"{live[0]}/api/chat", json=CHAT, timeout=60)
    assert reply.status_code == 401 and "127.0.0.1 is not in TRUSTED_LOCAL_ADDRESSES" in reply.json()["error"]


def test_the_tokens_scopes_apply(live, settings, admin_user):
    reader, _ = issue_token(name="reader", owner=admin_user, scopes=["models:read"])
    settings.TRUSTED_LOCAL_TOKEN = reader.prefix
    reply = httpx.post(f"{live[0]}/api/chat", json=CHAT, timeout=60)
    assert reply.status_code == 403 and "'inference' scope" in reply.json()["error"]


def test_a_revoked_trusted_token_stops_working(live, trusted):
    revoke_token(token=trusted)
    reply = httpx.post(f"{live[0]}/api/chat", json=CHAT, timeout=60)
    assert reply.status_code == 401 and "revoked" in reply.json()["error"]


def test_a_setting_naming_no_token_says_so(live, settings):
    settings.TRUSTED_LOCAL_TOKEN = "khk_nothere0"
    reply = httpx.post(f"{live[0]}/api/chat", json=CHAT, timeout=60)
    assert reply.status_code == 401 and "no token has that prefix" in reply.json()["error"]


def test_the_whole_secret_works_as_the_setting(live, settings, karen_token):
    settings.TRUSTED_LOCAL_TOKEN = karen_token[1]
    assert httpx.post(f"{live[0]}/api/chat", json=CHAT, timeout=60).status_code == 200


def test_a_websocket_without_a_token_is_served_as_the_trusted_token(live, trusted):
    async def run() -> list[dict]:
        url = live[0].replace("http", "ws", 1) + "/ws/v1/generate"
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"type": "generate", "id": "a", "model": "smollm2:135m-instruct-q4_1",
                                      "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}))  # fmt: skip
            frames = []
            while not frames or frames[-1]["type"] not in ("done", "error"):
                frames.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
            return frames

    frames = asyncio.run(run())
    assert frames[-1]["type"] == "done", frames[-1]
    assert UsageRecord.objects.get().token_id == trusted.pk


def test_deploy_check_warns_about_a_non_loopback_allowlist(settings, trusted):
    import ipaddress

    assert not [m for m in run_checks(include_deployment_checks=True) if m.id == "karen_host.W001"]
    settings.TRUSTED_LOCAL_ADDRESSES = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("192.168.0.0/16"))
    warnings = [m for m in run_checks(include_deployment_checks=True) if m.id == "karen_host.W001"]
    assert len(warnings) == 1 and "192.168.0.0/16" in warnings[0].msg


def test_the_admin_shows_the_state(admin_client, settings, karen_token):
    settings.TRUSTED_LOCAL_TOKEN = ""
    assert "Trusted local clients: off" in admin_client.get("/admin/models_app/apitoken/").content.decode()
    settings.TRUSTED_LOCAL_TOKEN = karen_token[0].prefix
    page = admin_client.get("/admin/models_app/apitoken/").content.decode()
    assert "Trusted local clients: on" in page and "&#x27;karen&#x27;" in page
