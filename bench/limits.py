"""What the token limiter adds to one request: reserve at admission plus settle at the end.

Measured on the limiter itself, not end to end (a generation's own time would drown it):
per store, `await reserve(...)` on an event loop (for Redis: a thread hop and one Lua
script) then `settle(...)` (one more script), for a token with all three limits, with
the token's window empty and with it holding --busy entries. An unlimited token skips
the limiter entirely and costs nothing.

Prints a table and writes bench/results/limits.json. Needs Redis on 127.0.0.1:6379 (db 12,
keys under a prefix of the run's own, deleted at the end). Usage:
    .venv/bin/python bench/limits.py [--requests 3000] [--busy 1000]
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "karen_host.settings")

import django  # noqa: E402

django.setup()

import redis  # noqa: E402

from inference.limits.budget import Limits  # noqa: E402
from inference.limits.in_redis import RedisLimiter  # noqa: E402
from inference.limits.memory import MemoryLimiter  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/12"


async def measure(limiter, requests: int, busy: int) -> dict[str, float]:
    """Microseconds per reserve and per settle (median, p99) over `requests` admitted requests."""
    big = 10**9  # limits never reached: every request is admitted, as most are
    limits = Limits(requests_per_minute=big, tokens_per_minute=big, concurrent=big)
    for i in range(busy):  # other requests of the same token still in the window
        await limiter.reserve("bench", limits, request_id=f"req_busy{i}", tokens=100)
    reserve_us, settle_us = [], []
    for i in range(requests):
        started = time.perf_counter()
        decision = await limiter.reserve("bench", limits, request_id=f"req_{i}", tokens=120)
        reserved = time.perf_counter()
        limiter.settle("bench", f"req_{i}", 80)
        settle_us.append((time.perf_counter() - reserved) * 1e6)
        reserve_us.append((reserved - started) * 1e6)
        assert decision is not None and decision.admitted
    q = lambda xs: statistics.quantiles(xs, n=100)[98]  # noqa: E731
    return {
        "reserve_median_us": round(statistics.median(reserve_us), 1),
        "reserve_p99_us": round(q(reserve_us), 1),
        "settle_median_us": round(statistics.median(settle_us), 1),
        "settle_p99_us": round(q(settle_us), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--busy", type=int, default=1000)
    args = parser.parse_args()
    prefix = f"karenhost:limit:bench-{uuid.uuid4().hex[:8]}:"
    rows = []
    try:
        for busy in (0, args.busy):
            for store, limiter in (("memory", MemoryLimiter()),
                                   ("redis", RedisLimiter(REDIS_URL, prefix=f"{prefix}{busy}:"))):  # fmt: skip
                rows.append({"store": store, "window_entries": busy,
                             **asyncio.run(measure(limiter, args.requests, busy))})  # fmt: skip
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        if keys := list(client.scan_iter(match=f"{prefix}*")):
            client.delete(*keys)
    header = f"{'store':<8} {'in window':>9} {'reserve p50':>12} {'p99':>8} {'settle p50':>11} {'p99':>8}  (us)"
    print(header)
    for r in rows:
        print(f"{r['store']:<8} {r['window_entries']:>9} {r['reserve_median_us']:>12} {r['reserve_p99_us']:>8} "
              f"{r['settle_median_us']:>11} {r['settle_p99_us']:>8}")  # fmt: skip
    out = ROOT / "bench" / "results" / "limits.json"
    out.write_text(json.dumps({"requests": args.requests, "cpu_count": os.cpu_count(), "rows": rows}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
