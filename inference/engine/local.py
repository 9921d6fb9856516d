"""The in-process engine: the model pool and its workers, behind submit / events / cancel."""

import asyncio
import time
from collections.abc import Callable
from typing import Any

import llama_cpp

from inference.engine.jobs import Job, JobHandle, Outcome, RequestBounds
from inference.engine.pool import ModelPool
from inference.engine.spec import ModelSpec


class LocalEngine:
    """Runs jobs on this machine. Views only see `submit`, `load`, `unload` and `status`."""

    # choices of one request run in this process's slots: a later one can copy an earlier one's prompt
    shares_slots = True

    def __init__(self, pool: ModelPool, bounds: RequestBounds | None = None) -> None:
        self.pool = pool
        self.bounds = bounds or RequestBounds()

    async def submit(
        self,
        spec: ModelSpec,
        job: Job,
        *,
        on_admit: Callable[[], None] | None = None,
        on_outcome: Callable[[Outcome], None] | None = None,
    ) -> JobHandle:
        """Load if needed, check the prompt, admit, and queue `job`; return its handle.

        Raises PromptError, QueueFull or a PoolError before admission: such a request
        is refused, never billed. `on_admit` runs (on a worker thread) right before the
        job is queued, so the usage row exists before the engine sees the job;
        `on_outcome` runs exactly once when the job ends, on the thread that ends it.
        """
        handle = JobHandle(job)
        if on_outcome is not None:
            handle.on_outcome(on_outcome)
        # One hop to a worker thread for all the blocking steps: each hop costs a GIL
        # hand-over, and under load those add up to milliseconds of time to first token.
        try:
            await asyncio.to_thread(self.enqueue, spec, job, handle, on_admit)
        except asyncio.CancelledError:  # the caller left: a job queued anyway ends at once
            handle.cancel()
            raise
        return handle

    def enqueue(self, spec: ModelSpec, job: Job, handle: JobHandle, on_admit: Callable[[], None] | None = None) -> int:
        """Acquire the model, prepare the job, admit and queue it; return its prompt tokens.

        The one submit path of this machine, for `submit` and for an inference node alike.
        Blocking: runs on a worker thread, never the event loop nor the model's decode thread.
        Preparing (template, tokens, logit_bias ids, schema -> grammar, the sampler) raises
        PromptError for what the request got wrong; the pool is released on any failure.
        """
        acquiring = time.perf_counter()
        loaded = self.pool.acquire(spec, keep_alive_s=job.keep_alive_s, may_shorten=job.keep_alive_may_shorten)
        job.load_ms = (time.perf_counter() - acquiring) * 1000  # a load, or the wait for one (traced)
        try:
            handle.on_outcome(lambda _outcome: self.pool.release(spec.model_id))
            if job.kind == "embedding":
                inputs = loaded.embedder.prepare(job)
                loaded.embedder.submit(job, handle, inputs, before_queue=on_admit)
                return sum(len(tokens) for tokens in inputs)
            prepared = loaded.runner.prepare(job, self.bounds)
            loaded.worker.submit(job, handle, prepared, before_queue=on_admit)
            return len(prepared.tokens)
        except BaseException:
            self.pool.release(spec.model_id)
            raise

    async def load(
        self, spec: ModelSpec, *, keep_alive_s: float | None = -1.0, may_shorten: bool = True
    ) -> dict[str, Any]:
        loaded = await asyncio.to_thread(self.pool.acquire, spec, keep_alive_s=keep_alive_s, may_shorten=may_shorten)
        self.pool.release(spec.model_id)
        return {"model_id": spec.model_id, "load_ms": round(loaded.load_ms, 1)}

    async def unload(self, model_id: str) -> bool:
        return await asyncio.to_thread(self.pool.unload, model_id)

    def live(self) -> dict[str, Any]:
        """Per loaded model: who holds each slot, who waits, the prompt cache (for the admin's live view)."""
        return {m.spec.model_id: m.worker.live() for m in self.pool.loaded()}

    def status(self) -> dict[str, Any]:
        """What is loaded now, the pool's counters and budget (cheap; no llama.cpp calls)."""
        pool = self.pool
        now = time.monotonic()
        gpu_offload = bool(llama_cpp.llama_supports_gpu_offload())
        return {
            "loaded": [
                {
                    "id": m.spec.model_id,
                    "n_ctx": m.spec.n_ctx,
                    "estimated_mb": round(m.estimated_mb, 1),
                    "load_ms": round(m.load_ms, 1),
                    "in_flight": m.in_flight,
                    "queued": m.worker.waiting,
                    "queued_by_lane": dict(m.worker.waiting_by_lane),
                    "scheduler_alive": m.worker.alive,
                    "slots": m.runner.n_parallel,
                    "busy_slots": m.worker.running,
                    "scheduler": dict(m.worker.stats),
                    "keep_alive_s": m.keep_alive_s,
                    # None: loaded for good; else seconds until an idle unload, were it idle from now on
                    "expires_in_s": None if m.expires_at is None else round(max(0.0, m.expires_at - now), 1),
                    "n_gpu_layers": m.spec.llama_kwargs["n_gpu_layers"] if gpu_offload else 0,
                }
                for m in pool.loaded()
            ],
            "max_loaded_models": pool.max_loaded,
            "memory_budget_mb": pool.budget_mb,
            "memory_used_mb": round(pool.used_mb(), 1),
            "stats": vars(pool.stats),
            "load_failures": {
                model_id: {"count": f.count, "reason": f.reason, "retry_in_s": round(max(0.0, f.retry_at - now), 1)}
                for model_id, f in list(pool.load_failures.items())
            },
        }
