"""Usage counted by the hour, so that charts over a month read thousands of rows, not millions.

`roll_up_usage` folds finished usage rows into UsageRollup (sums) and LatencyRollup (latency
histograms), by hour and by day, and marks them `rolled_up`; it runs before the dashboard reads, from the
summary API and every minute from Celery beat. `usage_dashboard` reads the rollups.
"""

import math
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection, models, transaction
from django.db.models import Q, QuerySet, Sum
from django.utils import timezone

from models_app.choices import UsageStatus
from models_app.models import APIToken, LatencyRollup, RollupSpan, UsageRecord, UsageRollup

BUCKET_GROWTH = 1.2  # each latency bucket is 20% wider than the one before: a percentile is within 10%
BUCKETS = 100
BUCKET_BASE = {"ttft": 1.0, "tps": 0.1}  # ms and tokens/s where bucket 0 starts
WINDOWS = {"24h": (timedelta(hours=24), "hour"), "30d": (timedelta(days=30), "day")}
ERROR_STATUSES = (UsageStatus.ERROR, UsageStatus.TIMEOUT, UsageStatus.INTERRUPTED)  # a cancel is the client's
_LOCK_KEY = 72_617_001  # PostgreSQL advisory lock id for the rollup


def bucket_of(metric: str, value: float) -> int:
    """The histogram bucket a latency value falls in (clamped to the first and last)."""
    base = BUCKET_BASE[metric]
    if value <= base:
        return 0
    return min(BUCKETS - 1, int(math.log(value / base, BUCKET_GROWTH)))


def bucket_value(metric: str, bucket: int) -> float:
    """A bucket's middle (geometric), the value a percentile in it is reported as."""
    return BUCKET_BASE[metric] * BUCKET_GROWTH ** (bucket + 0.5)


def decode_rate(completion_tokens: int, duration_ms: float | None, ttft_ms: float | None) -> tuple[int, float] | None:
    """(tokens after the first, ms they took), or None when the row cannot say (fewer than 2 tokens, no timings)."""
    if completion_tokens < 2 or duration_ms is None or ttft_ms is None or duration_ms <= ttft_ms:
        return None
    return completion_tokens - 1, duration_ms - ttft_ms


def latency_buckets(ttft_ms: float | None, rate: tuple[int, float] | None) -> list[tuple[str, int]]:
    """The histogram buckets one finished request counts in: its time to first token, its decode tokens/s."""
    buckets = [] if ttft_ms is None else [("ttft", bucket_of("ttft", ttft_ms))]
    return buckets + ([("tps", bucket_of("tps", rate[0] * 1000 / rate[1]))] if rate else [])


def roll_up_usage(*, batch: int = 5_000, max_batches: int | None = None) -> int:
    """Fold finished, not yet counted usage rows into the hourly and daily rollups; return how many.

    Batches keep each transaction (and SQLite's write lock) short while a backlog is folded;
    `max_batches` bounds the work (a page view leaves a backlog to Celery beat).
    """
    total, batches = 0, 0
    while max_batches is None or batches < max_batches:
        done = _roll_up_batch(batch)
        total, batches = total + done, batches + 1
        if done < batch:
            break
    return total


def rollup_backlog() -> int:
    """Finished usage rows not yet in the rollups."""
    return UsageRecord.objects.filter(rolled_up=False).exclude(status=UsageStatus.STARTED).count()


def span_start(span: str, moment: datetime) -> datetime:
    """The start of the UTC hour or day `moment` falls in."""
    start = moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return start.replace(hour=0) if span == RollupSpan.DAY else start


@transaction.atomic
def _roll_up_batch(limit: int) -> int:
    # One rollup at a time, or two would count the same rows: SQLite's IMMEDIATE transactions
    # (settings) already take the write lock at BEGIN; PostgreSQL needs the advisory lock.
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
    rows = list(
        UsageRecord.objects.filter(rolled_up=False)
        .exclude(status=UsageStatus.STARTED)
        .order_by("id")
        .values_list(
            "id",
            "created_at",
            "model_id",
            "token_id",
            "status",
            "prompt_tokens",
            "completion_tokens",
            "time_to_first_token_ms",
            "duration_ms",
        )[:limit]
    )
    if not rows:
        return 0
    sums: dict[tuple, list[float]] = defaultdict(lambda: [0] * 7)
    latency: Counter[tuple] = Counter()
    for _, created, model_id, token_id, status, prompt, completion, ttft, duration in rows:
        rate = decode_rate(completion, duration, ttft)
        for span in RollupSpan.values:
            start = span_start(span, created)
            total = sums[(span, start, model_id or "", token_id or 0, status)]
            total[0] += 1
            total[1] += prompt
            total[2] += completion
            if ttft is not None:
                total[3] += 1
                total[4] += ttft
            if rate:
                total[5] += rate[0]
                total[6] += rate[1]
            for metric, bucket in latency_buckets(ttft, rate):
                latency[(span, start, model_id or "", metric, bucket)] += 1
    _upsert(UsageRollup, ("span", "start", "model_id", "token_id", "status"), _SUM_FIELDS,
            [(*key, *values) for key, values in sums.items()])  # fmt: skip
    _upsert(LatencyRollup, ("span", "start", "model_id", "metric", "bucket"), ("count",),
            [(*key, n) for key, n in latency.items()])  # fmt: skip
    ids = [row[0] for row in rows]
    for start in range(0, len(ids), 2_000):  # under every database's bound on query parameters
        UsageRecord.objects.filter(id__in=ids[start : start + 2_000]).update(rolled_up=True)
    return len(rows)


