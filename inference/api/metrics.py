"""GET /metrics: the engine, pool, scheduler and request counters in Prometheus' text format.

Everything is read at scrape time from the same places as /performance (the engine's
`status()` and the request counters), so there is one set of numbers and nothing to keep
in step. In scale-out mode the loaded models are the inference nodes' last heartbeat
reports, labelled with the node's name as well as the model's.
A model's counters start again from zero when it is loaded again; `rate()` handles that.
"""

from collections.abc import Callable, Collection, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client import generate_latest as _generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily

from inference.engine import get_engine
from inference.metering import counters
from inference.readiness import Check, readiness

PREFIX = "karenhost"
_MB = 2**20

# Scheduler counters: (stats key, metric name, help). Each is a per-model counter.
_SCHEDULER_COUNTERS = [
    ("steps", "decode_steps", "llama_decode calls, one per batched step."),
    ("batched_tokens", "batched_tokens", "Tokens put through llama_decode (prompt chunks and generated)."),
    ("prefix_hits", "prefix_cache_hits", "Requests that reused a KV prefix instead of computing it."),
    ("prefix_tokens_reused", "prefix_cache_tokens_reused", "Prompt tokens whose KV was reused."),
    (
        "prefix_waits",
        "prefix_waits",
        "Requests that waited a step for a prompt being filled, to copy their shared prefix.",
    ),
    ("slot_copies", "slot_copies", "KV prefixes copied from another free slot into the admitting one."),
    ("prompt_cache_stored", "prompt_cache_stored", "Slot sequences saved to the host-memory prompt cache."),
    ("prompt_cache_hits", "prompt_cache_hits", "Requests whose prefix was restored from the prompt cache."),
    ("prompt_cache_tokens_restored", "prompt_cache_tokens_restored", "Tokens restored from the prompt cache."),
    ("queue_timeouts", "queue_timeouts", "Requests that waited past queue_timeout and got 503."),
    ("request_failures", "request_failures", "Requests ended by a failure in their own step (others went on)."),
    ("long_prefill_chunks", "long_prefill_chunks", "Chunks of long prompts filled while other requests decoded."),
    ("long_prefill_s", "long_prefill_seconds", "Decode time of the steps that carried those chunks."),
    (
        "decode_s_while_long_waits",
        "decode_seconds_while_long_prompt_waits",
        "Decode time the other requests had to themselves while a long prompt waited for its next chunk.",
    ),
]
# Per-model gauges: (metric name, help, value from a `loaded` entry of the engine status).
_MODEL_GAUGES: list[tuple[str, str, Callable[[dict[str, Any]], float]]] = [
    ("slots", "Parallel slots (n_parallel) of a loaded model.", lambda m: m["slots"]),
    ("requests_running", "Requests holding a slot now.", lambda m: m["busy_slots"]),
    ("requests_waiting", "Requests in the model's wait queue now.", lambda m: m["queued"]),
    ("requests_waiting_interactive", "Interactive-lane requests in the model's wait queue now.",
     lambda m: m.get("queued_by_lane", {}).get("interactive", 0)),
    ("requests_waiting_batch", "Batch-lane requests in the model's wait queue now.",
     lambda m: m.get("queued_by_lane", {}).get("batch", 0)),
    ("scheduler_alive", "1 while the model's scheduler thread runs; 0 between a failure and its restart.",
     lambda m: 1 if m.get("scheduler_alive", True) else 0),
    ("model_memory_estimated_bytes", "A loaded model's estimated memory.", lambda m: m["estimated_mb"] * _MB),
    ("prompt_cache_bytes", "Bytes held by a model's host-memory prompt cache.",
     lambda m: m.get("scheduler", {}).get("prompt_cache_bytes", 0)),
    ("prompt_cache_entries", "Sequences held by a model's prompt cache.",
     lambda m: m.get("scheduler", {}).get("prompt_cache_entries", 0)),
]  # fmt: skip
_POOL_COUNTERS = ["loads", "hits", "misses", "evictions", "idle_unloads", "load_failures", "scheduler_restarts"]


def _name(name: str) -> str:
    return f"{PREFIX}_{name}"


