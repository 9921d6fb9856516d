"""/api/v1/usage: each row's lane, and a filter on it."""

import pytest

from models_app.models import UsageRecord

pytestmark = pytest.mark.django_db


def test_usage_rows_show_their_lane_and_filter_by_it(manager, manager_token, small_model):
    for n, lane in enumerate(["interactive", "batch", "batch"]):
        UsageRecord.objects.create(
            request_id=f"req-{n}", token=manager_token[0], model=small_model, endpoint="chat.completions", lane=lane
        )
    rows = manager.get("/api/v1/usage/?lane=batch").json()["results"]
    assert sorted(r["request_id"] for r in rows) == ["req-1", "req-2"] and {r["lane"] for r in rows} == {"batch"}
