"""The Redis store against the real Redis on 127.0.0.1:6379: one budget however many limiters share it."""

import asyncio
import logging
import threading
import time
import uuid

import pytest
import redis

from inference.limits.budget import Limits
from inference.limits.in_redis import RedisLimiter

REDIS_URL = "redis://127.0.0.1:6379/13"


@pytest.fixture
def prefix():
    """A key prefix of this test's own, deleted afterwards."""
    prefix = f"karenhost:limit:test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)


def node(prefix, **options) -> RedisLimiter:
    """One web node's limiter."""
    return RedisLimiter(REDIS_URL, prefix=prefix, **options)


def take(limiter, limits, request_id, tokens=1, key="7"):
    return limiter.check_and_reserve(key, limits, request_id=request_id, tokens=tokens)


def test_two_nodes_share_one_rpm_budget(prefix):
    a, b = node(prefix), node(prefix)
    limits = Limits(requests_per_minute=3)
    assert take(a, limits, "r1").admitted
    assert take(b, limits, "r2").admitted
    assert take(a, limits, "r3").admitted
    refused = take(b, limits, "r4")
    assert refused.exceeded == ("requests",)
    assert 58 <= refused.retry_after_s <= 60
    assert a.usage("7") == b.usage("7") == (3, 3, 0)


def test_fifty_threads_on_two_nodes_admit_exactly_the_rpm(prefix):
    nodes = [node(prefix), node(prefix)]
    limits = Limits(requests_per_minute=10)
    admitted = []
    barrier = threading.Barrier(50)

    def one(i: int) -> None:
        barrier.wait()
        admitted.append(take(nodes[i % 2], limits, f"r{i}").admitted)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 50 and admitted.count(True) == 10
    assert nodes[0].usage("7")[0] == 10


def test_concurrency_across_nodes_is_freed_by_settle(prefix):
    a, b = node(prefix), node(prefix)
    limits = Limits(concurrent=1)
    assert take(a, limits, "r1").admitted
    assert take(b, limits, "r2").exceeded == ("concurrency",)
    a.settle("7", "r1", 12)
    assert take(b, limits, "r3").admitted


def test_tpm_settles_to_the_real_count_and_undo_forgets(prefix):
    a, b = node(prefix), node(prefix)
    limits = Limits(requests_per_minute=5, tokens_per_minute=100)
    assert take(a, limits, "r1", tokens=70).admitted
    assert take(b, limits, "r2", tokens=70).exceeded == ("tokens",)
    a.settle("7", "r1", 20)
    decision = take(b, limits, "r2", tokens=70)
    assert decision.admitted and decision.headers()["x-ratelimit-remaining-tokens"] == "10"
    b.undo("7", "r2")
    assert a.usage("7") == (1, 20, 0)


def test_a_request_larger_than_the_budget_is_refused_and_not_counted(prefix):
    refused = take(node(prefix), Limits(tokens_per_minute=50), "r1", tokens=51)
    assert refused.exceeded == ("tokens",) and refused.retry_after_s == 60
    assert node(prefix).usage("7") == (0, 0, 0)


def test_the_window_slides_on_redis_time(prefix):
    limiter = node(prefix, window_s=1.0)
    limits = Limits(requests_per_minute=1)
    assert take(limiter, limits, "r1").admitted
    assert not take(limiter, limits, "r2").admitted
    time.sleep(1.05)
    assert take(limiter, limits, "r3").admitted


def test_every_key_has_a_ttl(prefix):
    limiter = node(prefix)
    take(limiter, Limits(requests_per_minute=5, tokens_per_minute=100, concurrent=2), "r1", tokens=10)
    client = redis.Redis.from_url(REDIS_URL)
    keys = sorted(k.decode() for k in client.scan_iter(match=f"{prefix}*"))
    assert keys == [f"{prefix}{{7}}:in_flight", f"{prefix}{{7}}:log", f"{prefix}{{7}}:tokens"]
    assert all(0 < client.pttl(k) <= 1_800_000 for k in keys)


def test_a_dead_nodes_request_in_flight_stops_counting_after_the_lease(prefix):
    limiter = node(prefix, lease_s=0.3)
    limits = Limits(concurrent=1)
    assert take(limiter, limits, "r1").admitted  # never settled: its node "died"
    assert not take(limiter, limits, "r2").admitted
    time.sleep(0.35)
    assert take(limiter, limits, "r3").admitted


def test_unreachable_redis_fails_open_with_a_warning(caplog):
    port = _closed_port()
    limiter = RedisLimiter(f"redis://127.0.0.1:{port}/0")
    with caplog.at_level(logging.WARNING, logger="inference.limits.in_redis"):
        assert take(limiter, Limits(requests_per_minute=1), "r1") is None
        started = time.monotonic()
        assert take(limiter, Limits(requests_per_minute=1), "r2") is None  # paused: no second timeout
        assert time.monotonic() - started < 0.05
        limiter.settle("7", "r1", 5)  # a settle that cannot reach Redis is logged, not raised
    assert "admitting requests uncounted" in caplog.text


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


async def test_a_caller_leaving_while_redis_reserves_leaves_nothing_reserved(prefix):
    class SlowRedis(RedisLimiter):  # the far edge: a slow network between the node and Redis
        def check_and_reserve(self, *args, **kwargs):
            time.sleep(0.2)
            return super().check_and_reserve(*args, **kwargs)

    limiter = SlowRedis(REDIS_URL, prefix=prefix)
    reserving = asyncio.create_task(
        limiter.reserve("7", Limits(requests_per_minute=5, concurrent=1), request_id="r1", tokens=10)
    )
    await asyncio.sleep(0.05)
    reserving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reserving
    await asyncio.sleep(0.3)  # the reservation is made after the caller left...
    for _ in range(100):  # ...and undone once it is
        if limiter.usage("7") == (0, 0, 0):
            break
        await asyncio.sleep(0.02)
    assert limiter.usage("7") == (0, 0, 0)
