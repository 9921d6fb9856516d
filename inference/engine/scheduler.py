"""Continuous batching: a model's slots share one llama.cpp context and decode together.

Each step puts one token from every generating slot into a single batch, fills the
rest with prompt chunks of newly admitted requests (which and when: prefill.py), decodes
once, and samples each slot with its own sampler.
A finished or cancelled slot is free at the next step. A new request takes a free slot
that keeps the busy slots consecutive and drops the least KV (`choose_slot`), and reuses the longest KV
prefix at hand: the slot's own, another free slot's, or the host-memory prompt cache's
(prompt_cache.py), where a slot's KV goes before a new request overwrites it. The queue and that
seating are `WaitingRoom`'s (waiting.py); this module is the loop and the decode step.

Thread-safety: `submit` and the counters may be used from any thread; everything else
runs on the scheduler's own thread, the only one that calls llama.cpp for this model.
"""

import logging
import queue
import threading
import time
from collections.abc import Callable

import llama_cpp

from inference.engine.fair_queue import LANES, FairQueue, owner_limit
from inference.engine.jobs import Outcome, Token, batched_handoffs
from inference.engine.llama_runner import LlamaRunner
from inference.engine.prefill import Fill, PrefillPolicy
from inference.engine.prompt_cache import PrefixReuse, PromptCache
from inference.engine.slots import (
    QueuedItem,
    QueueFull,
    SchedulerDown,
    Slot,
    new_stats,
    put_token,
    queued_view,
    slot_view,
)
from inference.engine.waiting import WaitingRoom, is_generating

__all__ = ["BatchScheduler", "QueueFull", "SchedulerDown"]

logger = logging.getLogger(__name__)
SLOW_SAMPLE_S = 1.0  # one token's sampling past this ends its request: every other slot waits on it


