"""The pieces both stores share: OpenAI's duration format and the header set."""

import pytest

from inference.limits.budget import Decision, Limits, format_duration


@pytest.mark.parametrize(
    ("ms", "text"),
    [(0, "0ms"), (20, "20ms"), (999.2, "1s"), (1000, "1s"), (1500, "1.5s"), (59_413, "59.413s"),
     (60_000, "1m0s"), (360_000, "6m0s"), (3_723_456, "1h2m3.456s")],
)  # fmt: skip
def test_durations_read_as_openais_reset_headers(ms, text):
    assert format_duration(ms) == text


def test_refusal_retry_after_is_whole_seconds_and_at_least_one():
    decision = Decision(Limits(concurrent=1), ("concurrency",), 0, 0, 1, 1, retry_after_ms=20)
    assert decision.retry_after_s == 1
    assert Decision(Limits(requests_per_minute=1), ("requests",), 1, 0, 0, 1, 1001).retry_after_s == 2


def test_headers_carry_remaining_after_this_request():
    decision = Decision(Limits(requests_per_minute=3, tokens_per_minute=100), (), 2, 40, 0, 25, reset_ms=59_000)
    assert decision.headers() == {
        "x-ratelimit-limit-requests": "3", "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "59s",
        "x-ratelimit-limit-tokens": "100", "x-ratelimit-remaining-tokens": "60", "x-ratelimit-reset-tokens": "59s",
    }  # fmt: skip
