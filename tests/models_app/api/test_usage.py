"""/api/v1/usage: filtered rows under a stable cursor, and summaries (JSON and CSV) equal to the rows."""

import csv
import io
import itertools
from datetime import timedelta

import pytest
from django.utils import timezone

from models_app.models import LLMModel, UsageRecord
from models_app.services import issue_token
from tests.models_app.api.conftest import assert_error, client_for

pytestmark = pytest.mark.django_db

URL = "/api/v1/usage/"
_ids = itertools.count()


def add_row(token, model, *, status="completed", endpoint="chat.completions", prompt=10, completion=5,
            ttft=20.0, duration=120.0, days_ago=0):  # fmt: skip
    row = UsageRecord.objects.create(
        request_id=f"req-{next(_ids):06d}", token=token, model=model, endpoint=endpoint, status=status,
        prompt_tokens=prompt, completion_tokens=completion, time_to_first_token_ms=ttft, duration_ms=duration,
    )  # fmt: skip
    if days_ago:
        UsageRecord.objects.filter(pk=row.pk).update(created_at=timezone.now() - timedelta(days=days_ago))
    return row


@pytest.fixture
def other_model(small_model):
    return LLMModel.objects.create(id="other", name="Other", file_path="/elsewhere/other.gguf")


@pytest.fixture
def rows(api_token, manager_token, small_model, other_model):
    """Seven rows over two tokens, two models, two endpoints, three statuses and two days."""
    karen, ops = api_token[0], manager_token[0]
    return [
        add_row(karen, small_model, prompt=12, completion=30, ttft=25.0, duration=325.0),
        add_row(karen, small_model, prompt=40, completion=8, ttft=60.0, duration=140.0, days_ago=1),
        add_row(karen, other_model, endpoint="embeddings", prompt=9, completion=0, ttft=None, duration=15.0),
        add_row(ops, small_model, status="cancelled", prompt=100, completion=3, ttft=200.0, duration=230.0),
        add_row(ops, other_model, status="error", prompt=7, completion=0, ttft=None, duration=None),
        add_row(ops, small_model, prompt=5, completion=64, ttft=30.0, duration=1630.0, days_ago=1),
        add_row(karen, small_model, status="started", prompt=0, completion=0, ttft=None, duration=None),
    ]


def page_ids(client, url, params=None):
    response = client.get(url, params)
    assert response.status_code == 200, response.content
    return [r["id"] for r in response.json()["results"]]


def test_usage_lists_rows_newest_first(admin, rows):
    assert page_ids(admin, URL) == sorted((r.pk for r in rows), reverse=True)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("model=other", {2, 4}),
        ("status=cancelled", {3}),
        ("status=cancelled&status=error", {3, 4}),
        ("endpoint=embeddings", {2}),
        ("model=smollm2&status=completed", {0, 1, 5}),
    ],
)
def test_usage_filters_by_model_status_and_endpoint(admin, rows, query, expected):
    assert set(page_ids(admin, f"{URL}?{query}")) == {rows[i].pk for i in expected}


def test_usage_filters_by_token(admin, rows, manager_token):
    assert set(page_ids(admin, f"{URL}?token={manager_token[0].pk}")) == {rows[i].pk for i in (3, 4, 5)}


def test_usage_filters_by_time_range(admin, rows):
    half_a_day_ago = (timezone.now() - timedelta(hours=12)).isoformat()
    assert set(page_ids(admin, URL, {"until": half_a_day_ago})) == {rows[1].pk, rows[5].pk}
    assert len(page_ids(admin, URL, {"since": half_a_day_ago})) == 5


def test_bad_time_names_the_filter(admin, rows):
    assert_error(admin.get(f"{URL}?since=yesterday"), 400, error_type="invalid_request_error", param="since")


def test_cursor_pagination_is_stable_under_inserts(admin, rows, api_token, small_model):
    first = admin.get(f"{URL}?limit=3").json()
    seen = [r["id"] for r in first["results"]]
    for _ in range(4):  # new requests arrive while the client pages
        add_row(api_token[0], small_model)
    url = first["next"]
    while url:
        page = admin.get(url).json()
        seen += [r["id"] for r in page["results"]]
        url = page["next"]
    assert seen == sorted((r.pk for r in rows), reverse=True)  # each old row once, none skipped


