"""A request under its token's limits: reserve before the engine, settle when the job ends, undo if refused.

The tokens a request will use are only known when it ends, so admission reserves an
estimate (its max_tokens, plus a third of the prompt's characters) and the job's outcome
settles the reservation to the engine's own count (prompt + completion tokens).
"""

import threading
from collections.abc import Callable
from typing import Any

from django.conf import settings

from inference.api.errors import RateLimited
from inference.auth import Principal
from inference.engine import Job, Outcome
from inference.limits.budget import Decision, Limiter, Limits
from inference.limits.headers import add_headers
from inference.limits.memory import MemoryLimiter
from inference.metering import counters

_limiter: tuple[tuple[Any, ...], Limiter] | None = None
_limiter_lock = threading.Lock()


def get_limiter() -> Limiter:
    """The process's limiter: in Redis when REDIS_URL is set (shared by every web node), else in memory."""
    global _limiter
    config = (settings.REDIS_URL, settings.CONCURRENCY_LEASE_S)
    with _limiter_lock:
        if _limiter is None or _limiter[0] != config:
            if config[0]:
                from inference.limits.in_redis import RedisLimiter  # redis is imported only where REDIS_URL asks for it

                store: Limiter = RedisLimiter(config[0], lease_s=config[1])
            else:
                store = MemoryLimiter()
            _limiter = (config, store)
        return _limiter[1]


def reset_limiter() -> None:
    """Forget every budget (tests)."""
    global _limiter
    with _limiter_lock:
        _limiter = None


def estimate_tokens(job: Job) -> int:
    """What a job reserves against tokens per minute: its max_tokens plus ~1 token per 3 prompt characters
    (a prompt sent as token ids: their count)."""
    if job.kind == "embedding":  # token ids count one each
        return max(1, sum(len(x) if isinstance(x, list) else len(x) // 3 for x in job.inputs))
    if job.kind == "completion" and job.prompt_tokens:
        return job.sampling.max_tokens + len(job.prompt_tokens)
    chars = sum(_chars(m.get("content")) for m in job.messages) if job.kind == "chat" else len(job.prompt)
    return job.sampling.max_tokens + chars // 3


def _chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(part.get("text") or "") for part in content if isinstance(part, dict))
    return 0


class RequestAbandoned(Exception):
    """The caller left before admission; the job must not be queued."""


class Admission:
    """One request's reservation, ended exactly once whichever way the request goes.

    Admitted (its usage row written): the job's outcome settles it, and that outcome is
    certain to come. Not admitted (the engine refused, or the caller left): `abandon`
    undoes it. The two race only when the caller leaves while the engine's thread is
    admitting; the state below decides which side ends the reservation.
    """

    def __init__(self, limiter: Limiter | None, key: str, request_id: str) -> None:
        self.limiter, self.key, self.request_id = limiter, key, request_id
        self._lock = threading.Lock()
        self._state = "reserved"  # reserved -> admitting -> admitted; or -> abandoned

    def guard_admit(self, admit: Callable[[], None]) -> Callable[[], None]:
        """`admit` (the usage row), refused once the caller has left; runs on the engine's thread."""
        if self.limiter is None:
            return admit

        def guarded() -> None:
            with self._lock:
                if self._state == "abandoned":
                    raise RequestAbandoned(self.request_id)
                self._state = "admitting"
            try:
                admit()
            except BaseException:
                with self._lock:
                    undo = self._state == "abandoning"
                    self._state = "abandoned" if undo else "reserved"
                if undo:
                    self.limiter.undo(self.key, self.request_id)
                raise
            with self._lock:
                self._state = "admitted"  # even if abandoning: the job is queued and its outcome will come

        return guarded

    def settle_first(self, finalize: Callable[[Outcome], None]) -> Callable[[Outcome], None]:
        """`finalize`, after settling; so a request whose usage row is closed no longer holds its limits."""
        if self.limiter is None:
            return finalize

        def on_outcome(outcome: Outcome) -> None:
            try:
                self.limiter.settle(self.key, self.request_id, outcome.prompt_tokens + outcome.completion_tokens)
            finally:
                finalize(outcome)

        return on_outcome

    def abandon(self) -> None:
        """The engine refused the job or the caller left during submit: undo unless it was admitted."""
        if self.limiter is None:
            return
        with self._lock:
            if self._state in ("admitted", "abandoned"):
                return
            if self._state == "admitting":  # the admitting thread decides
                self._state = "abandoning"
                return
            self._state = "abandoned"
        self.limiter.undo(self.key, self.request_id)


async def admit_within_limits(principal: Principal, job: Job, request_id: str) -> Admission:
    """Reserve the job under the principal's limits; RateLimited (429) past one of them, not counted."""
    limits = Limits.of(principal)
    if not limits:
        return Admission(None, "", request_id)
    limiter = get_limiter()
    key = principal.budget  # a minted token spends its minter's budget
    decision = await limiter.reserve(key, limits, request_id=request_id, tokens=estimate_tokens(job))
    if decision is None:  # the store failed: admitted uncounted (fail open, logged by the store)
        return Admission(None, key, request_id)
    add_headers(decision.headers())
    if not decision.admitted:
        for limit in decision.exceeded:
            counters.count_limited(limit)
        raise limit_error(decision, job)
    return Admission(limiter, key, request_id)


def limit_error(decision: Decision, job: Job) -> RateLimited:
    """The 429 naming the limit(s) a request ran into."""
    limits, retry = decision.limits, decision.retry_after_s
    tpm = limits.tokens_per_minute
    if "tokens" in decision.exceeded and tpm is not None and decision.cost > tpm:
        message = (
            f"This request reserves about {decision.cost} tokens (max_tokens {job.sampling.max_tokens} plus "
            f"~1 per 3 prompt characters), more than this token's limit of {tpm} tokens per minute; "
            "lower max_tokens or shorten the prompt."
        )
        return RateLimited(message, param="max_tokens", code="rate_limit_exceeded", retry_after=retry)
    reached = []
    if "concurrency" in decision.exceeded:
        reached.append(f"{_requests(limits.concurrent)} in flight at once")
    if "requests" in decision.exceeded:
        reached.append(f"{_requests(limits.requests_per_minute)} per minute")
    if "tokens" in decision.exceeded:
        reached.append(
            f"{tpm} tokens per minute ({decision.tokens} counted in the last minute; this request reserves "
            f"{decision.cost}: its max_tokens plus an estimate of the prompt)"
        )
    code = "concurrency_limit_exceeded" if decision.exceeded == ("concurrency",) else "rate_limit_exceeded"
    what = "Concurrency limit" if code == "concurrency_limit_exceeded" else "Rate limit"
    message = f"{what} reached: this token may have {' and '.join(reached)}; retry in {retry} s."
    return RateLimited(message, code=code, retry_after=retry)


def _requests(n: int | None) -> str:
    return "1 request" if n == 1 else f"{n} requests"
