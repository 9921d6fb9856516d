"""Two web nodes spend one token's budget together: its limits live in the cluster's Redis."""

import subprocess
import sys
import uuid

import httpx
import pytest
import redis

from tests.scaleout.cluster import REDIS_URL, ROOT
from tests.scaleout.conftest import chat_body


@pytest.fixture(scope="module")
def second_web(cluster) -> str:
    """A second web node beside the cluster's `web`, on the same database, Redis and inference nodes."""
    return cluster.start_web("web-b")


@pytest.fixture
def limited_secret(nodes) -> str:
    """A fresh token with 4 requests per minute, and no budget left over from an earlier run."""
    client = redis.Redis.from_url(REDIS_URL)
    if keys := list(client.scan_iter(match="karenhost:limit:*")):
        client.delete(*keys)
    name = f"limited-{uuid.uuid4().hex[:8]}"
    created = subprocess.run(
        [sys.executable, "manage.py", "create_token", name, "--scopes", "inference"],
        env=nodes.env, cwd=ROOT, check=True, capture_output=True, text=True,
    )  # fmt: skip
    nodes.sql("UPDATE models_app_apitoken SET rate_limit_rpm = 4 WHERE name = %s", name)
    return created.stdout.strip().splitlines()[-1]


def test_two_web_nodes_share_one_rpm_budget(nodes, second_web, limited_secret):
    headers = {"Authorization": f"Bearer {limited_secret}"}

    def chat(url: str) -> httpx.Response:
        return httpx.post(f"{url}/v1/chat/completions", json=chat_body(max_tokens=2), headers=headers, timeout=120)

    admitted = [chat(url) for url in (nodes.url, second_web, nodes.url, second_web)]
    assert [r.status_code for r in admitted] == [200, 200, 200, 200], admitted[-1].text
    assert [r.headers["x-ratelimit-remaining-requests"] for r in admitted] == ["3", "2", "1", "0"]
    refused = [chat(url) for url in (nodes.url, second_web)]
    assert [r.status_code for r in refused] == [429, 429]
    assert all(r.json()["error"]["code"] == "rate_limit_exceeded" and int(r.headers["Retry-After"]) >= 1
               for r in refused)  # fmt: skip
