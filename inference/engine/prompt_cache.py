"""Host-memory prompt cache: the KV of token sequences that had to leave their slot.

A slot keeps the KV of its last request (prompt and answer) until another request
takes the slot. With more conversations than slots, that KV would be lost and the
conversation's next turn, whose prompt starts with it, recomputed from scratch. So
before a slot is reused its sequence state is copied here (llama.cpp's
`llama_state_seq_get_data`), and a later request whose prompt shares a longer prefix
with a stored sequence than with any free slot gets it copied back into a slot
instead of recomputing it. As in llama.cpp's server (`--cache-ram`), an entry moves
back into the slot it is restored to; the oldest entries go first past the byte limit.

Used by one scheduler thread only; not thread-safe.
"""

import ctypes
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(eq=False)
class CachedPrompt:
    tokens: list[int]
    state: ctypes.Array  # llama_state_seq_get_data of a sequence holding exactly `tokens`


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two token lists."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


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

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def _drop(self, key: int) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= len(entry.state)