class BatchScheduler(WaitingRoom):
    """Runs one model's requests in `n_parallel` slots on a dedicated thread.

    A failure in one request's step ends that request alone. A failure outside them (a
    bug) ends the thread: every request it holds ends with `scheduler_failed` (503), and
    `on_failure` is told so that the pool puts a fresh scheduler in its place.
    """

    def __init__(
        self,
        runner: LlamaRunner,
        *,
        max_queue: int,
        queue_timeout_s: float,
        prompt_cache_mb: float = 0,
        owner_share: float = 0.5,
        batch_age_s: float = 30.0,
        on_failure: Callable[["BatchScheduler"], None] | None = None,
    ) -> None:
        self.runner = runner
        self.max_queue = max_queue
        self.per_owner = owner_limit(max_queue, owner_share)
        self.queue_timeout_s = queue_timeout_s
        self.on_failure = on_failure
        self.slots = [Slot(i) for i in range(runner.n_parallel)]
        for slot in self.slots:  # a fresh scheduler on a used context: no stale KV
            runner.forget(slot.seq_id)
        self.prompt_cache = PromptCache(int(prompt_cache_mb * 2**20))
        self.stats = new_stats()
        self._reuse = PrefixReuse(runner, self.prompt_cache, self.stats)
        self._inbox: queue.Queue[QueuedItem | None] = queue.Queue()
        self._waiting: FairQueue[QueuedItem] = FairQueue(batch_age_s=batch_age_s)
        self._lock = threading.Lock()
        self.waiting = 0
        self.running = 0
        self.waiting_by_lane = dict.fromkeys(LANES, 0)
        self._waiting_by_owner: dict[str, int] = {}
        self._stopping = False
        self.failed: BaseException | None = None
        self.prefill = PrefillPolicy(runner.n_batch, runner.n_parallel, self.stats)
        self._thread = threading.Thread(target=self._run, name=f"llama-{runner.spec.model_id}", daemon=True)
        self._thread.start()

    @property
    def in_flight(self) -> int:
        return self.waiting + self.running

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.failed is None

    def live(self) -> dict[str, object]:
        """Each slot's request and the waiting ones, read from another thread without stopping the loop.

        The loop changes the queue while this reads it: a read that races a change is tried
        again, and after three the queue is shown by its count alone.
        """
        now = time.perf_counter()
        waiting: list[QueuedItem] | None = None
        for _ in range(3):
            try:
                waiting = list(self._waiting)
                break
            except RuntimeError:  # the loop changed a deque or dict mid-iteration
                continue
        return {
            "slots": [slot_view(slot, now) for slot in self.slots],
            "queue": None if waiting is None else [queued_view(item, now) for item in waiting],
            "queued": self.waiting,
            "prompt_cache": {
                "entries": len(self.prompt_cache),
                "bytes": self.prompt_cache.bytes,
                "limit_bytes": self.prompt_cache.limit_bytes,
            },
        }

    def stop(self) -> None:
        """End the thread; running and queued jobs end as cancelled."""
        self._inbox.put(None)
        self._thread.join(timeout=30)

    # -- the loop -----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a bug, not a request: end everything held, ask for a successor
            logger.exception("the scheduler of %s failed; its requests end with 503", self.runner.spec.model_id)
            with self._lock:
                self.failed = exc
            try:
                self.abandon(f"the model's scheduler failed: {exc!r}; retry")
            finally:
                if self.on_failure is not None:
                    self.on_failure(self)
            return
        self._end_all(Outcome("cancelled", "cancelled", error="the model was unloaded"))

    def _loop(self) -> None:
        while not self._stopping:
            busy = any(slot.request for slot in self.slots) or self._waiting
            before = len(self._waiting), self.stats["queue_admitted"]
            self._take_inbox(block=not busy)
            self._expire_waiting()
            self._admit()
            if self._waiting and before != (len(self._waiting), self.stats["queue_admitted"]):
                self._report_positions()
            active = [slot for slot in self.slots if slot.request]
            if active:
                try:
                    with batched_handoffs():
                        self._step(active)
                except Exception as exc:  # a failed decode ends the requests in it, not the thread
                    logger.exception("decode step on %s failed", self.runner.spec.model_id)
                    for slot in active:
                        if slot.request:
                            self._finish(slot, "error", "error", error=f"decode failed: {exc}", code="engine_error")

    def abandon(self, reason: str) -> None:
        """End every request held with `scheduler_failed` (503). Only once the thread is gone, or on it."""
        self._end_all(Outcome("error", "error", error=reason, error_code="scheduler_failed"))

    def _end_all(self, outcome: Outcome) -> None:
        """End every request this scheduler holds with `outcome` (its counts filled in per request)."""
        for slot in self.slots:
            if slot.request:
                try:
                    self._finish(slot, outcome.status, outcome.finish_reason, error=outcome.error,
                                 code=outcome.error_code)  # fmt: skip
                except Exception:
                    logger.exception("could not end a request of %s", self.runner.spec.model_id)
                    slot.request = None
        for item in [*self._waiting, *self._drain_inbox()]:
            self._end_waiting(item, Outcome(outcome.status, outcome.finish_reason, prompt_tokens=len(item.tokens),
                                            error=outcome.error, error_code=outcome.error_code))  # fmt: skip
        with self._lock:
            self.running = 0

    def _step(self, active: list[Slot]) -> None:
        """One decode call for every active slot, then one sampled token for each that is ready."""
        for slot in active:
            if slot.request.item.handle.cancelled.is_set():
                self._finish(slot, "cancelled", "cancelled")
        active = [slot for slot in active if slot.request]
        if not active:
            return
        generating = [slot for slot in active if is_generating(slot)]
        fill = self.prefill.fill(active, self.runner.n_batch - len(generating), generating=bool(generating))
        sample_at = self._put_batch(generating, fill)
        started = time.perf_counter()
        rc = llama_cpp.llama_decode(self.runner.ctx.ctx, self.runner.batch.batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        self.prefill.account(time.perf_counter() - started, fill, generating=bool(generating))
        self.stats["steps"] += 1
        self.stats["batched_tokens"] += len(generating) + fill.tokens
        for slot, index in sample_at:
            try:
                started = time.perf_counter()
                n_probs = slot.request.item.job.sampling.n_probs
                if n_probs >= 0:
                    token, probs = self.runner.sample_with_probs(slot.request.sampler, index, n_probs)
                else:
                    token, probs = self.runner.sample(slot.request.sampler, index), None
                if time.perf_counter() - started > SLOW_SAMPLE_S:  # a grammar too costly to follow: stop it here
                    self.stats["request_failures"] += 1
                    self._finish(slot, "error", "error", code="grammar_too_slow", error=(
                        f"sampling one token under this request's grammar took over {SLOW_SAMPLE_S:g}s; "
                        "simplify the response_format schema"))  # fmt: skip
                    continue
                self._on_token(slot, token, probs)
            except Exception as exc:  # sampling, detokenizing or stop handling failed for this request alone
                logger.exception("a request on %s failed in its step", self.runner.spec.model_id)
                self.stats["request_failures"] += 1
                if slot.request is not None:
                    self._finish(slot, "error", "error", error=f"generation failed: {exc}", code="engine_error")

    def _put_batch(self, generating: list[Slot], fill: Fill) -> list[tuple[Slot, int]]:
        """Write the step's tokens into the runner's batch, each slot's together and in slot order.

        With a per-slot KV cache llama.cpp splits a batch into ubatches of consecutive sequence ids
        (in the order each first appears) and equal tokens per sequence, one pass over the weights
        each. In slot order every busy slot's first token shares the first ubatch; decode tokens
        first and prompts after (llama.cpp's server's order) would break the run at every prompt.
        Returns (slot, batch index) of the tokens to sample.
        """
        batch = self.runner.batch.batch
        pieces = [(slot, [slot.request.last]) for slot in generating] + fill.chunks
        sample_at: list[tuple[Slot, int]] = []
        n = 0
        for slot, tokens in sorted(pieces, key=lambda piece: piece[0].seq_id):
            start = len(slot.cached)
            for i, token in enumerate(tokens):
                put_token(batch, n + i, token, start + i, slot.seq_id, False)
            n += len(tokens)
            slot.cached.extend(tokens)
            if not slot.request.prompt_rest:  # a decode token, or a prompt's last chunk
                batch.logits[n - 1] = True
                sample_at.append((slot, n - 1))
        batch.n_tokens = n
        return sample_at

    def _on_token(self, slot: Slot, token: int, probs: dict | None = None) -> None:
        request = slot.request
        if request.first_at is None:
            request.first_at = time.perf_counter()
        if self.runner.is_eog(token):
            self._finish(slot, "completed", "stop")
            return
        request.produced += 1
        request.last = token
        if probs is not None:  # they travel with the text the token's bytes become part of
            request.logprobs.append(probs)
        ready, stopped = request.take_text(self.runner.piece(token))
        if ready:
            request.item.handle.push(Token(ready, request.take_logprobs()))
        if stopped:
            self._finish(slot, "completed", "stop")
            return
        if request.produced >= request.max_tokens:
            self._finish(slot, "completed", "length")

    def _finish(self, slot: Slot, status: str, finish_reason: str, *, error: str = "", code: str = "") -> None:
        request, slot.request = slot.request, None
        request.sampler.close()  # its native chain (and grammar) now, not at the next cyclic collection
        if status == "error":
            self.runner.forget(slot.seq_id)  # a failed step may have left partial KV
            slot.cached = []
        if status == "completed":
            request.pending += request.decoder.decode(b"", final=True)
            if request.pending or request.logprobs:
                request.item.handle.push(Token(request.pending, request.take_logprobs()))
        ended = time.perf_counter()
        first_at = request.first_at or ended
        job = request.item.job
        with self._lock:
            self.running -= 1
        request.item.handle.push(
            Outcome(
                status=status,
                finish_reason=finish_reason,
                prompt_tokens=len(request.item.tokens),
                completion_tokens=request.produced,
                cached_tokens=request.cached_tokens,
                time_to_first_token_ms=round((first_at - job.submitted_at_perf) * 1000, 2)
                if request.first_at
                else None,
                prompt_ms=(first_at - request.admitted_at) * 1000,
                decode_ms=(ended - first_at) * 1000,
                duration_ms=(ended - job.submitted_at_perf) * 1000,
                queue_ms=(request.admitted_at - request.item.queued_at) * 1000,
                error=error,
                error_code=code,
            )
        )
