import logging
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from models_app.models import APIToken
from models_app.selectors import find_token
from models_app.services import TokenError, issue_token, revoke_token

pytestmark = pytest.mark.django_db


def test_secret_has_prefix_and_enough_randomness(api_token):
    _, secret = api_token
    assert secret.startswith("khk_") and len(secret) >= 4 + 43


def test_secret_is_stored_only_as_a_hash(api_token):
    token, secret = api_token
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM models_app_apitoken")
        rows = cursor.fetchall()
    dump = repr(rows)
    assert secret not in dump and secret[12:] not in dump
    assert token.secret_hash in dump


def test_secret_never_reaches_the_logs(admin_user, caplog):
    with caplog.at_level(logging.DEBUG):
        _, secret = issue_token(name="logged?", owner=admin_user, scopes=["inference"])
        find_token(secret)
    assert secret not in caplog.text


def test_find_token_accepts_the_secret_and_rejects_others(api_token):
    token, secret = api_token
    assert find_token(secret) == token
    assert find_token(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    assert find_token("khk_short") is None
    assert find_token("sk-" + secret[4:]) is None


def test_expired_token_is_not_active(admin_user):
    token, _ = issue_token(
        name="soon", owner=admin_user, scopes=["inference"], expires_at=timezone.now() + timedelta(seconds=60)
    )
    assert token.is_active
    APIToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    token.refresh_from_db()
    assert token.is_expired and not token.is_active


def test_revoked_token_is_not_active(api_token):
    token, _ = api_token
    revoke_token(token=token)
    token.refresh_from_db()
    assert token.revoked and token.revoked_at and not token.is_active


def test_unknown_scope_is_refused_by_name(admin_user):
    with pytest.raises(TokenError, match=r"unknown scope.*root"):
        issue_token(name="x", owner=admin_user, scopes=["root"])


def test_unknown_model_is_refused_by_name(admin_user):
    with pytest.raises(TokenError, match=r"unknown model.*nope"):
        issue_token(name="x", owner=admin_user, scopes=["inference"], models=["nope"])


def test_allowed_models_are_kept(admin_user, small_model):
    token, _ = issue_token(name="x", owner=admin_user, scopes=["inference"], models=[small_model.id])
    assert list(token.allowed_models.values_list("id", flat=True)) == ["smollm2"]


def test_admin_scope_implies_the_others(admin_user):
    token, _ = issue_token(name="x", owner=admin_user, scopes=["admin"])
    assert token.has_scope("inference") and token.has_scope("models:manage")
