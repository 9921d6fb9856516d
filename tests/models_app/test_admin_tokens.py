"""The admin's API token pages: minting through issue_token within the staff user's rights, and usage against limits."""

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from models_app.models import APIToken, UsageRecord
from models_app.services import issue_token

pytestmark = pytest.mark.django_db

ADD_URL = reverse("admin:models_app_apitoken_add")
SECRET = re.compile(r"khk_[A-Za-z0-9_-]{40,}")


@pytest.fixture
def staff(db, django_user_model):
    """A staff user (not a superuser) who may view, add and change API tokens."""
    user = django_user_model.objects.create_user(username="sam", password="pw-for-tests-only", is_staff=True)
    codenames = ("view_apitoken", "add_apitoken", "change_apitoken")
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="models_app", codename__in=codenames))
    return user


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


def add(client, owner, scopes, **fields):
    form = {"name": "from admin", "owner": owner.pk, "scopes": scopes, "lane": "interactive", **fields}
    return client.post(ADD_URL, form, follow=True)


def test_staff_mints_a_token_for_themselves_and_sees_its_secret_once(staff_client, staff):
    page = add(staff_client, staff, ["inference"], rate_limit_rpm=10, lane="batch").content.decode()
    token = APIToken.objects.get(name="from admin")
    assert token.matches(SECRET.search(page).group(0))
    assert (token.owner, token.scopes, token.rate_limit_rpm, token.lane) == (staff, ["inference"], 10, "batch")
    again = staff_client.get(reverse("admin:models_app_apitoken_change", args=[token.pk])).content.decode()
    assert not SECRET.search(again)


def test_staff_cannot_mint_a_token_for_another_user(staff_client, admin_user):
    response = add(staff_client, admin_user, ["inference"])
    assert "owner" in response.context["adminform"].form.errors
    assert not APIToken.objects.filter(name="from admin").exists()


def test_staff_cannot_grant_the_admin_scope(staff_client, staff):
    response = add(staff_client, staff, ["inference", "admin"])
    assert "admin" in str(response.context["adminform"].form.errors["scopes"])
    assert not APIToken.objects.filter(name="from admin").exists()


def test_staff_cannot_change_a_token_holding_the_admin_scope(staff_client, staff):
    token, _ = issue_token(name="theirs", owner=staff, scopes=["admin"])
    url = reverse("admin:models_app_apitoken_change", args=[token.pk])
    response = staff_client.post(url, {"name": "renamed", "scopes": ["inference"], "lane": "interactive"})
    assert response.status_code == 200 and "cannot change" in str(response.context["adminform"].form.errors)
    token.refresh_from_db()
    assert (token.name, token.scopes) == ("theirs", ["admin"])


def test_superuser_may_mint_an_admin_token_for_anyone(admin_client, staff):
    add(admin_client, staff, ["admin"])
    assert APIToken.objects.get(name="from admin").scopes == ["admin"]


def test_token_page_shows_limits_lane_and_usage_against_them(admin_client, admin_user, small_model):
    token, _ = issue_token(name="metered", owner=admin_user, scopes=["inference"], rate_limit_rpm=10,
                           rate_limit_tpm=1000, max_concurrent=2, lane="batch")  # fmt: skip
    now = timezone.now()
    for n, status in enumerate(["completed", "completed", "started", "completed"]):
        UsageRecord.objects.create(
            request_id=f"r{n}", token=token, model=small_model, endpoint="chat.completions", status=status,
            prompt_tokens=20 if status == "completed" else 0, completion_tokens=10 if status == "completed" else 0,
            finished_at=now if status == "completed" else None,
        )  # fmt: skip
    # The last row is older than a minute: it counts toward nothing now.
    UsageRecord.objects.filter(request_id="r3").update(
        created_at=now - timedelta(minutes=5), finished_at=now - timedelta(minutes=4)
    )
    page = admin_client.get(reverse("admin:models_app_apitoken_change", args=[token.pk])).content.decode()
    assert "3 of 10 requests/min" in page and "60 of 1000 tokens/min" in page and "1 of 2 concurrent" in page
    assert 'value="batch" selected' in page


def test_usage_list_filters_by_lane(admin_client, api_token, small_model):
    for n, lane in enumerate(["interactive", "batch"]):
        UsageRecord.objects.create(request_id=f"lane-{n}", token=api_token[0], model=small_model, endpoint="x",
                                   lane=lane)  # fmt: skip
    response = admin_client.get(reverse("admin:models_app_usagerecord_changelist") + "?lane__exact=batch")
    assert [row.request_id for row in response.context["cl"].result_list] == ["lane-1"]


def test_the_add_page_offers_staff_only_themselves_as_owner(staff_client, staff, admin_user):
    owner_field = staff_client.get(ADD_URL).context["adminform"].form.fields["owner"]
    assert list(owner_field.queryset) == [staff]


def test_staff_revoking_leaves_tokens_holding_the_admin_scope_alone(staff_client, staff):
    mine, _ = issue_token(name="mine", owner=staff, scopes=["inference"])
    powerful, _ = issue_token(name="powerful", owner=staff, scopes=["admin"])
    response = staff_client.post(
        reverse("admin:models_app_apitoken_changelist"),
        {"action": "revoke", "_selected_action": [mine.pk, powerful.pk]},
        follow=True,
    )
    assert "Revoked 1 token(s); 1 left alone" in response.content.decode()
    mine.refresh_from_db(), powerful.refresh_from_db()
    assert mine.revoked and not powerful.revoked
