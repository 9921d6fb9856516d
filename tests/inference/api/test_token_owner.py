"""A deactivated user's tokens stop working on every HTTP surface once the auth cache expires."""

import httpx
import pytest

from inference.auth import clear_auth_cache

SURFACES = [
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
    ("GET", "/v1/models", None),
    ("GET", "/models", None),
    ("POST", "/inference", {"prompt": "Hi", "parameters": {"max_tokens": 2}}),
    ("GET", "/karen/config", None),
    ("GET", "/api/v1/models/", None),
]


@pytest.mark.parametrize(("method", "path", "body"), SURFACES, ids=[f"{m} {p}" for m, p, _ in SURFACES])
def test_a_deactivated_owners_token_gets_401_saying_so(live, admin_user, method, path, body):
    url, secret, model = live
    if body and path == "/v1/chat/completions":
        body = {"model": model, **body}
    headers = {"Authorization": f"Bearer {secret}"}
    assert httpx.request(method, f"{url}{path}", json=body, headers=headers, timeout=60).status_code == 200
    admin_user.is_active = False
    admin_user.save(update_fields=["is_active"])
    clear_auth_cache()  # stands in for AUTH_CACHE_TTL_S passing
    response = httpx.request(method, f"{url}{path}", json=body, headers=headers, timeout=60)
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert error["type"] == "authentication_error" and "deactivated" in error["message"]
