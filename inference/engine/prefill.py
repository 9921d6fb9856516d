"""When a prompt's tokens go into a step: the scheduler's prefill policy.

A prompt that fits one chunk goes in whole: a newly admitted request alone is prefilled in the
next step, as llama.cpp's server does; short prompts that arrive together go in a few per step
(SHORT_PROMPTS_PER_STEP_TOKENS), so the first get their first token while the rest fill, where in
one step all of them would wait for all of them (KAREN's eight conversations: time to first token
p50 1.1 s -> 0.5 s at the same tokens/s; fresh prompts at 4 and 8 clients: 1.3-1.4x sooner). A longer prompt
goes in chunks of `chunk` tokens, cut at the same places whatever else arrived (a cut where a
step's room happened to run out changes llama.cpp's arithmetic enough to flip a greedy token:
measured, 3 of 30 batched runs differed from the one-by-one text, 0 of 30 uncut). While other
requests decode, a long prompt's chunks get LONG_PREFILL_SHARE of the time, so the streams
keep the rest of their speed while it fills.

Only the scheduler's thread uses a policy; it holds no llama.cpp state, only time and counts.
"""

from dataclasses import dataclass

from inference.engine.slots import Slot, SlotRequest

# While other requests decode, a prompt longer than one chunk gets this share of the time, so the
# decoding streams keep at least 1 - LONG_PREFILL_SHARE of their tokens/s while it fills.
LONG_PREFILL_SHARE = 0.15
PAYBACK = (1 - LONG_PREFILL_SHARE) / LONG_PREFILL_SHARE  # decode time owed to the streams per second of chunk
ESTIMATE_MIN_TOKENS = 32  # steps with fewer prompt tokens say little about a prompt token's cost
# Short prompts that arrive together go in a few per step, not all in one: a step's duration is the
# wait for its first token of every prompt in it, so the first ones start while the rest fill (and
# clients that sent together stop being in step with each other). Beside the first short prompt, others
# join a step only while their tokens stay within this many; tiny prompts still share one.
SHORT_PROMPTS_PER_STEP_TOKENS = 64


@dataclass
class Fill:
    """The prompt tokens one step takes: (slot, chunk) in the order chosen, and what it means for the time share."""

    chunks: list[tuple[Slot, list[int]]]
    long_chunk: bool  # a long prompt's chunk is among them
    long_waiting: bool  # a long prompt still has tokens to fill after this step

    @property
    def tokens(self) -> int:
        return sum(len(chunk) for _, chunk in self.chunks)


class PrefillPolicy:
    """Which prompt chunks go into each step, and the time share of long prompts beside decoding streams.

    The share is kept as a balance (`credit_s`): a step that carried a long prompt's chunk while
    others were decoding costs the long prompt PAYBACK times its duration; steps without one pay it
    back. A chunk goes in only when the balance is not negative, so over the fill the streams keep
    1 - share of the time. Nothing accrues while no long prompt waits: a long prompt gets no burst
    of saved-up time.
    """

    def __init__(self, n_batch: int, n_parallel: int, stats: dict[str, float]) -> None:
        # One chunk of a prompt, at most: room for it beside the other slots' decode tokens in any step.
        self.chunk = n_batch - n_parallel + 1
        self.stats = stats
        self.credit_s = 0.0
        self.s_per_token: float | None = None  # an EMA of a prompt token's decode time

    def is_long(self, prompt_tokens: int) -> bool:
        """Whether a prompt with this many tokens still to fill goes in chunks, sharing the time."""
        return prompt_tokens > self.chunk

    def seat_long(self, *, streams_decoding: bool) -> None:
        """A long prompt was seated: while streams decode, they get their share before its first chunk too.

        The first chunk's time is estimated from the prompts filled so far, so the whole wait for
        this prompt's first token keeps the streams' share.
        """
        if streams_decoding and self.s_per_token is not None:
            first_chunk_s = self.s_per_token * self.chunk
            self.credit_s = min(self.credit_s, -first_chunk_s * PAYBACK)

    def fill(self, active: list[Slot], room: int, *, generating: bool) -> Fill:
        """The chunks for a step with `room` tokens left beside its decode tokens; `generating`: streams decode."""
        long_ready = not generating or self.credit_s >= 0
        chunks: list[tuple[Slot, list[int]]] = []
        long_chunk = False
        short_tokens = 0
        filling = [(slot, slot.request) for slot in active if slot.request is not None and slot.request.prompt_rest]
        for slot, request in sorted(filling, key=lambda pair: _order(pair[1])):
            is_long = request.long_prompt  # its last chunk too: the streams pay for all of it
            chunk = request.prompt_rest[: self.chunk]
            if len(chunk) > room or (
                not is_long and short_tokens and short_tokens + len(chunk) > SHORT_PROMPTS_PER_STEP_TOKENS
            ):
                continue
            if is_long and (long_chunk or not long_ready):
                continue
            long_chunk = long_chunk or is_long
            short_tokens += 0 if is_long else len(chunk)
            request.prompt_rest = request.prompt_rest[len(chunk) :]
            chunks.append((slot, chunk))
            room -= len(chunk)
        long_waiting = any(request.long_prompt and request.prompt_rest for _, request in filling)
        return Fill(chunks, long_chunk, long_waiting)

    def account(self, seconds: float, fill: Fill, *, generating: bool) -> None:
        """Account one decode call's `seconds` between the streams and a long prompt waiting to be filled."""
        if fill.tokens >= ESTIMATE_MIN_TOKENS:
            per_token = seconds / fill.tokens
            previous = self.s_per_token
            self.s_per_token = per_token if previous is None else 0.7 * previous + 0.3 * per_token
        if fill.long_chunk and generating:
            self.credit_s -= seconds * PAYBACK
            self.stats["long_prefill_chunks"] += 1
            self.stats["long_prefill_s"] += seconds
        elif fill.long_waiting and generating:
            self.credit_s = min(0.0, self.credit_s + seconds)
            self.stats["decode_s_while_long_waits"] += seconds
        elif not fill.long_waiting:
            self.credit_s = 0.0


def _order(request: SlotRequest) -> tuple[bool, float]:
    """The order prompts take a step's room in: short prompts (one chunk) before long ones, then by admission.

    A short prompt's whole fill is its time to first token. Among prompts of a kind, the one seated
    first goes first, so a prompt left out of a step (no room, or enough short ones already) is ahead
    of everything seated after it: requests coming and going in lower slots cannot keep it waiting.
    """
    return (request.long_prompt, request.admitted_at)
