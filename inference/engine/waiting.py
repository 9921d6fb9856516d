"""A request's way from `submit` to a slot: the queue, its places per owner and lane, expiry, and seating.

`WaitingRoom` is the half of `BatchScheduler` (scheduler.py) that runs before a request's first
decode step. `submit` and `_hold` run on any thread under `_lock`; the rest runs on the scheduler's
own thread, between steps: expire what waited too long or was cancelled, tell the waiting their
places, give each the free slot `choose_slot` picks, and bring in the longest prefix of its prompt
that another slot or the prompt cache holds.
"""

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable

from inference.engine.fair_queue import FairQueue
from inference.engine.jobs import Job, JobHandle, Outcome
from inference.engine.llama_runner import LlamaRunner, Prepared
from inference.engine.prefill import PrefillPolicy
from inference.engine.prompt_cache import PrefixReuse, choose_slot, common_prefix
from inference.engine.slots import QueuedItem, QueueFull, SchedulerDown, Slot, SlotRequest

logger = logging.getLogger(__name__)


class WaitingRoom:
    """The queue and the admission of `BatchScheduler`, which sets every attribute below in its __init__."""

    runner: LlamaRunner
    slots: list[Slot]
    stats: dict[str, float]
    prefill: PrefillPolicy
    max_queue: int
    per_owner: int
    queue_timeout_s: float
    failed: BaseException | None
    waiting: int
    running: int
    waiting_by_lane: dict[str, int]
    _reuse: PrefixReuse
    _inbox: "queue.Queue[QueuedItem | None]"
    _waiting: FairQueue[QueuedItem]
    _waiting_by_owner: dict[str, int]
    _lock: threading.Lock
    _stopping: bool

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

    def _report_positions(self) -> None:
        """Tell each waiting request whose place changed where it stands now (0: next)."""
        for position, item in enumerate(self._waiting.projected()):
            if item.reported != position:
                item.reported = position
                item.handle.report_position(position)

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
        items: list[QueuedItem] = []
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
            duration_ms, queue_ms = (now - item.job.submitted_at_perf) * 1000, waited * 1000
            if cancelled:
                self._end_waiting(item, Outcome("cancelled", "cancelled", prompt_tokens=len(item.tokens),
                                                duration_ms=duration_ms, queue_ms=queue_ms))  # fmt: skip
            else:
                self.stats["queue_timeouts"] += 1
                message = (
                    f"waited {waited:.1f}s in {item.job.model_id}'s queue, past its {self.queue_timeout_s:.0f}s limit"
                )
                self._end_waiting(item, Outcome("timeout", "error", error=message, error_code="queue_timeout",
                                                duration_ms=duration_ms, queue_ms=queue_ms))  # fmt: skip

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
            self.prefill.seat_long(streams_decoding=any(is_generating(s) for s in self.slots))
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


def is_generating(slot: Slot) -> bool:
    """Whether `slot` holds a request past its prompt, decoding a token each step."""
    return slot.request is not None and not slot.request.prompt_rest
