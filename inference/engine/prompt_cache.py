"""Host-memory prompt cache: the KV of token sequences that had to leave their slot.

A slot keeps the KV of its last request (prompt and answer) until another request
takes the slot. With more conversations than slots, that KV would be lost and the
conversation's next turn, whose prompt starts with it, recomputed from scratch. So
before a slot is reused its sequence state is copied here (llama.cpp's
`llama_state_seq_get_data`), and a later request whose prompt shares a longer prefix
with a stored sequence than with any free slot gets it copied back into a slot
instead of recomputing it. As in llama.cpp's server (`--cache-ram`), an entry moves
back into the slot it is restored to; the oldest entries go first past the byte limit.

`PrefixReuse` is the scheduler's policy over it: where a newly admitted request's KV
prefix comes from (its slot, another slot, or this cache) and when a slot is copied
out. Used by one scheduler thread only; not thread-safe.
"""

import ctypes
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from inference.engine.llama_runner import LlamaRunner

logger = logging.getLogger(__name__)
STASH_MIN_TOKENS = 8  # a slot about to lose fewer cached tokens than this is not copied out
# A request waits for a prompt being filled beside it when that prompt will hold this many more of its
# tokens than any KV at hand: about 0.2 s of prefill on 2 cores, for a step or two of waiting.
WAIT_FOR_TOKENS = 64


@dataclass(eq=False)
class CachedPrompt:
    tokens: list[int]
    state: ctypes.Array  # llama_state_seq_get_data of a sequence holding exactly `tokens`


_PREFIX_STEP = 256


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two token lists.

    Compared a slice of _PREFIX_STEP at a time (in C), then token by token in the slice that
    differs: a long shared prefix (a system prompt, a conversation) costs a few microseconds
    per thousand tokens on the scheduler thread, where a Python loop over every token cost 20.
    """
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i : i + _PREFIX_STEP] == b[i : i + _PREFIX_STEP]:
        i += _PREFIX_STEP
    for x, y in zip(a[i : i + _PREFIX_STEP], b[i : i + _PREFIX_STEP], strict=False):
        if x != y:
            break
        i += 1
    return min(i, n)


class PromptCache:
    """Sequence states keyed by their tokens, least recently stored first out, within `limit_bytes`."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = max(0, limit_bytes)
        self._entries: OrderedDict[int, CachedPrompt] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        return self.limit_bytes > 0

    def best(self, tokens: list[int]) -> tuple[CachedPrompt | None, int]:
        """The stored sequence sharing the longest prefix with `tokens`, and that length."""
        best, best_len = None, 0
        for entry in self._entries.values():
            if entry.tokens and tokens and entry.tokens[0] == tokens[0]:
                n = common_prefix(entry.tokens, tokens)
                if n > best_len:
                    best, best_len = entry, n
        return best, best_len

    def covers(self, tokens: list[int]) -> bool:
        """Whether a stored sequence already starts with all of `tokens`."""
        return any(common_prefix(entry.tokens, tokens) == len(tokens) for entry in self._entries.values())

    def put(self, tokens: list[int], state: ctypes.Array) -> bool:
        """Store a sequence's state; False if it alone is over the limit."""
        if len(state) > self.limit_bytes:
            return False
        for key, entry in list(self._entries.items()):  # stored prefixes of it are now redundant
            if common_prefix(entry.tokens, tokens) == len(entry.tokens):
                self._drop(key)
        while self._entries and self.bytes + len(state) > self.limit_bytes:
            self._drop(next(iter(self._entries)))
        entry = CachedPrompt(list(tokens), state)
        self._entries[id(entry)] = entry
        self.bytes += len(state)
        return True

    def take(self, entry: CachedPrompt) -> None:
        """Remove an entry that is being restored into a slot."""
        self._drop(id(entry))

    def _drop(self, key: int) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= len(entry.state)


class KVSlot(Protocol):
    seq_id: int
    cached: list[int]  # tokens whose KV the slot's sequence holds


S = TypeVar("S", bound=KVSlot)


def choose_slot(free: list[S], tokens: list[int], *, busy: set[int]) -> S:
    """The free slot for a prompt: busy slots kept consecutive, then fewest KV tokens dropped, then most kept.

    `busy`: the seq ids of the slots holding a request. Consecutive first: llama.cpp decodes
    only consecutive sequences of a per-slot KV cache in one ubatch, so requests in slots 0 and
    2 cost two passes over the weights per step where slots 0 and 1 cost one. Then the slot whose
    KV past the prompt's prefix is shortest (fewer than STASH_MIN_TOKENS count as none, as for
    the prompt cache): a new prompt takes an empty slot before one whose KV another conversation
    may come back for, as llama.cpp's server takes its least recently used slot, and copies a
    shared prefix from where it is. Then the longest prefix already in place: a conversation's
    next turn goes back to its own slot. Ties go to the lowest.
    """
    limit = len(tokens) - 1  # at least one prompt token is always decoded anew

    def cost(slot: S) -> tuple[int, int, int, int]:
        taken = busy | {slot.seq_id}
        runs = sum(1 for seq_id in taken if seq_id - 1 not in taken)
        kept = min(common_prefix(slot.cached, tokens), limit)
        dropped = len(slot.cached) - kept
        return runs, dropped if dropped >= STASH_MIN_TOKENS else 0, -kept, slot.seq_id

    return min(free, key=cost)


