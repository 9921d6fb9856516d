"""The hourly rollups behind the dashboard: each finished row counted once, sums exact, percentiles within 10%."""

from datetime import timedelta

import pytest
from django.utils import timezone

from models_app.choices import UsageStatus
from models_app.models import LatencyRollup, UsageRecord, UsageRollup
from models_app.services import finalize_usage, issue_token, start_usage
from models_app.usage_rollup import (
    BUCKET_GROWTH,
    bucket_of,
    bucket_value,
    percentiles,
    roll_up_usage,
    usage_dashboard,
)

pytestmark = pytest.mark.django_db


def _row(request_id, token, model_id, status=UsageStatus.COMPLETED, *, completion=10, ttft=50.0, duration=250.0):
    start_usage(request_id=request_id, token_id=token.pk if token else None, model_id=model_id,
                endpoint="chat.completions", client_address=None)  # fmt: skip
    if status != UsageStatus.STARTED:
        finalize_usage(request_id=request_id, status=status, prompt_tokens=20, completion_tokens=completion,
                       time_to_first_token_ms=ttft, duration_ms=duration)  # fmt: skip


@pytest.fixture
def token(admin_user):
    return issue_token(name="scripts", owner=admin_user, scopes=["inference"])[0]


def test_each_finished_row_is_counted_once(small_model, token):
    for i in range(5):
        _row(f"r{i}", token, small_model.id)
    _row("running", token, small_model.id, UsageStatus.STARTED)
    assert roll_up_usage() == 5
    assert roll_up_usage() == 0  # nothing new: nothing added twice
    for span in ("hour", "day"):
        rollup = UsageRollup.objects.get(span=span)
        assert (rollup.requests, rollup.prompt_tokens, rollup.completion_tokens) == (5, 100, 50)
        assert (rollup.decode_tokens, rollup.decode_ms_sum) == (45, 1000.0)  # 9 tokens after the first in 200 ms
    # The running one is counted once it ends, into the same hour.
    finalize_usage(request_id="running", status=UsageStatus.CANCELLED, prompt_tokens=20, completion_tokens=1,
                   time_to_first_token_ms=None, duration_ms=10.0)  # fmt: skip
    assert roll_up_usage() == 1
    assert UsageRollup.objects.get(span="day", status=UsageStatus.CANCELLED).requests == 1
    assert not UsageRecord.objects.filter(rolled_up=False).exists()


def test_batches_add_up_to_one_pass(small_model, token):
    for i in range(7):
        _row(f"r{i}", token, small_model.id, ttft=10.0 * (i + 1))
    assert roll_up_usage(batch=3) == 7
    assert UsageRollup.objects.get(span="hour").requests == 7
    assert sum(LatencyRollup.objects.filter(span="day", metric="ttft").values_list("count", flat=True)) == 7


def test_percentiles_are_within_ten_percent():
    values = [float(v) for v in range(1, 1001)]  # 1..1000 ms
    counts: dict[int, int] = {}
    for v in values:
        counts[bucket_of("ttft", v)] = counts.get(bucket_of("ttft", v), 0) + 1
    result = percentiles(counts, "ttft")
    assert abs(result["p50"] - 500) / 500 <= BUCKET_GROWTH - 1
    assert abs(result["p95"] - 950) / 950 <= BUCKET_GROWTH - 1
    assert percentiles({}, "ttft") == {"p5": None, "p50": None, "p95": None}


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0, 3.3, 1e4, 1e12])
def test_a_bucket_holds_its_value(value):
    bucket = bucket_of("ttft", value)
    assert 0 <= bucket < 100
    if 1.0 < value < 1e9:
        middle = bucket_value("ttft", bucket)
        assert middle / BUCKET_GROWTH <= value <= middle * BUCKET_GROWTH


def test_dashboard_sums_per_model_token_and_ending(small_model, token, admin_user):
    other = issue_token(name="other", owner=admin_user, scopes=["inference"])[0]
    for i in range(3):
        _row(f"a{i}", token, small_model.id)
    _row("b0", other, small_model.id, UsageStatus.ERROR, completion=0, ttft=None, duration=5.0)
    roll_up_usage()
    summary = usage_dashboard(window="24h")
    assert summary["statuses"] == {"completed": 3, "error": 1}
    (model,) = summary["models"]
    assert (model["model_id"], model["requests"], model["errors"]) == (small_model.id, 4, 1)
    assert model["ttft_ms"]["p50"] == pytest.approx(50, rel=0.1)
    by_token = {row["name"]: row["requests"] for row in summary["tokens"]}
    assert by_token == {"scripts": 3, "other": 1}
    assert sum(point["requests"] for point in summary["series"]) == 4
    assert {(p["token"], p["requests"]) for p in summary["token_series"]} == {("scripts", 3), ("other", 1)}
    assert [(p["status"], p["requests"]) for p in summary["ending_series"]] == [("error", 1)]
    (period,) = summary["latency_series"]
    assert period["ttft_ms"]["p95"] == pytest.approx(50, rel=0.1)
    # Scoped to one token: its rows only, percentiles from its rows.
    mine = usage_dashboard(window="30d", token_ids=[other.pk])
    assert mine["statuses"] == {"error": 1} and mine["models"][0]["ttft_ms"]["p50"] is None


def test_old_hours_leave_the_24h_window_but_stay_in_30d(small_model, token):
    _row("old", token, small_model.id)
    UsageRecord.objects.filter(request_id="old").update(created_at=timezone.now() - timedelta(days=3))
    roll_up_usage()
    assert usage_dashboard(window="24h")["statuses"] == {}
    assert usage_dashboard(window="30d")["statuses"] == {"completed": 1}


def test_a_deleted_token_keeps_its_history(small_model, token):
    _row("r", token, small_model.id)
    roll_up_usage()
    token_id = token.pk
    token.delete()
    (row,) = usage_dashboard(window="24h")["tokens"]
    assert (row["token_id"], row["name"], row["requests"]) == (token_id, f"deleted #{token_id}", 1)
