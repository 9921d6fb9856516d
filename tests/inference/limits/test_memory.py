"""The in-process store: a sliding 60 s window per token, settle and undo, under one lock."""

import threading

import pytest

from inference.limits.budget import Decision, Limits
from inference.limits.memory import MemoryLimiter


class Clock:
    """The far edge: a clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def limiter(clock):
    return MemoryLimiter(clock=clock)


def take(limiter, limits: Limits, request_id: str, tokens: int = 1, key: str = "7") -> Decision:
    return limiter.check_and_reserve(key, limits, request_id=request_id, tokens=tokens)


def test_rpm_admits_up_to_the_limit_then_says_when_the_oldest_leaves(limiter, clock):
    limits = Limits(requests_per_minute=3)
    for i in range(3):
        assert take(limiter, limits, f"r{i}").admitted
        clock.now += 10
    refused = take(limiter, limits, "r3")
    assert refused.exceeded == ("requests",)
    assert refused.retry_after_ms == pytest.approx(30_000)  # r0 was admitted 30 s ago
    assert refused.retry_after_s == 30
    assert refused.headers()["x-ratelimit-remaining-requests"] == "0"


def test_the_window_slides_rather_than_resetting(limiter, clock):
    limits = Limits(requests_per_minute=2)
    assert take(limiter, limits, "a").admitted
    clock.now += 40
    assert take(limiter, limits, "b").admitted
    clock.now += 21  # a has left the window, b has not
    assert take(limiter, limits, "c").admitted
    assert not take(limiter, limits, "d").admitted


def test_tpm_reserves_the_estimate_and_settles_to_the_real_count(limiter):
    limits = Limits(tokens_per_minute=100)
    assert take(limiter, limits, "a", tokens=60).admitted
    assert not take(limiter, limits, "b", tokens=60).admitted
    limiter.settle("7", "a", 25)
    assert limiter.usage("7") == (1, 25, 0)
    decision = take(limiter, limits, "b", tokens=60)
    assert decision.admitted and decision.headers()["x-ratelimit-remaining-tokens"] == "15"


def test_a_request_larger_than_the_whole_budget_is_refused_at_once(limiter):
    refused = take(limiter, Limits(tokens_per_minute=50), "a", tokens=51)
    assert refused.exceeded == ("tokens",) and refused.retry_after_s == 60
    assert limiter.usage("7") == (0, 0, 0)


def test_concurrency_is_freed_by_settle_and_by_undo(limiter):
    limits = Limits(concurrent=1)
    assert take(limiter, limits, "a").admitted
    assert take(limiter, limits, "b").exceeded == ("concurrency",)
    limiter.settle("7", "a", 10)
    assert take(limiter, limits, "c").admitted
    limiter.undo("7", "c")
    assert take(limiter, limits, "d").admitted


def test_undo_forgets_the_request_for_rpm_and_tpm_too(limiter):
    limits = Limits(requests_per_minute=1, tokens_per_minute=10)
    assert take(limiter, limits, "a", tokens=10).admitted
    limiter.undo("7", "a")
    assert limiter.usage("7") == (0, 0, 0)
    assert take(limiter, limits, "b", tokens=10).admitted


def test_settling_after_the_entry_left_the_window_changes_nothing(limiter, clock):
    limits = Limits(tokens_per_minute=100)
    take(limiter, limits, "a", tokens=10)
    clock.now += 61
    limiter.settle("7", "a", 90)
    assert limiter.usage("7") == (0, 0, 0)


def test_tokens_retry_after_waits_for_enough_tokens_to_leave(limiter, clock):
    limits = Limits(tokens_per_minute=100)
    take(limiter, limits, "a", tokens=30)
    clock.now += 10
    take(limiter, limits, "b", tokens=50)
    clock.now += 10
    refused = take(limiter, limits, "c", tokens=60)  # needs 40 freed: a (30) is not enough, b is
    assert refused.retry_after_ms == pytest.approx(50_000)


def test_budgets_are_per_token(limiter):
    limits = Limits(requests_per_minute=1)
    assert take(limiter, limits, "a", key="1").admitted
    assert take(limiter, limits, "b", key="2").admitted


def test_concurrent_check_and_reserve_never_over_admits(limiter):
    limits = Limits(requests_per_minute=10)
    admitted = []
    barrier = threading.Barrier(50)

    def one(i: int) -> None:
        barrier.wait()
        admitted.append(take(limiter, limits, f"r{i}").admitted)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert admitted.count(True) == 10


def test_headers_name_only_the_limits_the_token_has(limiter):
    assert set(take(limiter, Limits(requests_per_minute=5), "a").headers()) == {
        "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
    }  # fmt: skip
    assert take(limiter, Limits(concurrent=2), "b", key="8").headers() == {}
