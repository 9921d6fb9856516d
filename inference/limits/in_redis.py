"""The shared store: budgets in Redis, so that every web node spends from the same ones.

Each check-and-reserve is one Lua script, which Redis runs atomically: no other client's
command runs between the check and the increment, so concurrent requests on several
nodes can never over-admit. The clock is Redis' own (`TIME`), so the nodes' clocks need
not agree. A token's keys share a hash tag (`{12}`), which keeps them in one slot of a
Redis Cluster as a multi-key script requires, and every key has a TTL.

If Redis cannot be reached we fail open: the request is admitted uncounted and a
warning is logged (what LiteLLM does). The limits protect fairness and cost, not
secrets, and a limiter outage should not take inference down with it. After a failure
Redis is left alone for a few seconds, so that an outage costs one timeout per pause
rather than one per request.
"""

import logging
import threading
import time

import redis

from inference.limits.budget import CONCURRENCY_RETRY_MS, WINDOW_S, Decision, Limiter, Limits

logger = logging.getLogger(__name__)
KEY_PREFIX = "karenhost:limit:"
TIMEOUT_S = 0.5  # connect and read: the most a dead Redis adds to one request
PAUSE_AFTER_FAILURE_S = 5.0
NONE = -1  # "no such limit" in the scripts' arguments
_SUM = "=sum"  # the tokens hash's running total (request ids start with "req_", never "=")

# KEYS: log (zset request id -> ms admitted), tokens (hash request id -> tokens, and the
# total), in flight (zset request id -> ms admitted). ARGV: request id, rpm, tpm,
# concurrent (-1: none), tokens to reserve, window ms, lease ms, concurrency retry ms.
# Returns {exceeded (comma-separated; empty: admitted), requests, tokens, in flight, retry ms, reset ms}.
_RESERVE = """
local id, rpm, tpm, concurrent = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local cost, window, lease = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - window)
if #expired > 0 then
  local freed = 0
  for _, member in ipairs(expired) do
    freed = freed + tonumber(redis.call('HGET', KEYS[2], member) or '0')
    redis.call('HDEL', KEYS[2], member)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  redis.call('HINCRBY', KEYS[2], '=sum', -freed)
end
-- A request in flight longer than the lease is from a web node that died mid-request.
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - lease)
local requests = redis.call('ZCARD', KEYS[1])
local tokens = tonumber(redis.call('HGET', KEYS[2], '=sum') or '0')
local in_flight = redis.call('ZCARD', KEYS[3])
local exceeded, retry = {}, 0
if concurrent >= 0 and in_flight >= concurrent then
  table.insert(exceeded, 'concurrency')
  retry = tonumber(ARGV[8])
end
if rpm >= 0 and requests >= rpm then
  table.insert(exceeded, 'requests')
  local wait = window
  if rpm > 0 then
    local oldest = redis.call('ZRANGE', KEYS[1], requests - rpm, requests - rpm, 'WITHSCORES')
    wait = tonumber(oldest[2]) + window - now
  end
  retry = math.max(retry, wait)
end
if tpm >= 0 and tokens + cost > tpm then
  table.insert(exceeded, 'tokens')
  local wait = window
  if cost <= tpm then
    local need, freed = tokens + cost - tpm, 0
    local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
    for i = 1, #entries, 2 do
      freed = freed + tonumber(redis.call('HGET', KEYS[2], entries[i]) or '0')
      if freed >= need then
        wait = tonumber(entries[i + 1]) + window - now
        break
      end
    end
  end
  retry = math.max(retry, wait)
end
if #exceeded == 0 then
  if rpm >= 0 or tpm >= 0 then
    redis.call('ZADD', KEYS[1], now, id)
    redis.call('HSET', KEYS[2], id, cost)
    tokens = redis.call('HINCRBY', KEYS[2], '=sum', cost)
    redis.call('PEXPIRE', KEYS[1], math.ceil(window))
    redis.call('PEXPIRE', KEYS[2], math.ceil(window))
    requests = requests + 1
  end
  if concurrent >= 0 then
    redis.call('ZADD', KEYS[3], now, id)
    redis.call('PEXPIRE', KEYS[3], math.ceil(lease))
    in_flight = in_flight + 1
  end
end
local reset = 0
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if #newest > 0 then reset = tonumber(newest[2]) + window - now end
return {table.concat(exceeded, ','), requests, tokens, in_flight, math.ceil(retry), math.ceil(reset)}
"""

