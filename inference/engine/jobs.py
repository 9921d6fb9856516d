"""A job is plain data; what comes back is a stream of typed events."""

import asyncio
import contextlib
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from inference.engine.grammar import SchemaBounds

JobKind = Literal["chat", "completion", "embedding"]
FinishReason = Literal["stop", "length", "cancelled", "error"]
PENALTY_LAST_N = 64  # llama.cpp's default look-back for the repetition penalties


@dataclass
class Sampling:
    """Per-request sampling; values are already validated and defaulted."""

    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: int = PENALTY_LAST_N  # tokens the penalties look back over (Ollama's repeat_last_n); 0: none
    typical_p: float = 1.0  # locally typical sampling; 1.0: off
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logit_bias: dict[int, float] = field(default_factory=dict)
    json_schema: dict[str, Any] | None = None  # a schema, or {} for any JSON object
    # Tool-call formats: each JSON value the schema allows is framed by these literals, up to
    # `grammar_repeat` times (one per line). With `grammar_trigger` (a regex) the grammar is
    # lazy, llama.cpp's way: free text until the trigger matches, held by the grammar from
    # the trigger's first group (or the whole match) on.
    grammar_open: str = ""
    grammar_close: str = ""
    grammar_repeat: int = 1
    grammar_trigger: str = ""
    # Log-probabilities of each sampled token and of the n_probs likeliest (0-20), after the sampler
    # chain's filters (llama.cpp's post_sampling_probs); -1: none.
    n_probs: int = -1
    max_tokens: int = 256


@dataclass(frozen=True)
class RequestBounds:
    """What the engine lets one request ask for (from settings; README, "Bounds")."""

    schema: SchemaBounds = field(default_factory=SchemaBounds)
    max_logit_bias: int = 1024
    template_timeout_s: float = 2.0
    template_max_chars: int = 4 * 1024 * 1024


@dataclass
class Job:
    """One generation (or embedding) request for one model."""

    model_id: str
    kind: JobKind
    messages: list[dict[str, Any]] = field(default_factory=list)
    prompt: str = ""
    prompt_tokens: list[int] = field(default_factory=list)  # completion: token ids instead of `prompt`
    inputs: list[str | list[int]] = field(default_factory=list)  # embeddings: texts or token ids
    enable_thinking: bool | None = None  # chat: the template's `enable_thinking` (None: undefined, its default)
    tools: list[dict[str, Any]] | None = None  # chat: the tools the template itself renders (HF's `tools`)
    template_kwargs: dict[str, Any] = field(default_factory=dict)  # chat: more variables for the template
    truncate: bool = False  # embeddings: cut an input to the context instead of refusing it (Ollama's `truncate`)
    sampling: Sampling = field(default_factory=Sampling)
    # Seconds to stay loaded after this request: None forever, -1.0 the pool's default.
    keep_alive_s: float | None = -1.0
    # False (a caller without models:manage): keep_alive_s may lengthen the model's keep-alive, never shorten it.
    keep_alive_may_shorten: bool = True
    owner: str = ""  # who asked (the token): the fair queue takes turns between owners
    lane: str = "interactive"  # or "batch": interactive requests take free slots first
    request_id: str = ""  # its usage row, and the token's name: what the admin's live view shows
    token_name: str = ""
    load_ms: float = 0.0  # time this request spent on getting its model loaded (set by the engine)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    submitted_at_perf: float = field(default_factory=time.perf_counter)


@dataclass
class Token:
    text: str
    # With Sampling.n_probs >= 0: for each token whose text this is, {"id", "bytes", "logprob", "top": [...]}
    logprobs: list[dict[str, Any]] | None = None


@dataclass
class Outcome:
    """How a job ended, with the engine's own counts; the usage row is finalized from it."""

    status: Literal["completed", "cancelled", "error", "timeout"]
    finish_reason: FinishReason
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # of the prompt's tokens, those whose KV was reused rather than computed
    time_to_first_token_ms: float | None = None
    duration_ms: float = 0.0
    queue_ms: float = 0.0  # from entering the model's queue until a slot took the request (or it left)
    prompt_ms: float = 0.0
    decode_ms: float = 0.0
    error: str = ""
    error_code: str = ""
    embeddings: list[list[float]] = field(default_factory=list)

    @property
    def decode_tokens_per_s(self) -> float:
        return self.completion_tokens / (self.decode_ms / 1000) if self.decode_ms > 0 else 0.0

    def timings(self) -> dict[str, float | None]:
        return {
            "queue_ms": round(self.queue_ms, 2),
            "queue_and_prompt_ms": self.time_to_first_token_ms,
            "prompt_ms": round(self.prompt_ms, 2),
            "decode_ms": round(self.decode_ms, 2),
            "total_ms": round(self.duration_ms, 2),
            "decode_tokens_per_s": round(self.decode_tokens_per_s, 2),
        }


Event = Token | Outcome
_batch = threading.local()
# Outcomes are settled here, not on the thread that ends the job: settling runs the job's
# callbacks (the usage row's ORM write, the pool's release, the limiter's settlement), and
# the decode thread must not wait on a database for any of them.
_settlers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="job-outcome")


@contextmanager
def batched_handoffs() -> Iterator[None]:
    """Collect the hand-offs made on this thread and deliver them with one wake-up per event loop.

    The scheduler wraps each decode step in this: with eight streams, eight separate
    wake-ups per step cost the event loop (and so llama.cpp's threads) more than one.
    """
    _batch.pending, _batch.outcomes = [], []
    try:
        yield
    finally:
        pending, _batch.pending = _batch.pending, None
        outcomes, _batch.outcomes = _batch.outcomes, None
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[JobHandle, Event]]] = {}
        for handle, event in pending:
            by_loop.setdefault(handle._loop, []).append((handle, event))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver_all, items)
            except RuntimeError:  # that loop is closed: its callers are gone
                for handle, _ in items:
                    handle.cancelled.set()
        for handle, outcome in outcomes:  # after the tokens: each loop sees them before the end
            _settlers.submit(handle._settle, outcome)


