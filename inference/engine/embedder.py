"""Embeddings on a context of their own, so that they never stop a model's generation.

The context shares the loaded model's weights (no second copy of the file) and is
counted in the pool's memory budget (`ModelSpec.estimated_mb`). It is created on the
first embedding request and runs on its own thread: a batch of 256 long inputs takes
its time there while the model's scheduler keeps decoding for the others (llama.cpp
allows one thread per context on a shared model). Inputs go one at a time, so a cancel
or an unload is seen between two of them.

Thread-safety: `submit` and `in_flight` from any thread; the rest on the worker's thread.
"""

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import llama_cpp
import numpy as np
from llama_cpp import _internals

from inference.engine.jobs import Job, JobHandle, Outcome
from inference.engine.llama_runner import LlamaRunner, PromptError, _threads, utf8
from inference.engine.scheduler import QueueFull, SchedulerDown

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _Embedding:
    job: Job
    handle: JobHandle
    inputs: list[list[int]]


class EmbeddingWorker:
    """One model's embedding requests, in order, on a context and a thread of their own."""

    def __init__(self, runner: LlamaRunner, *, max_queue: int) -> None:
        self.runner = runner
        self.max_queue = max_queue
        self.n_ctx = runner.spec.embedding_n_ctx
        self._inbox: queue.Queue[_Embedding | None] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.in_flight = 0
        self._ctx: _internals.LlamaContext | None = None
        self._batch: _internals.LlamaBatch | None = None

    def prepare(self, job: Job) -> list[list[int]]:
        """The tokens of each input; PromptError if one is too long (the request's worker thread)."""
        spec = self.runner.spec
        tokenize = self.runner.model.tokenize
        inputs = [
            self.runner.checked_ids(text, "input")
            if isinstance(text, list)
            else tokenize(utf8(text, "input"), add_bos=spec.add_bos, special=True)
            for text in job.inputs
        ]
        if job.truncate:
            return [tokens[: self.n_ctx] for tokens in inputs]
        for i, tokens in enumerate(inputs):
            if len(tokens) > self.n_ctx:
                raise PromptError(
                    f"input[{i}] is {len(tokens)} tokens; embeddings of {spec.model_id} take at most {self.n_ctx}.",
                    param="input",
                    code="context_length_exceeded",
                )
        return inputs

    def submit(
        self, job: Job, handle: JobHandle, inputs: list[list[int]], *, before_queue: Callable[[], None] | None = None
    ) -> None:
        """Queue an embedding job; QueueFull at the limit. `before_queue` admits it, as in the scheduler."""
        with self._lock:
            if self._stopping:
                raise SchedulerDown(f"{job.model_id} is being unloaded; retry shortly.")
            if self.in_flight >= self.max_queue:
                raise QueueFull(job.model_id, self.in_flight)
            self.in_flight += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"embed-{self.runner.spec.model_id}", daemon=True
                )
                self._thread.start()
        try:
            if before_queue is not None:
                before_queue()
        except BaseException:
            with self._lock:
                self.in_flight -= 1
            raise
        self._inbox.put(_Embedding(job, handle, inputs))

    def stop(self) -> None:
        """End the thread and free the context; queued jobs end as cancelled."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        if thread is not None:
            self._inbox.put(None)
            thread.join(timeout=30)
        if self._batch is not None:
            self._batch.close()
        if self._ctx is not None:
            self._ctx.close()

    def _run(self) -> None:
        while True:
            item = self._inbox.get()
            if item is None:
                break
            try:
                outcome = self._embed(item) if not self._stopping else None
            except PromptError as exc:
                outcome = Outcome("error", "error", error=str(exc), error_code=exc.code)
            except Exception as exc:  # this request's failure; the worker goes on
                logger.exception("embedding on %s failed", item.job.model_id)
                outcome = Outcome("error", "error", error=f"embedding failed: {exc}", error_code="engine_error")
            with self._lock:
                self.in_flight -= 1
            item.handle.push(outcome or Outcome("cancelled", "cancelled", error="the model was unloaded"))
        while True:  # unloading: whatever is still queued ends as cancelled
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                with self._lock:
                    self.in_flight -= 1
                item.handle.push(Outcome("cancelled", "cancelled", error="the model was unloaded"))

    def _context(self) -> _internals.LlamaContext:
        if self._ctx is None:
            kw = self.runner.spec.llama_kwargs
            params = llama_cpp.llama_context_default_params()
            params.n_ctx = params.n_batch = params.n_ubatch = self.n_ctx
            params.n_seq_max = 1
            params.embeddings = True
            params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_MEAN
            params.n_threads = params.n_threads_batch = _threads(kw["n_threads"])
            params.no_perf = True
            self._ctx = _internals.LlamaContext(model=self.runner.model, params=params, verbose=False)
            self._batch = _internals.LlamaBatch(n_tokens=self.n_ctx, embd=0, n_seq_max=1, verbose=False)
        return self._ctx

    def _embed(self, item: _Embedding) -> Outcome:
        """Mean-pooled, L2-normalized vectors of each input, one decode per input."""
        job, inputs, started = item.job, item.inputs, time.perf_counter()
        ctx = self._context()
        n_embd = self.runner.model.n_embd()
        vectors = []
        for tokens in inputs:
            if item.handle.cancelled.is_set() or self._stopping:
                return Outcome("cancelled", "cancelled", prompt_tokens=sum(len(t) for t in inputs))
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx.ctx), True)
            self._batch.reset()
            self._batch.add_sequence(tokens, 0, True)
            rc = llama_cpp.llama_decode(ctx.ctx, self._batch.batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
            pooled = llama_cpp.llama_get_embeddings_seq(ctx.ctx, 0)
            vector = np.ctypeslib.as_array(pooled, shape=(n_embd,)).astype(np.float64)
            norm = float(np.linalg.norm(vector))
            vectors.append((vector / norm if norm > 0 else vector).tolist())
        ended = time.perf_counter()
        return Outcome(
            status="completed",
            finish_reason="stop",
            prompt_tokens=sum(len(t) for t in inputs),
            embeddings=vectors,
            prompt_ms=(ended - started) * 1000,
            duration_ms=(ended - job.submitted_at_perf) * 1000,
        )
