"""A request's keep_alive: any token may keep a model loaded longer; only models:manage may shorten it."""

import time

import httpx
import pytest
from django.conf import settings

from inference.engine import get_engine
from models_app.services import issue_token
from tests.inference.api.test_metering import wait_for

REAP_WAIT_S = 1.5  # three reaper rounds (0.5 s each): an expired model would be gone by then


def ask(live, path, keep_alive, secret=None):
    url, default_secret, model = live
    if path == "/inference":
        body = {"prompt": "Hi", "model_id": model, "parameters": {"max_tokens": 2, "keep_alive": keep_alive}}
    else:
        body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
                "keep_alive": keep_alive}  # fmt: skip
    headers = {"Authorization": f"Bearer {secret or default_secret}"}
    response = httpx.post(f"{url}{path}", json=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    return response


def keep_alive_of(model_id: str) -> float | str | None:
    loaded = {m["id"]: m["keep_alive_s"] for m in get_engine().status()["loaded"]}
    return loaded.get(model_id, "not loaded")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/inference"])
def test_an_inference_only_token_sending_keep_alive_0_leaves_the_model_loaded(live, fresh_engine, path):
    ask(live, path, 0)
    time.sleep(REAP_WAIT_S)
    assert keep_alive_of(live[2]) == settings.DEFAULT_KEEP_ALIVE_S


def test_an_inference_only_token_cannot_shorten_a_keep_alive_an_operator_set(live, fresh_engine, admin_user):
    _, ops = issue_token(name="ops", owner=admin_user, scopes=["models:manage", "models:read"])
    headers = {"Authorization": f"Bearer {ops}"}
    body = {"model_id": live[2], "keep_alive": "2h"}
    assert httpx.post(f"{live[0]}/models/load", json=body, headers=headers, timeout=60).status_code == 200
    ask(live, "/v1/chat/completions", "10s")
    assert keep_alive_of(live[2]) == 7200


def test_an_inference_only_token_may_keep_a_model_loaded_longer(live, fresh_engine):
    ask(live, "/v1/chat/completions", "1h")
    assert keep_alive_of(live[2]) == 3600


def test_a_manage_token_may_shorten_the_keep_alive(live, fresh_engine, admin_user):
    _, secret = issue_token(name="ops", owner=admin_user, scopes=["inference", "models:manage"])
    ask(live, "/v1/chat/completions", "1h")
    ask(live, "/v1/chat/completions", 0, secret)
    assert wait_for(lambda: keep_alive_of(live[2]) == "not loaded", timeout=30)