# Same KEYS; ARGV: request id, tokens used (-1: undo, forget the request entirely).
_SETTLE = """
redis.call('ZREM', KEYS[3], ARGV[1])
local old = redis.call('HGET', KEYS[2], ARGV[1])
if not old then return 0 end  -- it already left the window (or was never counted)
local used = tonumber(ARGV[2])
if used < 0 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[1], ARGV[1])
  used = 0
else
  redis.call('HSET', KEYS[2], ARGV[1], used)
end
redis.call('HINCRBY', KEYS[2], '=sum', used - tonumber(old))
return 1
"""

# Same KEYS; ARGV: window ms, lease ms. Returns {requests, tokens, in flight}.
_USAGE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. (now - tonumber(ARGV[1])), '+inf')
local tokens = 0
for _, member in ipairs(live) do tokens = tokens + tonumber(redis.call('HGET', KEYS[2], member) or '0') end
return {#live, tokens, redis.call('ZCOUNT', KEYS[3], '(' .. (now - tonumber(ARGV[2])), '+inf')}
"""


class RedisLimiter(Limiter):
    """Sliding-window budgets in Redis, shared by every process that points at the same server and prefix."""

    def __init__(
        self, url: str, *, prefix: str = KEY_PREFIX, window_s: float = WINDOW_S, lease_s: float = 1800.0
    ) -> None:
        self.window_s = window_s
        self.prefix = prefix
        self.lease_s = lease_s
        self.client = redis.Redis.from_url(url, socket_connect_timeout=TIMEOUT_S, socket_timeout=TIMEOUT_S)
        self._reserve = self.client.register_script(_RESERVE)
        self._settle = self.client.register_script(_SETTLE)
        self._usage = self.client.register_script(_USAGE)
        self._lock = threading.Lock()
        self._paused_until = 0.0

    def keys(self, key: str) -> list[str]:
        base = f"{self.prefix}{{{key}}}"
        return [f"{base}:log", f"{base}:tokens", f"{base}:in_flight"]

    def check_and_reserve(self, key: str, limits: Limits, *, request_id: str, tokens: int) -> Decision | None:
        if self._paused():
            return None
        args = [
            request_id,
            *(NONE if v is None else v for v in (limits.requests_per_minute, limits.tokens_per_minute,
                                                 limits.concurrent)),
            tokens, self.window_s * 1000, self.lease_s * 1000, CONCURRENCY_RETRY_MS,
        ]  # fmt: skip
        try:
            exceeded, requests, used, in_flight, retry_ms, reset_ms = self._reserve(self.keys(key), args)
        except redis.RedisError as exc:
            self._failed("reserve", exc)
            return None
        exceeded = tuple(exceeded.decode().split(",")) if exceeded else ()
        return Decision(limits, exceeded, requests, used, in_flight, tokens, retry_ms, reset_ms)

    def settle(self, key: str, request_id: str, tokens: int) -> None:
        self._call_settle(key, request_id, tokens)

    def undo(self, key: str, request_id: str) -> None:
        self._call_settle(key, request_id, NONE)

    def _call_settle(self, key: str, request_id: str, tokens: int) -> None:
        # Not skipped while paused: a reservation made before the failure should still end.
        try:
            self._settle(self.keys(key), [request_id, tokens])
        except redis.RedisError as exc:  # the entry leaves with its TTL, the request in flight with the lease
            self._failed("settle", exc)

    def usage(self, key: str) -> tuple[int, int, int]:
        requests, tokens, in_flight = self._usage(self.keys(key), [self.window_s * 1000, self.lease_s * 1000])
        return int(requests), int(tokens), int(in_flight)

    def _paused(self) -> bool:
        with self._lock:
            return time.monotonic() < self._paused_until

    def _failed(self, what: str, exc: Exception) -> None:
        with self._lock:
            self._paused_until = time.monotonic() + PAUSE_AFTER_FAILURE_S
        logger.warning(
            "rate limiter: Redis %s failed (%s); admitting requests uncounted for %.0f s",
            what, exc, PAUSE_AFTER_FAILURE_S,
        )  # fmt: skip
