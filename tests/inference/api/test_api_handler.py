"""The token APIs run on a lean middleware stack; the admin and the management API keep the full one."""

import httpx
import pytest

from karen_host.api_handler import API_MIDDLEWARE, full_stack_prefixes


def test_token_api_paths_skip_sessions_and_csrf_but_keep_security_headers(live_server_url):
    response = httpx.get(f"{live_server_url}/health")
    assert response.status_code == 200
    assert response.headers["X-Content-Type-Options"] == "nosniff"  # SecurityMiddleware ran (inline)
    assert "set-cookie" not in response.headers
    missing = httpx.post(f"{live_server_url}/v1/chat/completions", json={})
    assert missing.status_code == 401  # bearer auth, no CSRF refusal in front of it
    assert missing.headers["X-Content-Type-Options"] == "nosniff"


def test_admin_keeps_sessions_and_csrf(live_server_url):
    login = httpx.get(f"{live_server_url}/admin/login/")
    assert login.status_code == 200 and "csrftoken" in login.headers.get("set-cookie", "")
    assert login.headers["X-Frame-Options"] == "DENY"  # the full stack's clickjacking guard
    refused = httpx.post(f"{live_server_url}/admin/login/", data={"username": "x", "password": "y"})
    assert refused.status_code == 403  # CSRF still enforced there


def test_cors_preflight_still_answers_on_the_token_api(live_server_url, settings):
    settings.CORS_ALLOWED_ORIGINS = ["https://karen.example"]
    response = httpx.options(
        f"{live_server_url}/v1/chat/completions",
        headers={"Origin": "https://karen.example", "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://karen.example"


@pytest.mark.parametrize("path", ["/admin/", "/api/v1/models/", "/static/admin/css/base.css"])
def test_full_stack_paths(path):
    assert path.startswith(full_stack_prefixes())
    assert "django.contrib.sessions.middleware.SessionMiddleware" not in API_MIDDLEWARE
