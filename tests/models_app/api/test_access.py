"""Who may call the management API: bearer tokens, browser sessions with CSRF, throttles, one error shape."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone
from rest_framework.test import APIClient

from models_app.models import APIToken
from models_app.services import issue_token, revoke_token
from tests.models_app.api.conftest import assert_error, client_for

pytestmark = pytest.mark.django_db

URL = "/api/v1/models/"


def test_missing_token_gets_401_with_a_bearer_challenge(anonymous):
    response = anonymous.get(URL)
    error = assert_error(response, 401, error_type="authentication_error", code="missing_token")
    assert "Bearer" in error["message"] and response["WWW-Authenticate"].startswith("Bearer")


def test_unknown_token_gets_401(small_model):
    assert_error(client_for("khk_" + "x" * 43).get(URL), 401, error_type="authentication_error",
                 code="invalid_api_key")  # fmt: skip


def test_revoked_token_gets_401_saying_so(api_token):
    token, secret = api_token
    revoke_token(token=token)
    assert "revoked" in assert_error(client_for(secret).get(URL), 401, error_type="authentication_error")["message"]


def test_expired_token_gets_401_saying_so(api_token):
    token, secret = api_token
    APIToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    assert "expired" in assert_error(client_for(secret).get(URL), 401, error_type="authentication_error")["message"]


def test_token_of_a_deactivated_owner_gets_401(other_user):
    _, secret = issue_token(name="left", owner=other_user, scopes=["models:read"])
    other_user.is_active = False
    other_user.save()
    assert_error(client_for(secret).get(URL), 401, error_type="authentication_error")


def test_token_lacking_the_read_scope_gets_403_naming_it(admin_user):
    _, secret = issue_token(name="karen", owner=admin_user, scopes=["inference"])
    error = assert_error(client_for(secret).get(URL), 403, error_type="permission_error", code="insufficient_scope")
    assert "models:read" in error["message"] and "inference" in error["message"]


def test_a_token_records_its_last_use(api_token, reader):
    reader.get(URL)
    api_token[0].refresh_from_db()
    assert api_token[0].last_used_at is not None


def test_superuser_session_browses_the_api_as_html(admin_user, small_model):
    client = APIClient()
    client.force_login(admin_user)
    response = client.get(URL, HTTP_ACCEPT="text/html")
    assert response.status_code == 200 and b"smollm2" in response.content
    assert response["Content-Type"].startswith("text/html")


def test_session_post_without_a_csrf_token_is_refused(admin_user, small_model):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(admin_user)
    error = assert_error(client.post(f"{URL}smollm2/unload/"), 403, error_type="permission_error")
    assert "CSRF" in error["message"]


def test_session_post_with_the_csrf_token_is_accepted(admin_user, small_model):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(admin_user)
    client.get(URL, HTTP_ACCEPT="text/html")  # the browsable page sets the csrftoken cookie
    csrf = client.cookies["csrftoken"].value
    response = client.post(f"{URL}smollm2/unload/", HTTP_X_CSRFTOKEN=csrf)
    assert response.status_code == 200 and response.json()["unloaded"] is False


def test_staff_session_gets_what_its_admin_permissions_allow(django_user_model, small_model):
    staff = django_user_model.objects.create_user(username="clerk", password="pw-for-tests-only", is_staff=True)
    client = APIClient()
    client.force_login(staff)
    assert_error(client.get(URL), 403, error_type="permission_error")
    staff.user_permissions.add(Permission.objects.get(codename="view_llmmodel"))
    assert client.get(URL).status_code == 200
    assert_error(client.patch(f"{URL}smollm2/", {"enabled": False}), 403, error_type="permission_error")


def test_non_staff_session_gets_403(other_user, small_model):
    client = APIClient()
    client.force_login(other_user)
    assert_error(client.get(URL), 403, error_type="permission_error")


def test_throttle_counts_per_token(settings, reader, manager, small_model):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"management": "2/min"}}
    assert reader.get(URL).status_code == 200 and reader.get(URL).status_code == 200
    response = reader.get(URL)
    assert_error(response, 429, error_type="rate_limit_error", code="throttled")
    assert int(response["Retry-After"]) > 0
    assert manager.get(URL).status_code == 200  # another token has its own allowance


def test_malformed_json_is_a_400_saying_so(manager, small_model):
    response = manager.patch(f"{URL}smollm2/", "{not json", content_type="application/json")
    assert_error(response, 400, error_type="invalid_request_error", code="invalid_json")
