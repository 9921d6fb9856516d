"""Continuous batching: a model's slots share one llama.cpp context and decode together.

Each step puts one token from every generating slot into a single batch, fills the
rest with prompt chunks of newly admitted requests (which and when: prefill.py), decodes
once, and samples each slot with its own sampler.
A finished or cancelled slot is free at the next step. A new request takes a free slot
that keeps the busy slots consecutive and drops the least KV (`choose_slot`), and reuses the longest KV
prefix at hand: the slot's own, another free slot's, or the host-memory prompt cache's
(prompt_cache.py), where a slot's KV goes before a new request overwrites it.

Thread-safety: `submit` and the counters may be used from any thread; everything else
runs on the scheduler's own thread, the only one that calls llama.cpp for this model.
"""

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable

import llama_cpp

from inference.engine.fair_queue import LANES, FairQueue, owner_limit
from inference.engine.jobs import Job, JobHandle, Outcome, Token, batched_handoffs
from inference.engine.llama_runner import LlamaRunner, Prepared
from inference.engine.prefill import Fill, PrefillPolicy
from inference.engine.prompt_cache import PrefixReuse, PromptCache, choose_slot, common_prefix
from inference.engine.slots import (
    QueuedItem,
    QueueFull,
    SchedulerDown,
    Slot,
    SlotRequest,
    new_stats,
    put_token,
    queued_view,
    slot_view,
)

__all__ = ["BatchScheduler", "QueueFull", "SchedulerDown"]

logger = logging.getLogger(__name__)
SLOW_SAMPLE_S = 1.0  # one token's sampling past this ends its request: every other slot waits on it