class EngineCollector:
    """A Prometheus collector over the engine's and the request counters' snapshots."""

    def __init__(self, only: Collection[str] = ()) -> None:
        self.only = frozenset(only)  # a token limited to some models sees only their series

    def collect(self) -> Iterator[Metric]:
        yield from self._requests(counters.snapshot())
        yield from self._readiness(readiness())
        status = get_engine().status()
        if self.only:
            status = {**status, "loaded": [m for m in status["loaded"] if m["id"] in self.only]}
        yield from self._engine(status)

    @staticmethod
    def _requests(snapshot: dict[str, Any]) -> Iterator[Metric]:
        finished = CounterMetricFamily(
            _name("requests"), "Admitted requests by endpoint and how they ended.", labels=["endpoint", "status"]
        )
        for key, n in snapshot["finished"].items():
            finished.add_metric(key.rsplit(":", 1), n)
        yield finished
        rejected = CounterMetricFamily(
            _name("requests_rejected"),
            "Requests answered with an error before admission (not billed), by URL pattern and HTTP status.",
            labels=["route", "code"],
        )
        for key, n in snapshot["rejected"].items():
            rejected.add_metric(key.rsplit(":", 1), n)
        yield rejected
        limited = CounterMetricFamily(
            _name("requests_limited"),
            "Requests refused (429) by a token's limit: requests, tokens (per minute) or concurrency.",
            labels=["limit"],
        )
        for limit, n in snapshot.get("limited", {}).items():
            limited.add_metric([limit], n)
        yield limited
        yield CounterMetricFamily(
            _name("prompt_tokens"), "Prompt tokens of finished requests.", value=snapshot["prompt_tokens"]
        )
        yield CounterMetricFamily(
            _name("completion_tokens"), "Generated tokens of finished requests.", value=snapshot["completion_tokens"]
        )

    @staticmethod
    def _readiness(checks: list[Check]) -> Iterator[Metric]:
        yield GaugeMetricFamily(_name("ready"), "1 when every readiness check passes (/health/ready).",
                                value=int(all(c.ok for c in checks)))  # fmt: skip
        state = GaugeMetricFamily(_name("ready_check"), "1 when this readiness check passes.", labels=["check"])
        changed = GaugeMetricFamily(
            _name("ready_check_changed_timestamp_seconds"), "When the check last changed state.", labels=["check"]
        )
        for check in checks:
            state.add_metric([check.name], int(check.ok))
            changed.add_metric([check.name], check.since.timestamp())
        yield state
        yield changed

    @staticmethod
    def _engine(status: dict[str, Any]) -> Iterator[Metric]:
        remote = status["stats"].get("mode") == "remote"
        labels = ["model", "node"] if remote else ["model"]
        gauges = [(GaugeMetricFamily(_name(name), text, labels=labels), value) for name, text, value in _MODEL_GAUGES]
        queue_wait = SummaryMetricFamily(
            _name("queue_wait_seconds"), "Time in the model's wait queue until a slot took the request.", labels=labels
        )
        scheduler = {
            key: CounterMetricFamily(_name(name), text, labels=labels) for key, name, text in _SCHEDULER_COUNTERS
        }
        for model in status["loaded"]:
            values = [model["id"], model["node"]] if remote else [model["id"]]
            for family, value in gauges:
                family.add_metric(values, value(model))
            stats = model.get("scheduler", {})
            queue_wait.add_metric(
                values, count_value=stats.get("queue_admitted", 0), sum_value=stats.get("queue_wait_ms_total", 0) / 1000
            )
            for key, family in scheduler.items():
                family.add_metric(values, stats.get(key, 0))
        yield GaugeMetricFamily(_name("models_loaded"), "Models loaded now.", value=len(status["loaded"]))
        yield from (family for family, _ in gauges)
        yield queue_wait
        yield from scheduler.values()
        yield GaugeMetricFamily(
            _name("memory_budget_bytes"), "The pool's memory budget for models.", value=status["memory_budget_mb"] * _MB
        )
        yield GaugeMetricFamily(
            _name("memory_used_bytes"), "Estimated memory of the loaded models.", value=status["memory_used_mb"] * _MB
        )
        pool = status["stats"]
        for key in _POOL_COUNTERS:
            if key in pool:  # local mode; a web node in scale-out mode has no pool of its own
                yield CounterMetricFamily(_name(f"pool_{key}"), f"Model pool {key.replace('_', ' ')}.", value=pool[key])


def _registry_for(only: Collection[str]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(only))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


_registry = _registry_for(())


def render(*, only: Collection[str] = ()) -> tuple[bytes, str]:
    """The exposition text and its content type; `only`: just these models' series (empty: all)."""
    registry = _registry_for(only) if only else _registry
    return _generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4  # what every Prometheus reads
