"""/api/v1/tokens: the secret once, no privilege escalation, owners kept apart."""

import logging
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from models_app.models import APIToken
from models_app.services import issue_token
from tests.models_app.api.conftest import assert_error, client_for

pytestmark = pytest.mark.django_db

URL = "/api/v1/tokens/"


def create(client, **body):
    return client.post(URL, {"name": "made over REST", **body})


def test_create_returns_a_working_secret(manager, small_model):
    response = create(manager, scopes=["models:read"], models=["smollm2"])
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["secret"].startswith("khk_") and body["prefix"] == body["secret"][:12]
    assert body["scopes"] == ["models:read"] and body["models"] == ["smollm2"] and body["owner"] == "root"
    assert client_for(body["secret"]).get("/api/v1/models/").status_code == 200


def test_secret_appears_in_neither_list_nor_retrieve(manager):
    body = create(manager, scopes=["models:read"]).json()
    listed = manager.get(URL).content.decode()
    retrieved = manager.get(f"{URL}{body['id']}/").content.decode()
    token = APIToken.objects.get(pk=body["id"])
    for page in (listed, retrieved):
        assert body["secret"] not in page and body["secret"][12:] not in page and token.secret_hash not in page
        assert '"secret"' not in page and "secret_hash" not in page


def test_secret_is_stored_only_as_its_hash(manager):
    body = create(manager, scopes=["models:read"]).json()
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM models_app_apitoken")
        dump = repr(cursor.fetchall())
    assert body["secret"] not in dump and body["secret"][12:] not in dump


def test_secret_never_reaches_the_logs(manager, caplog):
    with caplog.at_level(logging.DEBUG):
        body = create(manager, scopes=["models:read"]).json()
        manager.get(URL)
        client_for(body["secret"]).get(URL)
    assert body["secret"] not in caplog.text and body["secret"][12:] not in caplog.text


@pytest.mark.parametrize("scope", ["inference", "admin"])
def test_a_token_cannot_grant_a_scope_it_does_not_hold(manager, scope):
    error = assert_error(create(manager, scopes=["models:read", scope]), 403, error_type="permission_error",
                         code="scope_escalation")  # fmt: skip
    assert scope in error["message"] and not APIToken.objects.filter(name="made over REST").exists()


def test_admin_may_grant_any_scope(admin):
    assert create(admin, scopes=["admin", "inference"]).status_code == 201


def test_reader_cannot_create_tokens(reader):
    assert_error(create(reader, scopes=["models:read"]), 403, error_type="permission_error", code="insufficient_scope")


def test_a_model_limited_token_can_only_create_tokens_limited_to_its_models(admin_user, small_model):
    limited = client_for(
        issue_token(name="smol only", owner=admin_user, scopes=["models:read", "models:manage"], models=["smollm2"])[1]
    )
    assert_error(create(limited, scopes=["models:read"]), 403, error_type="permission_error", code="model_escalation")
    assert create(limited, scopes=["models:read"], models=["smollm2"]).status_code == 201


def test_unknown_scope_names_scopes(manager):
    assert_error(create(manager, scopes=["root"]), 400, error_type="invalid_request_error", param="scopes.0")


def test_no_scope_names_scopes(manager):
    assert_error(create(manager, scopes=[]), 400, error_type="invalid_request_error", param="scopes")


def test_unknown_model_names_models(manager):
    error = assert_error(create(manager, scopes=["models:read"], models=["nope"]), 400,
                         error_type="invalid_request_error", param="models")  # fmt: skip
    assert "nope" in error["message"]


def test_expiry_in_the_past_names_expires_at(manager):
    past = (timezone.now() - timedelta(hours=1)).isoformat()
    assert_error(create(manager, scopes=["models:read"], expires_at=past), 400,
                 error_type="invalid_request_error", param="expires_at")  # fmt: skip


def test_missing_name_names_name(manager):
    error = assert_error(manager.post(URL, {"scopes": ["models:read"]}), 400, error_type="invalid_request_error",
                         param="name")  # fmt: skip
    assert "required" in error["message"]


