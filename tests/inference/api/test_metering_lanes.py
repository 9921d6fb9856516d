"""A request's usage row records the lane of the token that made it."""

import httpx
import pytest

from models_app.models import UsageRecord
from models_app.services import issue_token


@pytest.mark.parametrize("lane", ["batch", "interactive"])
def test_a_request_is_metered_in_its_tokens_lane(live, admin_user, lane):
    url, _, model = live
    _, secret = issue_token(name=lane, owner=admin_user, scopes=["inference"], lane=lane)
    response = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert UsageRecord.objects.get(request_id=response.headers["X-Request-Id"]).lane == lane
