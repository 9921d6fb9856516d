"""Which prompt chunks a step takes (prefill.py): whole short prompts, and none kept waiting by others."""

import itertools

from inference.engine import Job, Sampling
from inference.engine.prefill import SHORT_PROMPTS_PER_STEP_TOKENS, PrefillPolicy
from inference.engine.slots import QueuedItem, Slot, SlotRequest, new_stats

_seated = itertools.count()


def seated(slot: Slot, prompt_tokens: int, policy: PrefillPolicy) -> Slot:
    """`slot` with a request of `prompt_tokens` to fill, admitted after every one seated before it."""
    job = Job(model_id="m", kind="completion", prompt="x", sampling=Sampling())
    tokens = list(range(prompt_tokens))
    slot.request = SlotRequest(QueuedItem(job, None, tokens, None), None, tokens, 8, float(next(_seated)),
                               long_prompt=policy.is_long(prompt_tokens))  # fmt: skip
    return slot


def taken(policy: PrefillPolicy, slots: list[Slot], room: int) -> list[tuple[int, int]]:
    fill = policy.fill([s for s in slots if s.request], room, generating=True)
    return [(slot.seq_id, len(chunk)) for slot, chunk in fill.chunks]


def test_a_prompt_that_found_no_room_goes_first_in_the_next_step():
    # A client whose requests come and go in slot 0 (long prompts, one token each) must not keep the
    # prompt in slot 1 waiting: in slot order alone, slot 0's next prompt would take the room every step.
    policy = PrefillPolicy(n_batch=512, n_parallel=8, stats=new_stats())
    slots = [Slot(i) for i in range(8)]
    seated(slots[0], 400, policy)
    seated(slots[1], 200, policy)
    assert taken(policy, slots, room=policy.chunk) == [(0, 400)]  # 200 more does not fit beside it
    slots[0].request = None
    seated(slots[0], 400, policy)  # the next request of the same client, in the same slot
    assert taken(policy, slots, room=policy.chunk) == [(1, 200)]
    assert taken(policy, slots, room=policy.chunk) == [(0, 400)]


def test_short_prompts_go_in_whole_and_a_long_one_in_fixed_chunks_after_them():
    policy = PrefillPolicy(n_batch=64, n_parallel=2, stats=new_stats())
    assert policy.chunk == 63 and policy.is_long(64) and not policy.is_long(63)
    slots = [seated(Slot(0), 150, policy), seated(Slot(1), 40, policy)]
    assert taken(policy, slots, room=64) == [(1, 40)]  # the long prompt's chunk does not fit beside it
    slots[1].request = None
    assert [taken(policy, slots, room=64) for _ in range(3)] == [[(0, 63)], [(0, 63)], [(0, 24)]]


def test_short_prompts_that_arrive_together_go_in_a_few_per_step_in_slot_order():
    # Eight 30-token prompts at once (KAREN's conversations after a turn they all ended together): in one
    # step each would wait for all eight; a few per step, the first start decoding while the rest fill.
    policy = PrefillPolicy(n_batch=512, n_parallel=8, stats=new_stats())
    slots = [seated(Slot(i), 30, policy) for i in range(8)]
    steps = []
    while any(s.request.prompt_rest for s in slots):
        steps.append(taken(policy, slots, room=policy.chunk))
    assert steps == [[(0, 30), (1, 30)], [(2, 30), (3, 30)], [(4, 30), (5, 30)], [(6, 30), (7, 30)]]
    assert all(sum(n for _, n in step) <= SHORT_PROMPTS_PER_STEP_TOKENS for step in steps)


def test_tiny_prompts_share_a_step_and_one_kept_back_goes_before_newcomers():
    policy = PrefillPolicy(n_batch=512, n_parallel=8, stats=new_stats())
    slots = [Slot(i) for i in range(8)]
    for i in (1, 2, 3, 4, 5):
        seated(slots[i], 12, policy)
    assert taken(policy, slots, room=policy.chunk) == [(1, 12), (2, 12), (3, 12), (4, 12), (5, 12)]  # 60 tokens
    seated(slots[6], 40, policy)
    seated(slots[7], 40, policy)
    assert taken(policy, slots, room=policy.chunk) == [(6, 40)]
    seated(slots[0], 40, policy)  # a newcomer in a lower slot: the prompt kept back goes first
    assert taken(policy, slots, room=policy.chunk) == [(7, 40)]
    assert taken(policy, slots, room=policy.chunk) == [(0, 40)]


def test_a_stream_of_newcomers_in_lower_slots_cannot_keep_a_prompt_waiting():
    # Slots 0-6 keep getting new 40-token prompts (one token each, then the next); slot 7's has waited
    # longest, so it is in the next step whatever the lower slots hold.
    policy = PrefillPolicy(n_batch=512, n_parallel=8, stats=new_stats())
    slots = [seated(Slot(i), 40, policy) for i in range(8)]
    for _ in range(7):
        step = taken(policy, slots, room=policy.chunk)
        for seq_id, _n in step:
            seated(slots[seq_id], 40, policy)  # the same client's next request, seated after slot 7's
    assert [seq_id for seq_id, _ in taken(policy, slots, room=policy.chunk)] == [7]