class PrefixReuse:
    """Brings the longest available KV prefix into a slot; copies slots out before they are overwritten.

    Counts into `stats` (the scheduler's): slot_copies, prompt_cache_stored, _hits,
    _tokens_restored, _entries and _bytes.
    """

    def __init__(self, runner: LlamaRunner, cache: PromptCache, stats: dict[str, float]) -> None:
        self.runner, self.cache, self.stats = runner, cache, stats

    def worth_waiting(self, tokens: list[int], slots: Sequence[KVSlot], coming: list[list[int]]) -> bool:
        """Whether a prompt now being filled (`coming`) will hold WAIT_FOR_TOKENS more of `tokens` than any KV at hand.

        Then the request waits for that fill and copies the prefix, instead of computing it
        beside it: the conversations of one assistant start with the same system prompt, and
        several arriving together would each compute it. The caller passes only prompts that
        go in whole (one chunk), so the wait is a step or two.
        """
        # The scheduler asks this of every waiting request at every step while one is filled: each comparison
        # is bounded by the coming prompts' length (one chunk at most), however long the cached sequences are.
        gain = min(max((common_prefix(prompt, tokens) for prompt in coming), default=0), len(tokens) - 1)
        if gain < WAIT_FOR_TOKENS:
            return False
        head = tokens[:gain]  # nothing past it can change the answer
        at_hand = max((common_prefix(s.cached, head) for s in slots), default=0)
        if self.cache.enabled:
            at_hand = max(at_hand, self.cache.best(head)[1])
        return gain - at_hand >= WAIT_FOR_TOKENS

    def bring_longest(self, slot: KVSlot, others: Sequence[KVSlot], tokens: list[int]) -> bool:
        """Copy into `slot` the KV of another slot (free or busy) or a cached prompt sharing more of `tokens`.

        A copy moves the whole stored sequence, so it must save enough prefill to pay for
        itself: at least 4 tokens and a 64th of the copied length. True if one was copied.
        """
        limit = len(tokens) - 1  # at least one prompt token is always decoded anew
        have = min(common_prefix(slot.cached, tokens), limit)
        donor_len, donor = max(
            ((common_prefix(s.cached, tokens), s) for s in others), key=lambda pair: pair[0], default=(0, None)
        )
        donor_len = min(donor_len, limit)
        entry, entry_len = self.cache.best(tokens) if self.cache.enabled else (None, 0)
        entry_len = min(entry_len, limit)
        from_cache = entry is not None and entry_len >= donor_len
        if from_cache:
            source_tokens, gain = entry.tokens, entry_len - have
        elif donor is not None:
            source_tokens, gain = donor.cached, donor_len - have
        else:
            return False
        if gain < max(4, len(source_tokens) // 64):
            return False
        state = entry.state if from_cache else self.runner.save_sequence(donor.seq_id)  # the donor keeps its own
        if state is None:
            return False
        self.stash(slot, 0)
        if from_cache:
            self.cache.take(entry)
        restored = self.runner.restore_sequence(slot.seq_id, state)
        slot.cached = list(source_tokens) if restored else []
        self._count_cache()
        if not restored:
            logger.warning("could not copy a prompt of %d tokens into slot %d", len(source_tokens), slot.seq_id)
            return False
        if from_cache:
            self.stats["prompt_cache_hits"] += 1
            self.stats["prompt_cache_tokens_restored"] += entry_len
        else:
            self.stats["slot_copies"] += 1
        return True

    def stash(self, slot: KVSlot, keep: int) -> None:
        """Copy a slot's sequence into the prompt cache before it loses all but `keep` of its tokens."""
        cache = self.cache
        if not cache.enabled or len(slot.cached) - keep < STASH_MIN_TOKENS or cache.covers(slot.cached):
            return
        state = self.runner.save_sequence(slot.seq_id)
        if state is not None and cache.put(slot.cached, state):
            self.stats["prompt_cache_stored"] += 1
        self._count_cache()

    def _count_cache(self) -> None:
        self.stats["prompt_cache_entries"] = len(self.cache)
        self.stats["prompt_cache_bytes"] = self.cache.bytes
