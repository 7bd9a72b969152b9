"""Python's cycle collector held off while an ingest worker decodes and stores a group of messages.

A group holds up to tens of thousands of decoded items (pydantic models, rows) at once, all alive until it is
stored. The cycle collector, run every few hundred allocations, walks them again and again as they survive
into older generations: a large share of an ingest worker's CPU (docs/scaling.md). They form no cycles
and are freed by reference counting when the group ends, so nothing is gained by walking them.

``paused()`` disables the collector while any thread is inside it and enables it again when the last one
leaves (the collector is one per process). Should the workers of one process overlap without end, a full
collection runs at least every ``MOST_PAUSED_S`` seconds, so garbage with cycles (from anything else in the
process) still goes. A collector disabled by someone else is left disabled.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections.abc import Iterator

MOST_PAUSED_S = 5.0

_lock = threading.Lock()
_holders = 0
_paused_since = 0.0
_resume = False  # whether the last holder enables the collector again


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Run the block with the cycle collector disabled (see the module)."""
    global _holders, _paused_since, _resume
    with _lock:
        if _holders == 0:
            _resume = gc.isenabled()
            gc.disable()
            _paused_since = time.monotonic()
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                if _resume:
                    gc.enable()
            elif time.monotonic() - _paused_since > MOST_PAUSED_S:
                _paused_since = time.monotonic()
                gc.collect()