_SUM_FIELDS = ("requests", "prompt_tokens", "completion_tokens", "ttft_count", "ttft_ms_sum", "decode_tokens",
               "decode_ms_sum")  # fmt: skip


def _upsert(model: type[models.Model], key: tuple[str, ...], added: tuple[str, ...], rows: list[tuple]) -> None:
    """Insert each row, or add its `added` values to the row with the same key: one statement per row, no read.

    `INSERT ... ON CONFLICT DO UPDATE` is the same in SQLite (3.24+) and PostgreSQL.
    """
    q = connection.ops.quote_name
    table, columns = q(model._meta.db_table), [*key, *added]
    increments = ", ".join(f"{q(c)} = {table}.{q(c)} + excluded.{q(c)}" for c in added)
    sql = (
        f"INSERT INTO {table} ({', '.join(q(c) for c in columns)}) VALUES ({', '.join(['%s'] * len(columns))}) "
        f"ON CONFLICT ({', '.join(q(c) for c in key)}) DO UPDATE SET {increments}"
    )
    adapt = connection.ops.adapt_datetimefield_value
    with connection.cursor() as cursor:
        cursor.executemany(sql, [(row[0], adapt(row[1]), *row[2:]) for row in rows])


def percentiles(
    counts: dict[int, int], metric: str, points: Iterable[float] = (0.05, 0.5, 0.95)
) -> dict[str, float | None]:
    """p5, p50, p95 from a bucket -> count histogram (None where it is empty).

    For time to first token p95 is the slow tail; for decode tokens/s it is p5.
    """
    total = sum(counts.values())
    result: dict[str, float | None] = {}
    for point in points:
        name = f"p{round(point * 100)}"
        if not total:
            result[name] = None
            continue
        rank, seen = point * total, 0
        for bucket in sorted(counts):
            seen += counts[bucket]
            if seen >= rank:
                result[name] = round(bucket_value(metric, bucket), 1)
                break
    return result


def usage_dashboard(*, window: str, token_ids: Collection[int] | None = None, now: datetime | None = None) -> dict:
    """Requests, tokens, latency and endings over `window` (24h by hour, 30d by day) from the rollups.

    `token_ids` limits it to those tokens' usage (a caller who sees only their own); then
    the percentiles come from those tokens' rows, since the histograms are per model only.
    """
    span, step = WINDOWS[window]
    now = now or timezone.now()
    since = span_start(step, now - span + (timedelta(days=1) if step == RollupSpan.DAY else timedelta(hours=1)))
    rollups = UsageRollup.objects.filter(span=step, start__gte=since)
    if token_ids is not None:
        rollups = rollups.filter(token_id__in=list(token_ids))
    histograms = _histograms(step, since, token_ids)
    tokens_sum = Sum("prompt_tokens") + Sum("completion_tokens")
    by_model = rollups.values("start", "model_id").annotate(n_requests=Sum("requests"), tokens=tokens_sum)
    by_token = rollups.values("start", "token_id").annotate(n_requests=Sum("requests"), tokens=tokens_sum)
    failed = (
        rollups.exclude(status=UsageStatus.COMPLETED).values("start", "status").annotate(n_requests=Sum("requests"))
    )
    tokens = _per_token(rollups)
    names = {row["token_id"]: row["name"] for row in tokens}
    return {
        "window": window,
        "step": step,
        "since": since.isoformat(),
        "series": [
            {"t": r["start"].isoformat(), "model": r["model_id"], "requests": r["n_requests"], "tokens": r["tokens"]}
            for r in by_model.order_by("start", "model_id")
        ],
        "token_series": [
            {
                "t": r["start"].isoformat(),
                "token": names.get(r["token_id"], ""),
                "requests": r["n_requests"],
                "tokens": r["tokens"],
            }
            for r in by_token.order_by("start", "token_id")
        ],
        "ending_series": [
            {"t": r["start"].isoformat(), "status": r["status"], "requests": r["n_requests"]}
            for r in failed.order_by("start", "status")
        ],
        "latency_series": _latency_series(histograms),
        "models": _per_model(rollups, histograms),
        "tokens": tokens,
        "statuses": {r["status"]: r["n"] for r in rollups.values("status").annotate(n=Sum("requests")).order_by()},
    }


