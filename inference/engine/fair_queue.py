"""A model's wait queue: lanes by priority, turns between owners within a lane, ageing for batch.

Interactive requests take a free slot before batch ones; a batch request that has
waited `batch_age_s` goes first anyway, so batch work never starves. Within a lane each
owner (a token) takes one turn in order, so a token with 200 waiting requests delays
another token's one request by at most one of its own. One owner may hold at most
`owner_share` of the queue, so it cannot fill it for the others either.

Not thread-safe: the scheduler's lock guards the counts, its thread the order.
"""

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar

LANES = ("interactive", "batch")


class Queued(Protocol):
    @property
    def owner(self) -> str: ...

    @property
    def lane(self) -> str: ...

    queued_at: float


T = TypeVar("T", bound=Queued)


class FairQueue(Generic[T]):
    def __init__(self, *, batch_age_s: float = 30.0) -> None:
        self.batch_age_s = batch_age_s
        self._lanes: dict[str, OrderedDict[str, deque[T]]] = {lane: OrderedDict() for lane in LANES}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __iter__(self) -> Iterator[T]:
        for owners in self._lanes.values():
            for items in owners.values():
                yield from items

    def append(self, item: T) -> None:
        self._owners(item).setdefault(item.owner, deque()).append(item)
        self._size += 1

    def remove(self, item: T) -> None:
        owners = self._owners(item)
        items = owners[item.owner]
        items.remove(item)
        if not items:
            del owners[item.owner]
        self._size -= 1

    def _owners(self, item: T) -> "OrderedDict[str, deque[T]]":
        """The owners' queues of `item`'s lane (an unknown lane counts as interactive)."""
        return self._lanes[item.lane if item.lane in self._lanes else "interactive"]

    def depth(self, lane: str) -> int:
        return sum(len(items) for items in self._lanes[lane].values())

    def popleft(self) -> T:
        """The next request to admit; its owner's turn moves to the back of its lane."""
        item = _pop(self._lanes, time.perf_counter(), self.batch_age_s)
        if item is None:
            raise IndexError("pop from an empty FairQueue")
        self._size -= 1
        return item

    def pop_first(self, admissible: Callable[[T], bool]) -> T | None:
        """The first request, in admission order, that `admissible` accepts (None if none); its owner's turn
        moves to the back of its lane, as with popleft."""
        for item in self.projected():
            if admissible(item):
                self.remove(item)
                owners = self._owners(item)
                if item.owner in owners:
                    owners.move_to_end(item.owner)
                return item
        return None

    def projected(self) -> list[T]:
        """Every waiting request in the order it would be admitted if nothing else arrived."""
        lanes = {
            lane: OrderedDict((o, deque(items)) for o, items in owners.items()) for lane, owners in self._lanes.items()
        }
        now, order = time.perf_counter(), []
        while (item := _pop(lanes, now, self.batch_age_s)) is not None:
            order.append(item)
        return order


def _pop(lanes: dict[str, OrderedDict[str, deque[T]]], now: float, batch_age_s: float) -> T | None:
    batch, interactive = lanes["batch"], lanes["interactive"]
    if batch and (not interactive or min(items[0].queued_at for items in batch.values()) <= now - batch_age_s):
        owners = batch
    elif interactive:
        owners = interactive
    else:
        return None
    owner, items = next(iter(owners.items()))
    item = items.popleft()
    if items:
        owners.move_to_end(owner)
    else:
        del owners[owner]
    return item


def owner_limit(max_queue: int, share: float) -> int:
    """How many waiting requests one owner may hold: its share of the queue, at least one."""
    return max(1, math.ceil(max_queue * share))
