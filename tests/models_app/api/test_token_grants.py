"""/api/v1/tokens: a token mints and changes tokens only within its own expiry, limits, lane and scopes."""

from datetime import timedelta

import pytest
from django.utils import timezone

from models_app.models import APIToken
from models_app.services import issue_token
from tests.models_app.api.conftest import assert_error, client_for

pytestmark = pytest.mark.django_db

URL = "/api/v1/tokens/"
MANAGE = ["models:read", "models:manage"]


def minter(owner, **limits):
    """(token, client) for a models:manage token with these expiry, limits or lane."""
    token, secret = issue_token(name="minter", owner=owner, scopes=MANAGE, **limits)
    return token, client_for(secret)


def create(client, **body):
    return client.post(URL, {"name": "minted", "scopes": ["models:read"], **body}, format="json")


def test_a_token_minted_without_expiry_by_an_expiring_token_expires_with_it(admin_user):
    expires = (timezone.now() + timedelta(hours=2)).replace(microsecond=0)
    _, client = minter(admin_user, expires_at=expires)
    response = create(client)
    assert response.status_code == 201, response.content
    assert APIToken.objects.get(pk=response.json()["id"]).expires_at == expires


@pytest.mark.parametrize("asked", [None, timedelta(hours=3)], ids=["never", "later"])
def test_an_expiring_token_cannot_mint_a_token_that_outlives_it(admin_user, asked):
    expires = timezone.now() + timedelta(hours=2)
    _, client = minter(admin_user, expires_at=expires)
    value = None if asked is None else (timezone.now() + asked).isoformat()
    assert_error(create(client, expires_at=value), 403, error_type="permission_error", param="expires_at",
                 code="expiry_escalation")  # fmt: skip
    assert not APIToken.objects.filter(name="minted").exists()


@pytest.mark.parametrize("asked", [None, timedelta(days=30)], ids=["clear", "extend"])
def test_a_token_cannot_clear_or_extend_its_own_expiry(admin_user, asked):
    expires = (timezone.now() + timedelta(hours=2)).replace(microsecond=0)
    token, client = minter(admin_user, expires_at=expires)
    value = None if asked is None else (timezone.now() + asked).isoformat()
    assert_error(client.patch(f"{URL}{token.pk}/", {"expires_at": value}, format="json"), 403,
                 error_type="permission_error", param="expires_at", code="expiry_escalation")  # fmt: skip
    token.refresh_from_db()
    assert token.expires_at == expires


def test_a_token_may_shorten_its_own_expiry(admin_user):
    token, client = minter(admin_user, expires_at=timezone.now() + timedelta(hours=2))
    sooner = (timezone.now() + timedelta(hours=1)).replace(microsecond=0)
    assert client.patch(f"{URL}{token.pk}/", {"expires_at": sooner.isoformat()}, format="json").status_code == 200
    token.refresh_from_db()
    assert token.expires_at == sooner


@pytest.mark.parametrize("field", ["rate_limit_rpm", "rate_limit_tpm", "max_concurrent"])
@pytest.mark.parametrize("asked", [None, 11], ids=["unlimited", "higher"])
def test_a_limited_token_cannot_mint_a_looser_limit(admin_user, field, asked):
    _, client = minter(admin_user, **{field: 10})
    assert_error(create(client, **{field: asked}), 403, error_type="permission_error", param=field,
                 code="limit_escalation")  # fmt: skip


def test_a_limited_token_mints_its_own_limits_and_lane_when_none_are_asked_for(admin_user):
    _, client = minter(admin_user, rate_limit_rpm=10, rate_limit_tpm=1000, max_concurrent=2, lane="batch")
    body = create(client).json()
    assert (body["rate_limit_rpm"], body["rate_limit_tpm"], body["max_concurrent"], body["lane"]) == (
        10, 1000, 2, "batch",
    )  # fmt: skip


def test_a_limited_token_may_mint_a_tighter_limit(admin_user):
    _, client = minter(admin_user, rate_limit_rpm=10)
    assert create(client, rate_limit_rpm=5).json()["rate_limit_rpm"] == 5


def test_a_limited_token_cannot_loosen_its_own_limit(admin_user):
    token, client = minter(admin_user, rate_limit_rpm=10)
    assert_error(client.patch(f"{URL}{token.pk}/", {"rate_limit_rpm": None}, format="json"), 403,
                 error_type="permission_error", param="rate_limit_rpm")  # fmt: skip
    token.refresh_from_db()
    assert token.rate_limit_rpm == 10


