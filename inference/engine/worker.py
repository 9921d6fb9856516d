"""A model's worker thread: the only thread that runs llama.cpp for that model.

Jobs wait in a bounded queue; a full queue refuses at once (the caller answers 429),
and a job that waited past `queue_timeout_s` ends as `timeout` without running.
"""

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.db import close_old_connections

from inference.engine.jobs import Job, JobHandle, Outcome
from inference.engine.llama_runner import LlamaRunner, PromptError

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """The model's wait queue is at its limit."""

    def __init__(self, model_id: str, depth: int) -> None:
        super().__init__(f"{model_id} has {depth} requests waiting, its limit; retry shortly.")
        self.depth = depth


@dataclass
class _Item:
    job: Job
    handle: JobHandle
    tokens: list[int]


class ModelWorker:
    """Runs one model's jobs in order on a dedicated thread."""

    def __init__(self, runner: LlamaRunner, *, max_queue: int, queue_timeout_s: float) -> None:
        self.runner = runner
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._lock = threading.Lock()
        self.waiting = 0
        self.running = 0
        self._thread = threading.Thread(target=self._run, name=f"llama-{runner.spec.model_id}", daemon=True)
        self._thread.start()

    @property
    def in_flight(self) -> int:
        return self.waiting + self.running

    def submit(
        self, job: Job, handle: JobHandle, tokens: list[int], *, before_queue: Callable[[], None] | None = None
    ) -> None:
        """Queue a job; raise QueueFull at the limit. Thread-safe; blocks only in `before_queue`.

        `before_queue` runs once a place in the queue is held and before the job is in
        it (admission): a full queue never admits, and a failed admission frees the place.
        """
        with self._lock:
            if self.waiting >= self.max_queue:
                raise QueueFull(job.model_id, self.waiting)
            self.waiting += 1
        try:
            if before_queue is not None:
                before_queue()
        except BaseException:
            with self._lock:
                self.waiting -= 1
            raise
        self._queue.put(_Item(job, handle, tokens))

    def stop(self) -> None:
        """Finish the current job, then end the thread (queued jobs are cancelled)."""
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            with self._lock:
                self.waiting -= 1
                self.running += 1
            try:
                item.handle.push(self._execute(item))
            finally:
                with self._lock:
                    self.running -= 1
                close_old_connections()  # outcome callbacks may have used the ORM on this thread
        # Drain: anything still queued when the model is unloaded ends as cancelled.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item.handle.push(Outcome("cancelled", "cancelled", error="the model was unloaded"))

    def _execute(self, item: _Item) -> Outcome:
        job, handle = item.job, item.handle
        waited = time.perf_counter() - job.submitted_at_perf
        if handle.cancelled.is_set():
            return Outcome("cancelled", "cancelled", prompt_tokens=len(item.tokens), duration_ms=waited * 1000)
        if waited > self.queue_timeout_s:
            return Outcome(
                "timeout",
                "error",
                error=f"waited {waited:.1f}s in {job.model_id}'s queue, past its {self.queue_timeout_s:.0f}s limit",
                error_code="queue_timeout",
                duration_ms=waited * 1000,
            )
        try:
            if job.kind == "embedding":
                return self.runner.embed(job)
            return self.runner.generate(job, item.tokens, handle)
        except PromptError as exc:
            return Outcome("error", "error", error=str(exc), error_code=exc.code)
        except Exception as exc:
            logger.exception("job %s on %s failed", job.id, job.model_id)
            return Outcome("error", "error", error=f"generation failed: {exc}", error_code="engine_error")
