"""What bench/concurrency.py reports: each side's requests pooled into metrics, the ratios, the tables.

Tokens are the usage each server reported. `prompt_tokens_computed` is the prompt tokens a server had to
compute (its reported prompt tokens less the cached ones it says it reused): the work its prompt caches
saved, counted rather than timed, so it does not drift with the machine as tokens/s does.
"""

import statistics

SIDES = ("ours", "theirs")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def summarize(levels: list[dict], tokens: int, allow_eos: bool) -> dict:
    """Pool the rounds of one side at one level into the reported metrics."""
    runs = [r for level in levels for r in level["runs"]]
    ok = [r for r in runs if "error" not in r]
    total = sum(r["tokens"] for r in ok)
    wall = sum(level["wall_s"] for level in levels)
    ttft = [r["ttft_ms"] for r in ok]
    return {
        "requests": len(runs),
        "completion_tokens": total,
        "prompt_tokens_mean": rounded(statistics.mean(r["prompt_tokens"] for r in ok) if ok else None),
        "prompt_tokens_computed": prompt_tokens_computed(runs),
        "wall_s": round(wall, 2),
        "aggregate_tps": round(total / wall, 1) if wall else None,
        "per_stream_tps": rounded(statistics.mean(r["decode_tps"] for r in ok) if ok else None),
        "ttft_ms_p50": rounded(percentile(ttft, 0.5)),
        "ttft_ms_p95": rounded(percentile(ttft, 0.95)),
        "errors": len(runs) - len(ok),
        "truncated": 0 if allow_eos else sum(r["tokens"] < tokens for r in ok),
        "error_samples": sorted({r["error"] for r in runs if "error" in r})[:3],
    }


def prompt_tokens_computed(runs: list[dict]) -> int | None:
    """Prompt tokens less the cached ones the server reported, over `runs`; None where the count would not be whole.

    A failed request (a karen conversation stops at its first) or one whose usage did not say how many
    tokens were cached would make a side look as if it computed less, or more, than it did.
    """
    if any("error" in r or r.get("cached_tokens") is None for r in runs):
        return None
    return sum(r["prompt_tokens"] - r["cached_tokens"] for r in runs)


def count_differences(ours: list[dict], theirs: list[dict]) -> dict:
    """Pairs of requests (same key) whose prompt or completion token counts differ between the servers."""
    mine = {r["key"]: r for level in ours for r in level["runs"] if "error" not in r}
    other = {r["key"]: r for level in theirs for r in level["runs"] if "error" not in r}
    pairs = [(mine[k], other[k]) for k in mine.keys() & other.keys()]
    return {
        "pairs": len(pairs),
        "prompt_tokens_differ": sum(a["prompt_tokens"] != b["prompt_tokens"] for a, b in pairs),
        "completion_tokens_differ": sum(a["tokens"] != b["tokens"] for a, b in pairs),
    }


def level_tps(level: dict) -> float:
    """Aggregate tokens/s of one side in one round of one level."""
    return sum(r.get("tokens", 0) for r in level["runs"]) / level["wall_s"] if level["wall_s"] else 0.0


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def long_summary(levels: list[dict]) -> dict:
    """The long workload's own figures, the median over rounds."""
    done = [level for level in levels if "long_ttft_ms" in level]
    if not done:
        return {}

    def median(key: str) -> float | None:
        values = [level[key] for level in done if level.get(key) is not None]
        return statistics.median(values) if values else None

    return {"long_ttft_ms": rounded(median("long_ttft_ms")), "long_prompt_tokens": median("long_prompt_tokens"),
            "streams_tps_before": rounded(median("streams_tps_before")),
            "streams_tps_during": rounded(median("streams_tps_during")),
            "streams_kept": rounded(median("streams_kept"), 3),
            "streams_outlasting": min(level["streams_outlasting"] for level in done)}  # fmt: skip


def print_table(result: dict) -> None:
    name = result["workload"]
    print(f"\n{name} (context {result['ctx_per_slot']} per slot); RSS loaded ours / theirs: "
          f"{result['rss']['ours'].get('loaded_mb')} / {result['rss']['theirs'].get('loaded_mb')} MB")  # fmt: skip
    columns = [("agg tok/s", "aggregate_tps"), ("stream tok/s", "per_stream_tps"), ("TTFT p50 ms", "ttft_ms_p50"),
               ("TTFT p95 ms", "ttft_ms_p95"), ("prompt computed", "prompt_tokens_computed"), ("errors", "errors"),
               ("truncated", "truncated")]  # fmt: skip
    if name == "long":
        columns = [("long TTFT ms", "long_ttft_ms"), ("streams before", "streams_tps_before"),
                   ("streams during", "streams_tps_during"), ("kept", "streams_kept"),
                   ("outlasting", "streams_outlasting"), ("errors", "errors")]  # fmt: skip
    level = "convs" if name == "karen" else "streams" if name == "long" else "clients"
    print(f"{level:>7}  {'ratio':>6}  {'ttft':>6}" + "".join(f"  {t:>17}" for t, _ in columns) + "  counts differ")
    print(f"{'':>7}  {'agg':>6}  {'x':>6}" + "".join(f"  {'ours / theirs':>17}" for _ in columns) + "  prompt/compl")
    for row in result["levels"]:
        cells = [f"{row['ours'].get(key)} / {row['theirs'].get(key)}".replace("None", "-") for _, key in columns]
        differ = row["counts"]
        counts = f"{differ['prompt_tokens_differ']}/{differ['completion_tokens_differ']} of {differ['pairs']}"
        ratios = f"{row['ratio_aggregate_tps']!s:>6}  {row['ratio_ttft_p50']!s:>6}"
        print(f"{row['level']:>7}  {ratios}" + "".join(f"  {c:>17}" for c in cells) + f"  {counts}")
    if any(len(row["ratio_by_round"]) > 1 for row in result["levels"]) and name != "long":
        by_round = (f"{r['level']}: {', '.join(map(str, r['ratio_by_round']))}" for r in result["levels"])
        print("aggregate ratio by round: " + "; ".join(by_round))
        computed = []
        for row in result["levels"]:
            ours, theirs = (" ".join(map(str, row["prompt_tokens_computed_by_round"][side])) for side in SIDES)
            computed.append(f"{row['level']}: {ours} / {theirs}")
        print("prompt tokens computed by round, ours / theirs: " + "; ".join(computed))
    for row in result["levels"]:
        for side in SIDES:
            for sample in row[side]["error_samples"]:
                print(f"{row['level']}, {side} error: {sample}")