def _deliver_all(items: list[tuple["JobHandle", Event]]) -> None:
    for handle, event in items:
        handle._deliver(event)


class JobHandle:
    """The caller's end of a submitted job: an async stream of events, and cancel.

    Events are pushed from the worker thread with `push` (thread-safe); `events()` is
    iterated on the event loop that created the handle. Dropping the stream without
    reaching the end must be followed by `cancel()`; the stream helpers do that.
    """

    def __init__(self, job: Job, *, coalesce_s: float = 0.025) -> None:
        self.job = job
        self.cancelled = threading.Event()
        self.outcome: Future[Outcome] = Future()
        self._loop = asyncio.get_running_loop()
        self._events: deque[Event] = deque()  # touched on the event loop only
        self._ready = asyncio.Event()
        # Tokens decoded within `coalesce_s` of the last hand-off travel together: each
        # hand-off wakes the event loop, whose work competes with llama.cpp's threads
        # for the cores. The first token is never held back.
        self._coalesce_s = coalesce_s
        self._held: list[str] = []
        self._held_logprobs: list[dict[str, Any]] = []
        self._last_handoff = 0.0
        # Where the job waits in its model's queue (0: next), None once it holds a slot.
        self.position: int | None = None
        self._position_listeners: list[Callable[[int | None], None]] = []

    def push(self, event: Event) -> None:
        """Hand an event to the event loop; called from the worker thread only."""
        if isinstance(event, Token):
            self._held.append(event.text)
            if event.logprobs:
                self._held_logprobs.extend(event.logprobs)
            now = time.perf_counter()
            if now - self._last_handoff < self._coalesce_s:
                return
            self._last_handoff = now
            self._release_held()
            return
        if self._held:
            self._release_held()
        outcomes = getattr(_batch, "outcomes", None)
        if outcomes is not None:  # inside batched_handoffs(): settled once the step's tokens are out
            outcomes.append((self, event))
        else:
            _settlers.submit(self._settle, event)

    def _settle(self, outcome: Outcome) -> None:
        """Run the outcome's callbacks, then hand it over (a settler thread, never the decode thread)."""
        try:
            if not self.outcome.done():
                self.outcome.set_result(outcome)
        finally:
            self._handoff(outcome)

    def _release_held(self) -> None:
        self._handoff(Token("".join(self._held), self._held_logprobs or None))
        self._held.clear()
        self._held_logprobs = []

    def _handoff(self, event: Event) -> None:
        pending = getattr(_batch, "pending", None)
        if pending is not None:  # inside batched_handoffs(): one wake-up per loop per step
            pending.append((self, event))
            return
        try:
            self._loop.call_soon_threadsafe(self._deliver, event)
        except RuntimeError:  # the loop is closed: the caller is gone, nobody to tell
            self.cancelled.set()

    def report_position(self, position: int | None) -> None:
        """Say where the job stands in its model's queue (None: it holds a slot); safe from any thread."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting to hear it
            self._loop.call_soon_threadsafe(self._set_position, position)

    def on_position(self, listener: Callable[[int | None], None]) -> None:
        """Call `listener(position)` on the event loop each time the job's queue position changes."""
        self._position_listeners.append(listener)

    def _set_position(self, position: int | None) -> None:
        if position == self.position:
            return
        self.position = position
        for listener in list(self._position_listeners):
            listener(position)

    def cancel(self) -> None:
        """Stop the job at its next token (or before it starts); safe from any thread."""
        self.cancelled.set()

    async def outcome_async(self) -> Outcome:
        """Wait for the outcome without consuming the event stream."""
        return await asyncio.wrap_future(self.outcome)

    def on_outcome(self, callback: Callable[[Outcome], None]) -> None:
        """Call `callback(outcome)` once the job ends, on whichever thread ends it."""
        self.outcome.add_done_callback(lambda fut: callback(fut.result()))

    def _deliver(self, event: Event) -> None:
        self._events.append(event)
        self._ready.set()

    @property
    def backlog(self) -> int:
        """Events handed over but not yet taken by the consumer (event loop only)."""
        return len(self._events)

    async def first_ready(self) -> None:
        """Wait until the job's first event is here (its prompt is in its slot, or it ended); consumes nothing."""
        while not self._events:
            self._ready.clear()
            await self._ready.wait()

    def ended_early(self) -> "Outcome | None":
        """The outcome, if the job failed before any token (what `first_ready` found); None otherwise."""
        first = self._events[0] if self._events else None
        return first if isinstance(first, Outcome) and first.status != "completed" else None

    def drain_tokens(self) -> list[Token]:
        """Take the tokens already waiting, up to (not including) the outcome; event loop only."""
        tokens = []
        while self._events and isinstance(self._events[0], Token):
            tokens.append(self._events.popleft())
        return tokens

    async def events(self) -> AsyncIterator[Event]:
        """Yield tokens, then the Outcome; cancels the job if the consumer stops early."""
        try:
            while True:
                while not self._events:
                    self._ready.clear()
                    await self._ready.wait()
                event = self._events.popleft()
                yield event
                if isinstance(event, Outcome):
                    return
        finally:
            if not self.outcome.done():
                self.cancel()