def test_non_admin_lists_only_their_own_tokens(manager, other_manager):
    assert {t["name"] for t in other_manager.get(URL).json()["results"]} == {"mallory's"}
    # The owner is a superuser, but this token lacks `admin`: its view is its owner's tokens.
    assert {t["name"] for t in manager.get(URL).json()["results"]} == {"ops"}


def test_admin_lists_every_owners_tokens_and_filters_by_owner(admin, other_manager):
    assert {t["owner"] for t in admin.get(URL).json()["results"]} == {"root", "mallory"}
    assert {t["owner"] for t in admin.get(f"{URL}?owner=mallory").json()["results"]} == {"mallory"}


def test_non_admin_cannot_see_or_revoke_another_owners_token(other_manager, manager_token):
    token, _ = manager_token
    assert_error(other_manager.get(f"{URL}{token.pk}/"), 404, error_type="not_found_error")
    assert_error(other_manager.post(f"{URL}{token.pk}/revoke/"), 404, error_type="not_found_error")
    token.refresh_from_db()
    assert not token.revoked


@pytest.mark.parametrize("owner", ["root", "nobody-by-this-name"])
def test_non_admin_cannot_create_a_token_for_another_user(other_manager, admin_user, owner):
    assert_error(create(other_manager, scopes=["models:read"], owner=owner), 403, error_type="permission_error",
                 code="owner_not_allowed")  # fmt: skip


def test_naming_yourself_as_owner_is_allowed(other_manager):
    assert create(other_manager, scopes=["models:read"], owner="mallory").json()["owner"] == "mallory"


def test_admin_naming_an_unknown_owner_names_owner(admin):
    assert_error(create(admin, scopes=["models:read"], owner="ghost"), 400, error_type="invalid_request_error",
                 param="owner")  # fmt: skip


def test_admin_creates_a_token_for_another_user(admin, other_user):
    response = create(admin, scopes=["inference"], owner="mallory")
    assert response.status_code == 201 and response.json()["owner"] == "mallory"
    assert APIToken.objects.get(pk=response.json()["id"]).owner == other_user


def test_revoking_a_token_stops_it_on_its_next_request(manager):
    body = create(manager, scopes=["models:read"]).json()
    victim = client_for(body["secret"])
    assert victim.get(URL).status_code == 200
    revoked = manager.post(f"{URL}{body['id']}/revoke/").json()
    assert revoked["revoked"] is True and revoked["is_active"] is False
    error = assert_error(victim.get(URL), 401, error_type="authentication_error", code="invalid_api_key")
    assert "revoked" in error["message"]


def test_update_changes_name_scopes_limits_and_expiry(manager):
    body = create(manager, scopes=["models:read"]).json()
    expires = (timezone.now() + timedelta(days=7)).replace(microsecond=0)
    response = manager.patch(
        f"{URL}{body['id']}/",
        {"name": "renamed", "scopes": ["models:read", "models:manage"], "rate_limit_rpm": 30,
         "expires_at": expires.isoformat()},
    )  # fmt: skip
    assert response.status_code == 200, response.content
    token = APIToken.objects.get(pk=body["id"])
    assert token.name == "renamed" and token.scopes == ["models:manage", "models:read"]
    assert token.rate_limit_rpm == 30 and token.expires_at == expires and token.rate_limit_tpm is None


def test_update_cannot_add_a_scope_the_caller_lacks(manager):
    body = create(manager, scopes=["models:read"]).json()
    assert_error(manager.patch(f"{URL}{body['id']}/", {"scopes": ["admin"]}), 403, error_type="permission_error",
                 code="scope_escalation")  # fmt: skip
    assert APIToken.objects.get(pk=body["id"]).scopes == ["models:read"]


def test_a_revoked_token_cannot_be_changed(manager):
    body = create(manager, scopes=["models:read"]).json()
    manager.post(f"{URL}{body['id']}/revoke/")
    assert_error(manager.patch(f"{URL}{body['id']}/", {"name": "back"}), 400, error_type="invalid_request_error")
