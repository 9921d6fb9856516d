"""The in-process store: one web node's budgets under one lock."""

import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from inference.limits.budget import CONCURRENCY_RETRY_MS, WINDOW_S, Decision, Limiter, Limits


@dataclass
class _Budget:
    """One token's window: request id -> [admitted at, tokens], oldest first; and its requests in flight."""

    log: OrderedDict[str, list[float]] = field(default_factory=OrderedDict)
    tokens: int = 0
    in_flight: set[str] = field(default_factory=set)

    def expire(self, before: float) -> None:
        while self.log:
            request_id, (at, tokens) = next(iter(self.log.items()))
            if at > before:
                return
            del self.log[request_id]
            self.tokens -= int(tokens)


class MemoryLimiter(Limiter):
    """Sliding-window budgets in this process; every check-and-reserve holds the lock, so it is atomic."""

    def __init__(self, *, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._budgets: dict[str, _Budget] = {}

    async def reserve(self, key: str, limits: Limits, *, request_id: str, tokens: int) -> Decision:
        return self.check_and_reserve(key, limits, request_id=request_id, tokens=tokens)  # microseconds: no hop

    def check_and_reserve(self, key: str, limits: Limits, *, request_id: str, tokens: int) -> Decision:
        now = self._clock()
        window = self.window_s
        with self._lock:
            budget = self._budgets.setdefault(key, _Budget())
            budget.expire(now - window)
            requests = len(budget.log)
            exceeded, retry_s = [], 0.0
            if limits.concurrent is not None and len(budget.in_flight) >= limits.concurrent:
                exceeded.append("concurrency")
                retry_s = CONCURRENCY_RETRY_MS / 1000
            if (rpm := limits.requests_per_minute) is not None and requests >= rpm:
                exceeded.append("requests")  # the oldest requests - rpm + 1 entries must leave first
                retry_s = max(retry_s, self._nth_leaves_in(budget, requests - rpm, now) if rpm else window)
            if (tpm := limits.tokens_per_minute) is not None and budget.tokens + tokens > tpm:
                exceeded.append("tokens")
                retry_s = max(retry_s, self._tokens_free_in(budget, budget.tokens + tokens - tpm, now, tokens > tpm))
            if not exceeded:
                if limits.windowed:
                    budget.log[request_id] = [now, tokens]
                    budget.tokens += tokens
                if limits.concurrent is not None:
                    budget.in_flight.add(request_id)
            reset_s = next(reversed(budget.log.values()))[0] + window - now if budget.log else 0.0
            return Decision(limits, tuple(exceeded), len(budget.log), budget.tokens, len(budget.in_flight), tokens,
                            retry_s * 1000, reset_s * 1000)  # fmt: skip

    def _nth_leaves_in(self, budget: _Budget, n: int, now: float) -> float:
        """Seconds until the n-th oldest entry (0-based) leaves the window (lock held)."""
        at, _ = next(itertools.islice(budget.log.values(), n, None))
        return at + self.window_s - now

    def _tokens_free_in(self, budget: _Budget, need: int, now: float, too_large: bool) -> float:
        """Seconds until the oldest entries that leave the window free `need` tokens (lock held)."""
        if too_large:  # more than the whole budget: no wait is enough
            return self.window_s
        freed = 0
        for at, tokens in budget.log.values():
            freed += int(tokens)
            if freed >= need:
                return at + self.window_s - now
        return self.window_s

    def settle(self, key: str, request_id: str, tokens: int) -> None:
        with self._lock:
            budget = self._budgets.get(key)
            if budget is None:
                return
            budget.in_flight.discard(request_id)
            entry = budget.log.get(request_id)
            if entry is not None:  # None: it already left the window
                budget.tokens += tokens - int(entry[1])
                entry[1] = tokens

    def undo(self, key: str, request_id: str) -> None:
        with self._lock:
            budget = self._budgets.get(key)
            if budget is None:
                return
            budget.in_flight.discard(request_id)
            entry = budget.log.pop(request_id, None)
            if entry is not None:
                budget.tokens -= int(entry[1])

    def usage(self, key: str) -> tuple[int, int, int]:
        """(requests, tokens, in flight) counted for `key` now."""
        with self._lock:
            budget = self._budgets.get(key)
            if budget is None:
                return 0, 0, 0
            budget.expire(self._clock() - self.window_s)
            return len(budget.log), budget.tokens, len(budget.in_flight)
