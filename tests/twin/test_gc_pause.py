"""The cycle collector paused while ingest workers store a group, and always enabled again."""

from __future__ import annotations

import gc
import threading
from typing import Any

import pytest

from twin import gc_pause


def test_paused_inside_and_enabled_after_even_on_error() -> None:
    seen: list[bool] = []

    def group() -> None:
        with gc_pause.paused():
            seen.append(gc.isenabled())
            raise RuntimeError("a bug in the group")

    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        group()
    assert seen == [False]
    assert gc.isenabled()


def test_enabled_again_only_when_the_last_worker_leaves() -> None:
    inside, leave = threading.Event(), threading.Event()

    def other() -> None:
        with gc_pause.paused():
            inside.set()
            leave.wait(5)

    t = threading.Thread(target=other)
    t.start()
    inside.wait(5)
    with gc_pause.paused():
        pass
    assert not gc.isenabled()  # the other worker is still storing its group
    leave.set()
    t.join(5)
    assert gc.isenabled()


def test_a_collector_disabled_by_someone_else_stays_disabled() -> None:
    gc.disable()
    try:
        with gc_pause.paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_workers_that_overlap_without_end_still_collect(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gc_pause, "MOST_PAUSED_S", 0.0)
    runs: list[str] = []

    def seen(phase: str, info: dict[str, Any]) -> None:
        if phase == "start" and info["generation"] == 2:
            runs.append(phase)

    gc.callbacks.append(seen)
    try:
        with gc_pause.paused():
            with gc_pause.paused():  # another worker's group, ending while this one goes on
                pass
            assert runs
            assert not gc.isenabled()
    finally:
        gc.callbacks.remove(seen)
    assert gc.isenabled()
