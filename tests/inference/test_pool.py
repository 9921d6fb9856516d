"""The model pool with the real model: load once, evict by count and budget, unload when idle."""

import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from inference.engine.pool import ModelBusy, ModelLoadFailed, ModelPool, NoRoom
from inference.engine.spec import ModelSpec


@pytest.fixture
def spec(small_model) -> ModelSpec:
    return ModelSpec.from_model(small_model)


def named(spec: ModelSpec, model_id: str) -> ModelSpec:
    return replace(spec, model_id=model_id)


@pytest.fixture
def make_pool():
    pools = []

    def build(**overrides) -> ModelPool:
        options = {"max_loaded": 2, "budget_mb": 10_000, "default_keep_alive_s": 300, "max_queue": 4,
                   "queue_timeout_s": 30, "reap_interval_s": 0.05, **overrides}  # fmt: skip
        pool = ModelPool(**options)
        pools.append(pool)
        return pool

    yield build
    for pool in pools:
        pool.close()


def test_two_simultaneous_first_acquires_load_once(make_pool, spec):
    pool = make_pool()
    results = []
    threads = [threading.Thread(target=lambda: results.append(pool.acquire(spec))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] is results[1]
    assert pool.stats.loads == 1


def test_count_limit_evicts_the_least_recently_used_idle_model(make_pool, spec):
    pool = make_pool(max_loaded=2)
    for name in ("a", "b"):
        pool.acquire(named(spec, name))
        pool.release(name)
    pool.acquire(named(spec, "a"))  # a is now the most recently used
    pool.release("a")
    pool.acquire(named(spec, "c"))
    assert {m.spec.model_id for m in pool.loaded()} == {"a", "c"}
    assert pool.stats.evictions == 1


def test_memory_budget_evicts_to_fit(make_pool, spec):
    one = spec.estimated_mb()
    pool = make_pool(max_loaded=5, budget_mb=one * 1.5)
    pool.acquire(named(spec, "a"))
    pool.release("a")
    pool.acquire(named(spec, "b"))
    assert [m.spec.model_id for m in pool.loaded()] == ["b"]


def test_busy_models_are_not_evicted(make_pool, spec):
    pool = make_pool(max_loaded=1)
    pool.acquire(named(spec, "a"))  # leased, never released
    with pytest.raises(NoRoom, match="serving"):
        pool.acquire(named(spec, "b"))


def test_model_bigger_than_the_budget_is_refused_with_numbers(make_pool, spec):
    pool = make_pool(budget_mb=10)
    with pytest.raises(NoRoom, match="MODEL_MEMORY_BUDGET_MB"):
        pool.acquire(spec)


def test_idle_model_is_unloaded_after_its_keep_alive(make_pool, spec):
    pool = make_pool()
    pool.acquire(spec, keep_alive_s=0.2)
    pool.release(spec.model_id)
    deadline = time.time() + 5
    while pool.loaded() and time.time() < deadline:
        time.sleep(0.05)
    assert not pool.loaded() and pool.stats.idle_unloads == 1


def test_keep_alive_none_keeps_the_model(make_pool, spec):
    pool = make_pool(default_keep_alive_s=0.1)
    pool.acquire(spec, keep_alive_s=None)
    pool.release(spec.model_id)
    time.sleep(0.4)
    assert pool.loaded()


def test_unload_refuses_a_serving_model_and_is_idempotent(make_pool, spec):
    pool = make_pool()
    pool.acquire(spec)
    with pytest.raises(ModelBusy):
        pool.unload(spec.model_id)
    pool.release(spec.model_id)
    assert pool.unload(spec.model_id) is True
    assert pool.unload(spec.model_id) is False


def test_failed_load_reports_and_leaves_others_loaded(make_pool, spec, tmp_path):
    failures = []
    pool = make_pool(on_load_failed=lambda model_id, reason, retry_in_s: failures.append(model_id))
    pool.acquire(spec)
    pool.release(spec.model_id)
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 1000)
    with pytest.raises(ModelLoadFailed):
        pool.acquire(replace(spec, model_id="broken", path=str(broken)))
    assert failures == ["broken"]
    assert [m.spec.model_id for m in pool.loaded()] == [spec.model_id]


def test_a_failed_load_waits_out_its_back_off_and_never_names_the_file(make_pool, spec, tmp_path):
    broken = tmp_path / "secret-dir" / "broken.gguf"
    broken.parent.mkdir()
    broken.write_bytes(b"GGUF" + b"\0" * 1000)
    broken_spec = replace(spec, model_id="broken", path=str(broken))
    pool = make_pool()
    with pytest.raises(ModelLoadFailed) as first:
        pool.acquire(broken_spec)
    assert "secret-dir" not in str(first.value) and first.value.retry_after_s == 5.0
    with pytest.raises(ModelLoadFailed, match="next try") as second:  # within the back-off: not tried again
        pool.acquire(broken_spec)
    assert pool.stats.load_failures == 1 and 0 < second.value.retry_after_s <= 5.0
    pool.load_failures["broken"].retry_at = 0  # the back-off is over
    with pytest.raises(ModelLoadFailed):
        pool.acquire(broken_spec)
    assert pool.stats.load_failures == 2 and pool.load_failures["broken"].count == 2
    broken.write_bytes(Path(spec.path).read_bytes())  # the cause went away: the next try loads it
    pool.load_failures["broken"].retry_at = 0
    pool.acquire(broken_spec)
    pool.release("broken")
    assert "broken" not in pool.load_failures
