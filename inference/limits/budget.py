"""What a limiter decides and the interface its two stores (memory, Redis) share.

The window is a sliding-window log: one entry per admitted request in the last 60 s,
holding the tokens that request reserved (and later really used). Requests per minute
is the number of entries, tokens per minute the sum of theirs. We chose it over the
two-bucket approximation because a request's reservation has to be settled to its
real count when it ends, which needs that request's own entry, and because Retry-After
and the reset headers can then be exact (when the oldest entries leave the window)
instead of an estimate that drifts across bucket edges. The cost is one entry per
admitted request, bounded by the token's requests per minute (or by its tokens per
minute, since every request reserves at least one token).
"""

import asyncio
import functools
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

from inference.auth import Principal

WINDOW_S = 60.0
# Concurrency has no clock to wait for: a refused client learns nothing better than "soon".
CONCURRENCY_RETRY_MS = 1000


@dataclass(frozen=True)
class Limits:
    """A token's limits; None is unlimited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent: int | None = None

    @classmethod
    def of(cls, principal: Principal) -> "Limits":
        return cls(principal.rate_limit_rpm, principal.rate_limit_tpm, principal.max_concurrent)

    @property
    def windowed(self) -> bool:
        """Whether requests are logged in the window (a limit per minute is set)."""
        return self.requests_per_minute is not None or self.tokens_per_minute is not None

    def __bool__(self) -> bool:
        return self.windowed or self.concurrent is not None


@dataclass(frozen=True)
class Decision:
    """A limiter's answer for one request, with the counts after it (for the headers)."""

    limits: Limits
    exceeded: tuple[str, ...]  # "concurrency", "requests", "tokens"; empty: admitted
    requests: int  # in the window, this one included when admitted
    tokens: int
    in_flight: int
    cost: int  # the tokens this request reserves
    retry_after_ms: float = 0.0  # refused: until this request would fit
    reset_ms: float = 0.0  # until the window is empty again (OpenAI's "resets to its initial state")

    @property
    def admitted(self) -> bool:
        return not self.exceeded

    @property
    def retry_after_s(self) -> int:
        """Whole seconds, at least 1, as Retry-After wants."""
        return max(1, math.ceil(self.retry_after_ms / 1000))

    def headers(self) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers, for the per-minute limits this token has."""
        headers = {}
        reset = format_duration(self.reset_ms)
        if (rpm := self.limits.requests_per_minute) is not None:
            headers["x-ratelimit-limit-requests"] = str(rpm)
            headers["x-ratelimit-remaining-requests"] = str(max(0, rpm - self.requests))
            headers["x-ratelimit-reset-requests"] = reset
        if (tpm := self.limits.tokens_per_minute) is not None:
            headers["x-ratelimit-limit-tokens"] = str(tpm)
            headers["x-ratelimit-remaining-tokens"] = str(max(0, tpm - self.tokens))
            headers["x-ratelimit-reset-tokens"] = reset if self.tokens else "0s"
        return headers


def format_duration(ms: float) -> str:
    """A duration as OpenAI's headers write it (Go's style): "20ms", "1s", "1.5s", "6m0s", "1h0m0s"."""
    ms = max(0, math.ceil(ms))
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    text = f"{seconds}.{millis:03d}".rstrip("0").rstrip(".") + "s"
    if hours or minutes:
        text = f"{minutes}m{text}"
    if hours:
        text = f"{hours}h{text}"
    return text


class Limiter(ABC):
    """Atomic check-and-reserve of a token's limits, then settle or undo once the request ends.

    `key` names the budget (a token id); `request_id` names one reservation in it. Every
    method is thread-safe: `reserve` runs on the event loop, `settle` on the thread that
    runs the job's outcome callbacks.
    """

    window_s: float = WINDOW_S

    async def reserve(self, key: str, limits: Limits, *, request_id: str, tokens: int) -> Decision | None:
        """`check_and_reserve` off the event loop; undone if the caller leaves while it runs."""
        loop = asyncio.get_running_loop()
        call = functools.partial(self.check_and_reserve, key, limits, request_id=request_id, tokens=tokens)
        reserving = loop.run_in_executor(None, call)
        try:
            return await asyncio.shield(reserving)  # the thread runs on anyway; its answer must not be lost
        except asyncio.CancelledError:

            def undo_if_admitted(done: asyncio.Future) -> None:
                if not done.cancelled() and done.exception() is None and done.result() and done.result().admitted:
                    loop.run_in_executor(None, self.undo, key, request_id)

            reserving.add_done_callback(undo_if_admitted)
            raise

    @abstractmethod
    def check_and_reserve(self, key: str, limits: Limits, *, request_id: str, tokens: int) -> Decision | None:
        """Admit and reserve `tokens`, or refuse; None when the store failed and the request goes uncounted."""

    @abstractmethod
    def settle(self, key: str, request_id: str, tokens: int) -> None:
        """The request ended having used `tokens`: count those instead of the estimate; free its concurrency."""

    @abstractmethod
    def undo(self, key: str, request_id: str) -> None:
        """The request was refused after it reserved: forget it, as if it had never been counted."""

    @abstractmethod
    def usage(self, key: str) -> tuple[int, int, int]:
        """(requests, tokens, requests in flight) counted for `key` now."""