def _totals(queryset: QuerySet[UsageRollup], key: str) -> list[dict[str, Any]]:
    # Aliases differ from the field names: Django refuses an aggregate named like a field.
    rows = queryset.values(key).annotate(
        n_requests=Sum("requests"),
        n_prompt=Sum("prompt_tokens"),
        n_completion=Sum("completion_tokens"),
        n_errors=Sum("requests", filter=Q(status__in=ERROR_STATUSES)),
        n_decode_tokens=Sum("decode_tokens"),
        n_decode_ms=Sum("decode_ms_sum"),
    )
    return [
        {
            key: row[key],
            "requests": row["n_requests"],
            "prompt_tokens": row["n_prompt"],
            "completion_tokens": row["n_completion"],
            "errors": row["n_errors"] or 0,
            "tokens_per_s": round(row["n_decode_tokens"] * 1000 / row["n_decode_ms"], 1)
            if row["n_decode_ms"]
            else None,
        }
        for row in rows.order_by("-n_requests", key)
    ]


def _per_token(rollups: QuerySet[UsageRollup]) -> list[dict[str, Any]]:
    rows = _totals(rollups, "token_id")
    names = dict(APIToken.objects.filter(pk__in=[r["token_id"] for r in rows]).values_list("pk", "name"))
    for row in rows:
        row["name"] = names.get(row["token_id"], "(none)" if not row["token_id"] else f"deleted #{row['token_id']}")
    return rows


def _histograms(step: str, since: datetime, token_ids: Collection[int] | None) -> dict[tuple, Counter[int]]:
    """(model id, period start, metric) -> bucket counts: from the rollups, or from the rows of `token_ids`."""
    histograms: dict[tuple, Counter[int]] = defaultdict(Counter)
    if token_ids is None:
        buckets = LatencyRollup.objects.filter(span=step, start__gte=since)
        for row in buckets.values("model_id", "start", "metric", "bucket").annotate(n=Sum("count")).order_by():
            histograms[(row["model_id"], row["start"], row["metric"])][row["bucket"]] += row["n"]
        return histograms
    records = UsageRecord.objects.filter(created_at__gte=since, token_id__in=list(token_ids), rolled_up=True)
    fields = ("model_id", "created_at", "completion_tokens", "duration_ms", "time_to_first_token_ms")
    for model_id, created, completion, duration, ttft in records.values_list(*fields).iterator():
        start = span_start(step, created)
        for metric, bucket in latency_buckets(ttft, decode_rate(completion, duration, ttft)):
            histograms[(model_id or "", start, metric)][bucket] += 1
    return histograms


def _merged(histograms: dict[tuple, Counter[int]], keep: int) -> dict[tuple, Counter[int]]:
    """The histograms summed over all but element `keep` of their key (0: per model, 1: per period) and the metric."""
    merged: dict[tuple, Counter[int]] = defaultdict(Counter)
    for key, counts in histograms.items():
        merged[(key[keep], key[2])].update(counts)
    return merged


def _per_model(rollups: QuerySet[UsageRollup], histograms: dict[tuple, Counter[int]]) -> list[dict]:
    rows = _totals(rollups, "model_id")
    per_model = _merged(histograms, 0)
    for row in rows:
        row["ttft_ms"] = percentiles(per_model.get((row["model_id"], "ttft"), {}), "ttft")
        row["decode_tokens_per_s"] = percentiles(per_model.get((row["model_id"], "tps"), {}), "tps")
    return rows


def _latency_series(histograms: dict[tuple, Counter[int]]) -> list[dict]:
    per_period = _merged(histograms, 1)
    starts = sorted({start for start, _ in per_period})
    return [
        {"t": start.isoformat(), "ttft_ms": percentiles(per_period.get((start, "ttft"), {}), "ttft"),
         "decode_tokens_per_s": percentiles(per_period.get((start, "tps"), {}), "tps")}
        for start in starts
    ]  # fmt: skip
