"""What the scheduler keeps per request and per slot, and the refusals of its queue.

Plain data; only the model's scheduler thread touches a slot or a request after admission.
"""

import codecs
import time
from dataclasses import dataclass, field
from typing import Protocol

import llama_cpp

from inference.engine.jobs import Job, JobHandle


class QueueFull(Exception):
    """The model's wait queue, or this owner's share of it, is at its limit."""

    def __init__(self, model_id: str, depth: int, *, share: bool = False) -> None:
        whose = "from this token, its share of the queue" if share else "its limit"
        super().__init__(f"{model_id} has {depth} requests waiting {whose}; retry shortly.")
        self.depth = depth


class SchedulerDown(Exception):
    """The model's scheduler failed and is being replaced; the request may be retried at once."""


class Sampler(Protocol):
    """What the queue needs of a request's sampler: to free its native chain when the request ends."""

    def close(self) -> None: ...


@dataclass(eq=False)
class QueuedItem:
    job: Job
    handle: JobHandle
    tokens: list[int]
    sampler: Sampler
    # The queue's clock starts here, not at the job's submission: loading the model first is
    # not waiting in its queue, and a long load must not time out the request that asked for it.
    queued_at: float = field(default_factory=time.perf_counter)
    reported: int | None = None  # the queue position last told to its handle
    waited_for_prefix: bool = False  # it waited for a prompt being filled, to copy their shared prefix

    @property
    def owner(self) -> str:
        return self.job.owner

    @property
    def lane(self) -> str:
        return self.job.lane


@dataclass
class SlotRequest:
    """The state of one request while it holds a slot."""

    item: QueuedItem
    sampler: Sampler
    prompt_rest: list[int]
    max_tokens: int
    admitted_at: float
    long_prompt: bool = False  # longer than one chunk: filled in chunks, sharing the time with the streams
    cached_tokens: int = 0  # prompt tokens whose KV was reused (its slot's, another's, the prompt cache's)
    decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    pending: str = ""
    logprobs: list[dict] = field(default_factory=list)  # entries of tokens whose text is not handed over yet
    produced: int = 0
    last: int = -1
    first_at: float | None = None

    def take_logprobs(self) -> list[dict] | None:
        """The log-probability entries of the tokens since the last hand-off (None when none were asked)."""
        taken, self.logprobs = self.logprobs, []
        return taken or None

    def take_text(self, piece: bytes) -> tuple[str, bool]:
        """(text ready to hand over, whether a stop string ended it) after one more token's bytes.

        Text that could still grow into a stop string is held back; at a stop string the
        text before it is ready and the rest is dropped.
        """
        stops = self.item.job.sampling.stop
        self.pending += self.decoder.decode(piece)
        if not stops:
            ready, self.pending = self.pending, ""
            return ready, False
        hit = min((i for i in (self.pending.find(s) for s in stops) if i >= 0), default=-1)
        if hit >= 0:
            ready, self.pending = self.pending[:hit], ""
            return ready, True
        keep = held_back(self.pending, stops)
        ready = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(ready) :]
        return ready, False


@dataclass
class Slot:
    seq_id: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV this slot's stream holds
    request: SlotRequest | None = None


def put_token(batch: llama_cpp.llama_batch, i: int, token: int, pos: int, seq_id: int, logits: bool) -> None:
    """Place one token of one sequence at index `i` of a llama.cpp batch."""
    batch.token[i] = token
    batch.pos[i] = pos
    batch.seq_id[i][0] = seq_id
    batch.n_seq_id[i] = 1
    batch.logits[i] = logits


def held_back(text: str, stops: list[str]) -> int:
    """Length of the longest tail of `text` that could still grow into a stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


def new_stats() -> dict[str, float]:
    """A scheduler's counters, all at zero (shown in /performance and /metrics)."""
    return {
        "steps": 0,
        "batched_tokens": 0,
        "prefix_hits": 0,
        "prefix_tokens_reused": 0,
        "slot_copies": 0,
        "prefix_waits": 0,  # requests that waited for a prompt being filled, to copy their shared prefix
        "prompt_cache_stored": 0,
        "prompt_cache_hits": 0,
        "prompt_cache_tokens_restored": 0,
        "prompt_cache_entries": 0,
        "prompt_cache_bytes": 0,
        "queue_admitted": 0,  # requests that left the queue for a slot, and their summed wait
        "queue_wait_ms_total": 0.0,
        "queue_timeouts": 0,
        "request_failures": 0,  # requests ended by a failure in their own step
        # Long prompts filled beside decoding streams: their chunks' steps and time, and the time of the
        # decode-only steps the streams had meanwhile (LONG_PREFILL_SHARE holds the first below that share).
        "long_prefill_chunks": 0,
        "long_prefill_s": 0.0,
        "decode_s_while_long_waits": 0.0,
    }


def slot_view(slot: Slot, now: float) -> dict[str, object]:
    """What the admin's live view shows of one slot: idle, or its request's progress."""
    request = slot.request  # one read: the scheduler thread may end it meanwhile
    if request is None:
        return {"slot": slot.seq_id, "state": "idle", "cached_tokens": len(slot.cached)}
    job = request.item.job
    decoding_s = now - request.first_at if request.first_at is not None else 0.0
    return {
        "slot": slot.seq_id,
        "state": "prefill" if request.prompt_rest else "decode",
        "request_id": job.request_id or job.id,
        "token": job.token_name,
        "lane": job.lane,
        "prompt_tokens": len(request.item.tokens),
        "tokens": request.produced,
        "max_tokens": request.max_tokens,
        "tokens_per_s": round(request.produced / decoding_s, 1) if decoding_s > 0.05 else None,
        "running_s": round(now - request.admitted_at, 2),
    }


def queued_view(item: QueuedItem, now: float) -> dict[str, object]:
    """What the admin's live view shows of one waiting request."""
    job = item.job
    return {
        "request_id": job.request_id or job.id,
        "token": job.token_name,
        "lane": job.lane,
        "prompt_tokens": len(item.tokens),
        "waited_s": round(now - item.queued_at, 2),
    }
