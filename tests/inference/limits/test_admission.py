"""Admission: what a job reserves, and that each reservation ends exactly once on every path."""

import socket
import threading

import pytest

from inference.api.errors import RateLimited
from inference.auth import Principal
from inference.engine import Job, Outcome, Sampling
from inference.limits.admission import (
    Admission,
    RequestAbandoned,
    admit_within_limits,
    estimate_tokens,
    reset_limiter,
)
from inference.limits.budget import Limits
from inference.limits.memory import MemoryLimiter

LIMITS = Limits(requests_per_minute=5, tokens_per_minute=1000, concurrent=1)


@pytest.fixture(autouse=True)
def _fresh_limits():
    reset_limiter()
    yield
    reset_limiter()


def principal(**limits) -> Principal:
    return Principal(token_id=7, name="t", scopes=frozenset({"inference"}), allowed_models=frozenset(), **limits)


def chat_job(content: str = "x" * 30, max_tokens: int = 20) -> Job:
    return Job(model_id="m", kind="chat", messages=[{"role": "user", "content": content}],
               sampling=Sampling(max_tokens=max_tokens))  # fmt: skip


@pytest.fixture
def limiter():
    return MemoryLimiter()


def reserved(limiter, request_id="r1") -> Admission:
    assert limiter.check_and_reserve("7", LIMITS, request_id=request_id, tokens=50).admitted
    return Admission(limiter, "7", request_id)


def test_a_job_reserves_max_tokens_plus_a_third_of_its_prompt_characters():
    assert estimate_tokens(chat_job("x" * 30, 20)) == 30
    parts = [{"type": "text", "text": "y" * 9}]
    assert estimate_tokens(Job(model_id="m", kind="chat", messages=[{"role": "user", "content": parts}],
                               sampling=Sampling(max_tokens=1))) == 4  # fmt: skip
    assert estimate_tokens(Job(model_id="m", kind="completion", prompt="z" * 6, sampling=Sampling(max_tokens=2))) == 4
    assert estimate_tokens(Job(model_id="m", kind="embedding", inputs=["ab", "cd"])) == 1  # never zero


def test_the_outcome_settles_before_the_usage_row_is_closed(limiter):
    admission = reserved(limiter)
    admission.guard_admit(lambda: None)()
    seen = []
    on_outcome = admission.settle_first(lambda outcome: seen.append(limiter.usage("7")))
    admission.abandon()  # admitted: a no-op, the outcome ends it
    on_outcome(Outcome("completed", "stop", prompt_tokens=12, completion_tokens=3))
    assert seen == [(1, 15, 0)]


def test_abandoned_before_admission_is_undone_and_a_late_admit_is_refused(limiter):
    admission = reserved(limiter)
    admission.abandon()
    assert limiter.usage("7") == (0, 0, 0)
    admitted = []
    with pytest.raises(RequestAbandoned):
        admission.guard_admit(lambda: admitted.append(True))()
    assert not admitted
    admission.abandon()  # twice is harmless
    assert limiter.usage("7") == (0, 0, 0)


def test_abandoned_while_admitting_is_left_to_the_outcome(limiter):
    admission = reserved(limiter)
    inside, release = threading.Event(), threading.Event()

    def slow_admit() -> None:
        inside.set()
        release.wait(5)

    worker = threading.Thread(target=admission.guard_admit(slow_admit))
    worker.start()
    inside.wait(5)
    admission.abandon()  # the caller left while the usage row was being written
    release.set()
    worker.join()
    assert limiter.usage("7") == (1, 50, 1)  # admitted after all: the job is queued and will end
    admission.settle_first(lambda _: None)(Outcome("cancelled", "cancelled", prompt_tokens=9))
    assert limiter.usage("7") == (1, 9, 0)


def test_a_failed_admission_after_the_caller_left_is_undone(limiter):
    admission = reserved(limiter)
    inside, release = threading.Event(), threading.Event()

    def failing_admit() -> None:
        inside.set()
        release.wait(5)
        raise RuntimeError("database down")

    errors = []

    def run() -> None:
        try:
            admission.guard_admit(failing_admit)()
        except RuntimeError as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    inside.wait(5)
    admission.abandon()
    release.set()
    worker.join()
    assert errors and limiter.usage("7") == (0, 0, 0)


async def test_an_unlimited_token_never_reaches_a_limiter(settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{_closed_port()}/0"  # would fail if it were asked
    admission = await admit_within_limits(principal(), chat_job(), "r1")
    assert admission.limiter is None


async def test_a_refusal_raises_429_naming_the_limit():
    await admit_within_limits(principal(rate_limit_rpm=1), chat_job(), "r1")
    with pytest.raises(RateLimited) as refused:
        await admit_within_limits(principal(rate_limit_rpm=1), chat_job(), "r2")
    assert refused.value.code == "rate_limit_exceeded" and refused.value.retry_after >= 1
    assert "1 request per minute" in str(refused.value)


async def test_unreachable_redis_admits_uncounted(settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{_closed_port()}/0"
    for request_id in ("r1", "r2", "r3"):  # past rpm 1, yet admitted: fail open
        admission = await admit_within_limits(principal(rate_limit_rpm=1), chat_job(), request_id)
        assert admission.limiter is None


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