class BatchScheduler:
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

    def submit(
        self, job: Job, handle: JobHandle, prepared: Prepared, *, before_queue: Callable[[], None] | None = None
    ) -> None:
        """Queue a job; QueueFull at the queue's or the owner's limit. Thread-safe; blocks only in `before_queue`.

        `before_queue` runs once a place in the queue is held and before the job is in
        it (admission): a full queue never admits, and a failed admission frees the place.
        """
        with self._lock:
            if self.failed is not None or self._stopping:
                raise SchedulerDown(f"{job.model_id}'s scheduler is restarting; retry shortly.")
            if self.waiting >= self.max_queue:
                raise QueueFull(job.model_id, self.waiting)
            held = self._waiting_by_owner.get(job.owner, 0)
            if held >= self.per_owner:
                raise QueueFull(job.model_id, held, share=True)
            self._hold(job, +1)
        try:
            if before_queue is not None:
                before_queue()
        except BaseException:
            with self._lock:
                self._hold(job, -1)
            raise
        self._inbox.put(QueuedItem(job, handle, prepared.tokens, prepared.sampler))

    def _hold(self, job: Job, n: int) -> None:
        """Count a place in the queue taken (+1) or given up (-1); the caller holds the lock."""
        self.waiting += n
        lane = job.lane if job.lane in self.waiting_by_lane else "interactive"
        self.waiting_by_lane[lane] += n
        held = self._waiting_by_owner.get(job.owner, 0) + n
        if held > 0:
            self._waiting_by_owner[job.owner] = held
        else:
            self._waiting_by_owner.pop(job.owner, None)

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

    def _report_positions(self) -> None:
        """Tell each waiting request whose place changed where it stands now (0: next)."""
        for position, item in enumerate(self._waiting.projected()):
            if item.reported != position:
                item.reported = position
                item.handle.report_position(position)

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

    def _take_inbox(self, *, block: bool) -> None:
        try:
            item = self._inbox.get(block=block)
        except queue.Empty:
            return
        while True:
            if item is None:
                self._stopping = True
                return
            self._waiting.append(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _drain_inbox(self) -> list[QueuedItem]:
        items = []
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return items
            if item is not None:
                items.append(item)

    def _end_waiting(self, item: QueuedItem, outcome: Outcome) -> None:
        with self._lock:
            self._hold(item.job, -1)
        item.sampler.close()  # its native chain (and grammar) now, not at the next cyclic collection
        item.handle.push(outcome)

    def _expire_waiting(self) -> None:
        now = time.perf_counter()
        for item in list(self._waiting):
            waited = now - item.queued_at
            cancelled = item.handle.cancelled.is_set()
            if not cancelled and waited <= self.queue_timeout_s:
                continue
            self._waiting.remove(item)
            spent = {"duration_ms": (now - item.job.submitted_at_perf) * 1000, "queue_ms": waited * 1000}
            if cancelled:
                self._end_waiting(item, Outcome("cancelled", "cancelled", prompt_tokens=len(item.tokens), **spent))
            else:
                self.stats["queue_timeouts"] += 1
                message = (
                    f"waited {waited:.1f}s in {item.job.model_id}'s queue, past its {self.queue_timeout_s:.0f}s limit"
                )
                self._end_waiting(item, Outcome("timeout", "error", error=message, error_code="queue_timeout", **spent))

    def _admit(self) -> None:
        """Give each waiting request (in the fair queue's order) a free slot (`choose_slot`) and the longest prefix.

        The prefix comes from the slot itself, from another slot (free or busy) or from the prompt
        cache, whichever shares most of the prompt; a slot about to lose tokens to a request that does
        not share them is copied into the prompt cache. A request whose prefix a prompt being filled
        will soon hold waits for that fill (`_may_seat`).
        """
        while self._waiting:
            free = [slot for slot in self.slots if slot.request is None]
            if not free:
                return
            # Prompts going in whole at the next steps: a request whose prefix one of them will hold waits for it.
            coming = [s.request.item.tokens for s in self.slots
                      if s.request and s.request.prompt_rest and not s.request.long_prompt]  # fmt: skip
            item = self._waiting.pop_first(functools.partial(self._may_seat, coming=coming))
            if item is None:
                return
            slot = choose_slot(free, item.tokens, busy={s.seq_id for s in self.slots if s.request})
            try:
                # Every other slot may lend its prefix, busy ones too (a sibling choice, a shared system prompt):
                # the copy reads the donor's sequence and leaves it as it is.
                self._seat(item, slot, [s for s in self.slots if s is not slot])
            except Exception as exc:  # this request's own failure: it ends, the others go on
                logger.exception("admitting a request on %s failed", self.runner.spec.model_id)
                self.stats["request_failures"] += 1
                slot.request, slot.cached = None, []
                self.runner.forget(slot.seq_id)
                failed = Outcome("error", "error", prompt_tokens=len(item.tokens),
                                 error=f"admission failed: {exc}", error_code="engine_error")  # fmt: skip
                self._end_waiting(item, failed)

    def _may_seat(self, item: QueuedItem, *, coming: list[list[int]]) -> bool:
        """False while a prompt being filled will soon hold a longer prefix of `item`'s: it waits to copy it."""
        if not coming or not self._reuse.worth_waiting(item.tokens, self.slots, coming):
            return True
        if not item.waited_for_prefix:
            item.waited_for_prefix = True
            self.stats["prefix_waits"] += 1
        return False

    def _seat(self, item: QueuedItem, slot: Slot, others: list[Slot]) -> None:
        """Put `item` in `slot`, reusing the longest prefix of its prompt found in `slot`, `others` or the cache."""
        moved = self._reuse.bring_longest(slot, others, item.tokens)
        keep = min(common_prefix(slot.cached, item.tokens), len(item.tokens) - 1)  # >= 1 token to decode
        # A copied-in sequence's tail is not stored again: the donor slot still holds it, or
        # the cache entry gave it up on restore, as in llama.cpp's server.
        if not moved:
            self._reuse.stash(slot, keep)
        self.runner.forget(slot.seq_id, keep)
        slot.cached = slot.cached[:keep]
        if keep:
            self.stats["prefix_hits"] += 1
            self.stats["prefix_tokens_reused"] += keep
        if item.reported is not None:
            item.handle.report_position(None)
        admitted_at = time.perf_counter()
        self.stats["queue_admitted"] += 1
        self.stats["queue_wait_ms_total"] += (admitted_at - item.queued_at) * 1000
        long_prompt = self.prefill.is_long(len(item.tokens) - keep)
        if long_prompt:
            self.prefill.seat_long(streams_decoding=any(_generating(s) for s in self.slots))
        slot.request = SlotRequest(
            item=item,
            sampler=item.sampler,
            long_prompt=long_prompt,
            cached_tokens=keep,
            prompt_rest=item.tokens[keep:],
            max_tokens=min(item.job.sampling.max_tokens, self.runner.n_ctx_slot - len(item.tokens)),
            admitted_at=admitted_at,
        )
        with self._lock:
            self._hold(item.job, -1)
            self.running += 1

    def _step(self, active: list[Slot]) -> None:
        """One decode call for every active slot, then one sampled token for each that is ready."""
        for slot in active:
            if slot.request.item.handle.cancelled.is_set():
                self._finish(slot, "cancelled", "cancelled")
        active = [slot for slot in active if slot.request]
        if not active:
            return
        generating = [slot for slot in active if _generating(slot)]
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


def _generating(slot: Slot) -> bool:
    """Whether `slot` holds a request past its prompt, decoding a token each step."""
    return slot.request is not None and not slot.request.prompt_rest
