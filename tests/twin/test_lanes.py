"""The ingest worker's inbox: a lane per gateway, served in turn."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from twin.lanes import Lanes


def _lanes() -> Lanes[tuple[str, int]]:
    return Lanes(lambda item: item[0])


def test_a_backlog_of_one_gateway_does_not_hold_back_another() -> None:
    lanes = _lanes()
    for i in range(100):
        lanes.put(("flood", i))
    lanes.put(("calm", 0))
    taken = [lanes.get(0) for _ in range(4)]
    assert taken == [("flood", 0), ("calm", 0), ("flood", 1), ("flood", 2)]
    assert lanes.qsize() == 97


def test_each_lane_keeps_its_order() -> None:
    lanes = _lanes()
    for i in range(5):
        lanes.put(("a", i))
        lanes.put(("b", i))
    got = [lanes.get(0) for _ in range(10)]
    assert [i for k, i in got if k == "a"] == list(range(5))
    assert [i for k, i in got if k == "b"] == list(range(5))
    assert lanes.qsize() == 0


def test_get_waits_then_times_out() -> None:
    lanes = _lanes()
    with pytest.raises(queue.Empty):
        lanes.get(0.05)
    with pytest.raises(queue.Empty):
        lanes.get_nowait()
    threading.Timer(0.05, lambda: lanes.put(("a", 1))).start()
    started = time.monotonic()
    assert lanes.get(5) == ("a", 1)
    assert time.monotonic() - started < 4
