"""The prompt cache's bookkeeping: longest match, byte limit, redundant prefixes, when to wait (no model needed)."""

import ctypes

from inference.engine.prompt_cache import STASH_MIN_TOKENS, PrefixReuse, PromptCache, choose_slot, common_prefix
from inference.engine.slots import Slot, new_stats


def state(n: int) -> ctypes.Array:
    return (ctypes.c_ubyte * n)()


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([5], [1]) == 0


def test_common_prefix_at_every_length_and_place_of_the_difference():
    # Slices of 256 are compared at once: differences at, before and after their edges, and lists of
    # every length around them, against the token-by-token definition.
    for length in (0, 1, 255, 256, 257, 511, 512, 513, 1000):
        base = list(range(length))
        for other_length in {length, length + 1, max(0, length - 1), length + 300}:
            other = base[:other_length] + list(range(length, other_length))
            assert common_prefix(base, other) == common_prefix(other, base) == min(length, other_length)
        for place in {0, 1, 254, 255, 256, 257, 300, 511, 512, 513, length - 1} - {-1}:
            if place < length:
                changed = [*base[:place], -1, *base[place + 1 :]]
                assert common_prefix(base, changed) == common_prefix(changed, base) == place


def test_best_is_the_longest_shared_prefix():
    cache = PromptCache(1000)
    cache.put([1, 2, 3, 4], state(10))
    cache.put([1, 2, 9, 9, 9], state(10))
    cache.put([7, 2, 3, 4], state(10))
    entry, length = cache.best([1, 2, 3, 5])
    assert entry.tokens == [1, 2, 3, 4] and length == 3
    assert cache.best([8, 8]) == (None, 0)


def test_the_oldest_entries_leave_first_past_the_byte_limit():
    cache = PromptCache(25)
    cache.put([1, 1], state(10))
    cache.put([2, 2], state(10))
    cache.put([3, 3], state(10))  # 30 bytes would not fit: [1, 1] goes
    assert len(cache) == 2 and cache.bytes == 20
    assert cache.best([1, 1]) == (None, 0)
    assert cache.best([3, 3])[1] == 2


def test_an_entry_over_the_whole_limit_is_refused_and_evicts_nothing():
    cache = PromptCache(25)
    cache.put([1, 1], state(10))
    assert not cache.put([2, 2], state(26))
    assert len(cache) == 1 and cache.bytes == 10


def test_a_longer_sequence_replaces_its_stored_prefixes():
    cache = PromptCache(1000)
    cache.put([1, 2], state(10))
    cache.put([1, 2, 3], state(10))
    assert len(cache) == 1 and cache.covers([1, 2]) and cache.covers([1, 2, 3]) and not cache.covers([1, 2, 4])


def test_take_removes_the_entry_being_restored():
    cache = PromptCache(1000)
    cache.put([1, 2], state(10))
    entry, _ = cache.best([1, 2])
    cache.take(entry)
    assert len(cache) == 0 and cache.bytes == 0
    assert not PromptCache(0).enabled


def test_a_request_waits_only_for_a_fill_that_brings_it_enough_more_than_it_has():
    # 64 tokens (WAIT_FOR_TOKENS) more of its prefix than any slot or cache entry holds, or it goes on at once.
    reuse = PrefixReuse(None, PromptCache(1000), new_stats())
    system = list(range(100))
    request = [*system, 500, 501]
    idle = Slot(0, cached=list(range(30)))  # holds the first 30 of them
    assert reuse.worth_waiting(request, [idle], coming=[[*system, 900]])  # 100 coming vs 30 at hand
    assert not reuse.worth_waiting(request, [idle], coming=[[*range(93), 900]])  # 93 - 30 < 64
    assert not reuse.worth_waiting(request, [idle], coming=[])
    reuse.cache.put(list(range(80)), state(10))  # now 80 at hand, from the cache
    assert not reuse.worth_waiting(request, [idle], coming=[[*system, 900]])
    # Never for more than the request can reuse: its last token is always decoded anew.
    reuse = PrefixReuse(None, PromptCache(0), new_stats())
    assert reuse.worth_waiting(list(range(66)), [Slot(1)], coming=[list(range(200))])
    assert not reuse.worth_waiting(list(range(64)), [Slot(1)], coming=[list(range(200))])


def _slots(*contents: list[int]) -> list[Slot]:
    return [Slot(i, list(tokens)) for i, tokens in enumerate(contents)]


def test_choose_slot_keeps_the_busy_slots_consecutive_first():
    # Slot 3 holds this very prompt, but slots 1 and 2 are busy: only 0 and 3 keep them together, and
    # 5 (empty) would split them.
    prompt = list(range(100))
    slots = _slots(list(range(500, 600)), [], [], prompt, [], [])
    free = [slots[0], slots[3], slots[4], slots[5]]
    assert choose_slot(free, prompt, busy={1, 2}).seq_id == 3
    assert choose_slot(free, [7, 8, 9], busy={1, 2}).seq_id == 0  # drops 100 tokens, as slot 3 would: the lower
    assert choose_slot([slots[0], slots[4], slots[5]], prompt, busy={1, 2, 3}).seq_id == 4  # empty, beside 3
    # Slots 0 and 2 busy: slot 1 closes the gap, whatever it holds.
    assert choose_slot([slots[1], slots[3], slots[4]], [9] * 50, busy={0, 2}).seq_id == 1


def test_choose_slot_takes_an_empty_slot_before_dropping_another_request_s_kv():
    system = list(range(24))  # a chat template's opening, shared by every prompt
    earlier = system + list(range(1000, 1040))
    slots = _slots(earlier, [], [])
    assert choose_slot(slots, system + list(range(2000, 2010)), busy=set()).seq_id == 1
    # Every slot holds something: the one that drops the fewest tokens.
    slots = _slots(earlier, system + list(range(3000, 3100)), system + list(range(4000, 4020)))
    assert choose_slot(slots, [*system, 5], busy=set()).seq_id == 2


def test_choose_slot_sends_a_conversation_back_to_its_own_slot():
    system = list(range(24))
    turn_one = system + list(range(1000, 1200))
    next_turn = turn_one + list(range(5000, 5030))
    slots = _slots(system + list(range(3000, 3040)), [], turn_one, [])
    assert choose_slot(slots, next_turn, busy=set()).seq_id == 2
    # Dropping fewer than STASH_MIN_TOKENS counts as dropping none: a repeated prompt whose answer
    # differs from the slot's in its last tokens still goes back there rather than to an empty slot.
    answered = turn_one + [7] * (STASH_MIN_TOKENS - 1)
    slots = _slots([], answered)
    assert choose_slot(slots, [*turn_one, 8], busy=set()).seq_id == 1
    slots = _slots([], turn_one + [7] * (STASH_MIN_TOKENS + 1))
    assert choose_slot(slots, [*turn_one, 8], busy=set()).seq_id == 0
