"""A queue with one lane per gateway, served in turn, so one gateway's backlog does not delay the others.

An ingest worker's MQTT client receives whatever the broker hands it, in the broker's order: a gateway that
sends a burst would put every other gateway's batches behind its own. The worker takes its next message from
the next gateway's lane instead (round robin); within a lane the broker's order holds, and the store is
idempotent and keeps each property's latest value by timestamp, so serving lanes in turn changes no result.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Lanes(Generic[T]):
    """``put`` and ``get`` like ``queue.Queue``, with a FIFO lane per key served in turn.

    Args:
        key: the lane of an item (its gateway).
    """

    def __init__(self, key: Callable[[T], str]) -> None:
        self.key = key
        self._lanes: dict[str, deque[T]] = {}
        self._turn: deque[str] = deque()  # lanes with items, in serving order
        self._size = 0
        self._ready = threading.Condition()

    def put(self, item: T) -> None:
        """Append ``item`` to its lane."""
        k = self.key(item)
        with self._ready:
            lane = self._lanes.get(k)
            if lane is None:
                lane = self._lanes[k] = deque()
                self._turn.append(k)
            lane.append(item)
            self._size += 1
            self._ready.notify()

    def get(self, timeout: float | None = None) -> T:
        """The oldest item of the next lane; ``queue.Empty`` when none comes within ``timeout``."""
        with self._ready:
            if not self._ready.wait_for(lambda: self._size > 0, timeout):
                raise queue.Empty
            k = self._turn.popleft()
            lane = self._lanes[k]
            item = lane.popleft()
            if lane:
                self._turn.append(k)
            else:
                del self._lanes[k]
            self._size -= 1
            return item

    def get_nowait(self) -> T:
        """The oldest item of the next lane; ``queue.Empty`` at once when there is none."""
        return self.get(0)

    def qsize(self) -> int:
        """Items waiting in every lane."""
        with self._ready:
            return self._size