def test_a_batch_token_cannot_mint_an_interactive_token(admin_user):
    _, client = minter(admin_user, lane="batch")
    assert_error(create(client, lane="interactive"), 403, error_type="permission_error", param="lane",
                 code="lane_escalation")  # fmt: skip


def test_an_interactive_token_may_mint_a_batch_token(manager):
    assert create(manager, lane="batch").json()["lane"] == "batch"


def test_a_manage_token_cannot_revoke_an_admin_token_of_the_same_owner(manager, admin_user):
    target, _ = issue_token(name="root's", owner=admin_user, scopes=["admin"])
    error = assert_error(manager.post(f"{URL}{target.pk}/revoke/"), 403, error_type="permission_error",
                         code="scope_escalation")  # fmt: skip
    assert "admin" in error["message"]
    target.refresh_from_db()
    assert not target.revoked


def test_a_manage_token_cannot_extend_an_admin_token_of_the_same_owner(manager, admin_user):
    expires = (timezone.now() + timedelta(hours=1)).replace(microsecond=0)
    target, _ = issue_token(name="root's", owner=admin_user, scopes=["admin"], expires_at=expires)
    later = (timezone.now() + timedelta(days=9)).isoformat()
    assert_error(manager.patch(f"{URL}{target.pk}/", {"expires_at": later}, format="json"), 403,
                 error_type="permission_error", code="scope_escalation")  # fmt: skip
    target.refresh_from_db()
    assert target.expires_at == expires


def test_an_admin_token_may_revoke_a_manage_token(admin, manager_token):
    assert admin.post(f"{URL}{manager_token[0].pk}/revoke/").json()["revoked"] is True


def test_token_reads_show_lane_and_max_concurrent(admin_user, manager):
    token, _ = issue_token(name="batchy", owner=admin_user, scopes=["inference"], lane="batch", max_concurrent=3)
    body = manager.get(f"{URL}{token.pk}/").json()
    assert body["lane"] == "batch" and body["max_concurrent"] == 3


def test_tokens_minted_by_a_limited_token_spend_from_its_budget_and_not_a_new_one(admin_user):
    from inference.auth import _lookup

    parent, client = minter(admin_user, rate_limit_rpm=2, max_concurrent=1)
    first = APIToken.objects.get(pk=create(client, scopes=["models:read"]).json()["id"])
    second = APIToken.objects.get(pk=create(client, scopes=["models:read"]).json()["id"])
    assert first.budget_key == second.budget_key == str(parent.pk)
    # and a token minted by one of them still spends from the first limited token's budget
    _, child_secret = issue_token(name="grandchild-minter", owner=admin_user, scopes=MANAGE, rate_limit_rpm=2,
                                  budget_of=int(first.budget_key))  # fmt: skip
    grandchild = APIToken.objects.get(pk=create(client_for(child_secret)).json()["id"])
    assert grandchild.budget_key == str(parent.pk)
    assert _lookup(child_secret).budget_key == str(parent.pk)  # what admission and the fair queue key on


def test_tokens_minted_by_an_unlimited_token_have_budgets_of_their_own(admin_user):
    _, client = minter(admin_user)
    minted = APIToken.objects.get(pk=create(client).json()["id"])
    assert minted.budget_of is None and minted.budget_key == str(minted.pk)


def test_a_token_limited_to_one_model_cannot_revoke_a_token_of_another_model(admin_user, small_model):
    from models_app.models import LLMModel

    other = LLMModel.objects.create(id="other", name="other", file_path="/nonexistent.gguf", file_size=1)
    _, client = minter(admin_user, models=[small_model.pk])
    target, _ = issue_token(name="theirs", owner=admin_user, scopes=["models:read"], models=[other.pk])
    assert_error(client.post(f"{URL}{target.pk}/revoke/"), 403, error_type="permission_error", code="model_escalation")
    unrestricted, _ = issue_token(name="everything", owner=admin_user, scopes=["models:read"])
    assert_error(client.post(f"{URL}{unrestricted.pk}/revoke/"), 403, error_type="permission_error",
                 code="model_escalation")  # fmt: skip
    mine, _ = issue_token(name="mine", owner=admin_user, scopes=["models:read"], models=[small_model.pk])
    assert client.post(f"{URL}{mine.pk}/revoke/").status_code == 200
    target.refresh_from_db()
    assert not target.revoked
