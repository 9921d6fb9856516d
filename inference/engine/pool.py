"""The model pool: which models are loaded, within a count and a memory budget.

Loads happen on first use or on request; the least recently used idle model is evicted
to make room; a model idle past its keep-alive is unloaded by a reaper thread. All
methods are thread-safe and blocking: async callers run them with asyncio.to_thread.

Unloading a model that is serving is refused (ModelBusy, HTTP 409) rather than waited
for, so an operator's unload never hangs behind a long generation.
"""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from inference.engine.embedder import EmbeddingWorker
from inference.engine.llama_runner import LlamaRunner
from inference.engine.scheduler import BatchScheduler
from inference.engine.spec import ModelSpec

logger = logging.getLogger(__name__)


class PoolError(Exception):
    """Base of the pool's refusals; the message says what to do."""


class ModelBusy(PoolError):
    """The model has requests in flight (unload refused)."""


class NoRoom(PoolError):
    """Nothing idle can be evicted to fit the model in the count or memory budget."""


class ModelLoadFailed(PoolError):
    """llama.cpp could not load the model; it is retried after `retry_after_s` (a back-off)."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class LoadFailure:
    """The last failed load of a model: loads wait out a back-off that doubles with each failure."""

    count: int
    reason: str
    retry_at: float  # time.monotonic()


LOAD_BACKOFF_S = (5.0, 300.0)  # first and longest wait after a failed load


def _without_path(message: str, spec: ModelSpec) -> str:
    """llama.cpp names the file it failed on; clients see the model's id, never a server path."""
    return message.replace(spec.path, spec.model_id)


@dataclass
class LoadedModel:
    spec: ModelSpec
    runner: LlamaRunner
    worker: BatchScheduler
    load_ms: float
    estimated_mb: float
    leases: int = 0
    last_used: float = field(default_factory=time.monotonic)
    keep_alive_s: float | None = None  # None: never unloaded for idleness
    loaded_at: float = field(default_factory=time.time)

    embedder: EmbeddingWorker | None = None

    @property
    def in_flight(self) -> int:
        return self.worker.in_flight + (self.embedder.in_flight if self.embedder else 0)

    @property
    def expires_at(self) -> float | None:
        return None if self.keep_alive_s is None else self.last_used + self.keep_alive_s


@dataclass
class PoolStats:
    loads: int = 0
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    idle_unloads: int = 0
    load_failures: int = 0
    scheduler_restarts: int = 0
    load_ms: dict[str, float] = field(default_factory=dict)