def test_non_admin_sees_only_usage_of_their_own_tokens(admin_user, other_user, rows, small_model):
    mallory, secret = issue_token(name="mallory's", owner=other_user, scopes=["models:read"])
    mine = add_row(mallory, small_model)
    client = client_for(secret)
    assert page_ids(client, URL) == [mine.pk]
    assert client.get(f"{URL}summary/?group_by=model").json()["results"][0]["requests"] == 1


def expected_summary(rows, key) -> dict:
    """The summary computed by hand from the rows, per group key."""
    groups: dict = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    result = {}
    for k, members in groups.items():
        timed = [r for r in members if r.duration_ms is not None and r.time_to_first_token_ms is not None]
        ttfts = [r.time_to_first_token_ms for r in members if r.time_to_first_token_ms is not None]
        decode_s = sum(r.duration_ms - r.time_to_first_token_ms for r in timed) / 1000
        result[k] = {
            "requests": len(members),
            "prompt_tokens": sum(r.prompt_tokens for r in members),
            "completion_tokens": sum(r.completion_tokens for r in members),
            "total_tokens": sum(r.prompt_tokens + r.completion_tokens for r in members),
            "mean_ttft_ms": round(sum(ttfts) / len(ttfts), 2) if ttfts else None,
            "tokens_per_s": round(sum(r.completion_tokens for r in timed) / decode_s, 2) if decode_s else None,
        }
    return result


@pytest.mark.parametrize(
    ("group_by", "key"),
    [
        ("model", lambda r: r.model_id),
        ("token", lambda r: r.token_id),
        ("day", lambda r: UsageRecord.objects.get(pk=r.pk).created_at.date().isoformat()),
    ],
)
def test_summary_numbers_equal_the_sums_of_the_rows(admin, rows, group_by, key):
    body = admin.get(f"{URL}summary/?group_by={group_by}").json()
    assert body["group_by"] == group_by
    got = {row.pop("key"): row for row in body["results"]}
    for row in got.values():
        row.pop("label")
    assert got == expected_summary(rows, key)


def test_summary_respects_the_filters(admin, rows):
    body = admin.get(f"{URL}summary/?group_by=model&status=completed").json()
    assert {r["key"]: r["requests"] for r in body["results"]} == {"smollm2": 3, "other": 1}


def test_summary_labels_tokens_by_name(admin, rows, api_token):
    body = admin.get(f"{URL}summary/?group_by=token").json()
    assert {r["key"]: r["label"] for r in body["results"]}[api_token[0].pk] == "tests"


def test_summary_csv_has_a_header_and_a_line_per_group(admin, rows):
    response = admin.get(f"{URL}summary/?group_by=model&format=csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert 'filename="usage-by-model.csv"' in response["Content-Disposition"]
    lines = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [line["key"] for line in lines] == ["other", "smollm2"]
    assert int(lines[1]["requests"]) == 5 and int(lines[1]["completion_tokens"]) == 30 + 8 + 3 + 64


def test_summary_csv_neutralises_formulas_in_names(admin, admin_user, small_model):
    token, _ = issue_token(name="=HYPERLINK(1)", owner=admin_user, scopes=["inference"])
    add_row(token, small_model)
    text = admin.get(f"{URL}summary/?group_by=token", HTTP_ACCEPT="text/csv").content.decode()
    assert "'=HYPERLINK(1)" in text


def test_summary_error_is_json_even_when_csv_was_asked_for(admin, rows):
    response = admin.get(f"{URL}summary/?group_by=week&format=csv")
    assert_error(response, 400, error_type="invalid_request_error", param="group_by")


def test_usage_needs_the_read_scope(admin_user):
    inference_only = client_for(issue_token(name="karen", owner=admin_user, scopes=["inference"])[1])
    assert_error(inference_only.get(URL), 403, error_type="permission_error", code="insufficient_scope")


def test_usage_finds_a_request_by_its_id(admin, rows):
    assert page_ids(admin, URL, {"search": rows[3].request_id}) == [rows[3].pk]
