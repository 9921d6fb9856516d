"""The wait queue's order: turns between owners, and taking the first admissible request."""

import time
from dataclasses import dataclass, field

from inference.engine.fair_queue import FairQueue


@dataclass(eq=False)
class Item:
    owner: str
    name: str
    lane: str = "interactive"
    queued_at: float = field(default_factory=time.perf_counter)


def test_owners_take_turns_and_pop_first_skips_what_must_wait_without_losing_its_place():
    queue: FairQueue[Item] = FairQueue()
    for owner, name in [("a", "a1"), ("a", "a2"), ("b", "b1"), ("c", "c1")]:
        queue.append(Item(owner, name))
    assert [i.name for i in queue.projected()] == ["a1", "b1", "c1", "a2"]
    # a1 must wait: b1 goes, and b's turn moves to the back, as popleft would move it.
    assert queue.pop_first(lambda item: item.name != "a1").name == "b1"
    assert [i.name for i in queue.projected()] == ["a1", "c1", "a2"]
    assert queue.pop_first(lambda item: False) is None and len(queue) == 3
    assert queue.pop_first(lambda item: True).name == "a1"
    assert [i.name for i in queue.projected()] == ["c1", "a2"] and len(queue) == 2