class ModelPool:
    def __init__(
        self,
        *,
        max_loaded: int,
        budget_mb: float,
        default_keep_alive_s: float | None,
        max_queue: int,
        queue_timeout_s: float,
        prompt_cache_mb: float = 0,
        owner_share: float = 0.5,
        batch_age_s: float = 30.0,
        on_load_failed: Callable[[str, str, float], None] | None = None,
        on_loaded: Callable[[str], None] | None = None,
        reap_interval_s: float = 0.5,
    ) -> None:
        self.max_loaded = max_loaded
        self.budget_mb = budget_mb
        self.default_keep_alive_s = default_keep_alive_s
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self.prompt_cache_mb = prompt_cache_mb
        self.owner_share = owner_share
        self.batch_age_s = batch_age_s
        self.on_load_failed = on_load_failed
        self.on_loaded = on_loaded
        self.load_failures: dict[str, LoadFailure] = {}
        self.stats = PoolStats()
        self._lock = threading.Lock()
        self._models: dict[str, LoadedModel] = {}
        self._loading: dict[str, float] = {}  # model id -> MB reserved while it loads
        self._model_locks: dict[str, threading.Lock] = {}
        self._closed = threading.Event()
        self._reaper = threading.Thread(target=self._reap, args=(reap_interval_s,), name="pool-reaper", daemon=True)
        self._reaper.start()

    # -- reading -------------------------------------------------------------------
    def get(self, model_id: str) -> LoadedModel | None:
        with self._lock:
            return self._models.get(model_id)

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return sorted(self._models.values(), key=lambda m: m.last_used, reverse=True)

    def used_mb(self) -> float:
        with self._lock:
            return sum(m.estimated_mb for m in self._models.values()) + sum(self._loading.values())

    # -- leasing -------------------------------------------------------------------
    def acquire(self, spec: ModelSpec, *, keep_alive_s: float | None = -1.0, may_shorten: bool = True) -> LoadedModel:
        """Return the model loaded and leased to the caller, loading it if needed.

        `keep_alive_s`: seconds to stay loaded after the last request; None forever;
        -1.0 (the default) leaves the model's keep-alive as it is (the pool's default
        when it was just loaded). With `may_shorten` False (a caller without
        models:manage) the keep-alive only ever grows: the longer of the asked one and
        the model's current one wins. Pair every acquire with `release`.
        """
        with self._lock:
            lock = self._model_locks.setdefault(spec.model_id, threading.Lock())
        with lock:  # two simultaneous first requests: one loads, the other waits and reuses
            with self._lock:
                loaded = self._models.get(spec.model_id)
                if loaded is not None:
                    self.stats.hits += 1
                    return self._lease(loaded, keep_alive_s, may_shorten)
                self.stats.misses += 1
                failure = self.load_failures.get(spec.model_id)
                if failure is not None and failure.retry_at > time.monotonic():
                    wait = failure.retry_at - time.monotonic()
                    raise ModelLoadFailed(
                        f"{spec.model_id} failed to load {failure.count} time(s) ({failure.reason}); "
                        f"the next try is in {wait:.0f}s.",
                        retry_after_s=wait,
                    )
                victims = self._make_room(spec)
                self._loading[spec.model_id] = spec.estimated_mb()
            for victim in victims:
                self._shutdown(victim, reason="evicted (least recently used)")
            try:
                loaded = self._load(spec)
            finally:
                with self._lock:
                    self._loading.pop(spec.model_id, None)
            with self._lock:
                self._models[spec.model_id] = loaded
                return self._lease(loaded, keep_alive_s, may_shorten)

    def release(self, model_id: str) -> None:
        """End a lease; the keep-alive clock starts now."""
        with self._lock:
            loaded = self._models.get(model_id)
            if loaded is not None and loaded.leases > 0:
                loaded.leases -= 1
                loaded.last_used = time.monotonic()

    def _lease(self, loaded: LoadedModel, keep_alive_s: float | None, may_shorten: bool) -> LoadedModel:
        loaded.leases += 1
        loaded.last_used = time.monotonic()
        if keep_alive_s is not None and keep_alive_s < 0:
            return loaded  # unset: as it is
        current = loaded.keep_alive_s
        longer = current is not None and (keep_alive_s is None or keep_alive_s > current)
        if may_shorten or longer:
            loaded.keep_alive_s = keep_alive_s
        return loaded

    # -- loading and unloading -------------------------------------------------------
    def _make_room(self, spec: ModelSpec) -> list[LoadedModel]:
        """Pick idle models to evict (LRU first) so `spec` fits; caller holds the lock."""
        need = spec.estimated_mb()
        if need > self.budget_mb:
            raise NoRoom(
                f"{spec.model_id} needs about {need:.0f} MB (weights + KV cache for n_ctx={spec.n_ctx}) but "
                f"MODEL_MEMORY_BUDGET_MB is {self.budget_mb:.0f}; lower n_ctx or raise the budget."
            )
        count = len(self._models) + len(self._loading)
        used = sum(m.estimated_mb for m in self._models.values()) + sum(self._loading.values())
        victims: list[LoadedModel] = []
        for candidate in sorted(self._models.values(), key=lambda m: m.last_used):
            if count < self.max_loaded and used + need <= self.budget_mb:
                break
            if candidate.leases or candidate.in_flight:
                continue
            victims.append(candidate)
            count -= 1
            used -= candidate.estimated_mb
        if count >= self.max_loaded or used + need > self.budget_mb:
            raise NoRoom(
                f"Cannot load {spec.model_id}: every loaded model is serving requests "
                f"({len(self._models)} loaded, {used:.0f} of {self.budget_mb:.0f} MB); retry shortly."
            )
        for victim in victims:
            del self._models[victim.spec.model_id]
            self.stats.evictions += 1
        return victims

    def _load(self, spec: ModelSpec) -> LoadedModel:
        started = time.perf_counter()
        try:
            runner = LlamaRunner(spec)
        except Exception as exc:
            raise self._load_failed(spec, exc) from exc
        with self._lock:
            self.load_failures.pop(spec.model_id, None)
        if self.on_loaded:
            self.on_loaded(spec.model_id)
        load_ms = (time.perf_counter() - started) * 1000
        self.stats.loads += 1
        self.stats.load_ms[spec.model_id] = round(load_ms, 1)
        logger.info("loaded %s in %.0f ms", spec.model_id, load_ms)
        loaded = LoadedModel(spec, runner, None, load_ms, spec.estimated_mb(), keep_alive_s=self.default_keep_alive_s)  # type: ignore[arg-type]
        loaded.worker = self._new_scheduler(loaded)
        loaded.embedder = EmbeddingWorker(runner, max_queue=self.max_queue)
        return loaded

    def _load_failed(self, spec: ModelSpec, exc: Exception) -> ModelLoadFailed:
        """Record a failed load and its back-off. Not `invalid`: the probe judges files, a load may be transient."""
        reason = _without_path(f"llama.cpp failed to load it: {exc}", spec)
        with self._lock:
            self.stats.load_failures += 1
            previous = self.load_failures.get(spec.model_id)
            count = previous.count + 1 if previous else 1
            wait = min(LOAD_BACKOFF_S[0] * 2 ** (count - 1), LOAD_BACKOFF_S[1])
            self.load_failures[spec.model_id] = LoadFailure(count, reason, time.monotonic() + wait)
        logger.error("loading %s failed (%d in a row; next try in %.0fs): %s", spec.model_id, count, wait, reason)
        if self.on_load_failed:
            self.on_load_failed(spec.model_id, reason, wait)
        return ModelLoadFailed(f"{spec.model_id} could not be loaded: {reason}; retry in {wait:.0f}s.",
                               retry_after_s=wait)  # fmt: skip

    def _new_scheduler(self, loaded: LoadedModel) -> BatchScheduler:
        return BatchScheduler(
            loaded.runner, max_queue=self.max_queue, queue_timeout_s=self.queue_timeout_s,
            prompt_cache_mb=self.prompt_cache_mb, owner_share=self.owner_share, batch_age_s=self.batch_age_s,
            on_failure=lambda failed: self._replace_scheduler(loaded, failed),
        )  # fmt: skip

    def _replace_scheduler(self, loaded: LoadedModel, failed: BatchScheduler) -> None:
        """Put a fresh scheduler in place of one that failed (its requests already ended with 503)."""
        with self._lock:
            if loaded.worker is not failed or self._models.get(loaded.spec.model_id) is not loaded:
                return  # already replaced, or the model is gone
            try:
                loaded.worker = self._new_scheduler(loaded)
            except Exception:
                logger.exception("could not restart the scheduler of %s; unloading it", loaded.spec.model_id)
                del self._models[loaded.spec.model_id]
                return
            self.stats.scheduler_restarts += 1
        logger.warning("the scheduler of %s was restarted", loaded.spec.model_id)

    def unload(self, model_id: str) -> bool:
        """Unload a model now; False if it was not loaded; ModelBusy if it is serving."""
        with self._lock:
            loaded = self._models.get(model_id)
            if loaded is None:
                return False
            if loaded.leases or loaded.in_flight:
                raise ModelBusy(
                    f"{model_id} is serving {max(loaded.leases, loaded.in_flight)} request(s); retry when they finish."
                )
            del self._models[model_id]
        self._shutdown(loaded, reason="unloaded on request")
        return True

    def _shutdown(self, loaded: LoadedModel, *, reason: str) -> None:
        loaded.worker.stop()
        if loaded.embedder is not None:
            loaded.embedder.stop()
        loaded.runner.close()
        logger.info("%s: %s", loaded.spec.model_id, reason)

    def _reap(self, interval_s: float) -> None:
        while not self._closed.wait(interval_s):
            now = time.monotonic()
            for m in self.loaded():  # the supervisor's backstop: a scheduler thread gone without a word
                worker = m.worker
                if not worker.alive and not worker._stopping:
                    if worker.failed is None:  # died without ending its requests: end them now
                        worker.abandon("the model's scheduler stopped; retry")
                    self._replace_scheduler(m, worker)
            with self._lock:
                expired = [
                    m
                    for m in self._models.values()
                    if not m.leases and not m.in_flight and m.expires_at is not None and m.expires_at <= now
                ]
                for m in expired:
                    del self._models[m.spec.model_id]
                    self.stats.idle_unloads += 1
            for m in expired:
                self._shutdown(m, reason=f"idle for {m.keep_alive_s:.0f}s, unloaded")

    def close(self) -> None:
        """Unload everything and stop the reaper (tests, shutdown)."""
        self._closed.set()
        with self._lock:
            models, self._models = list(self._models.values()), {}
        for m in models:
            self._shutdown(m, reason="pool closed")
