"""Replay: data-set rows one per tick at a chosen speed, looping at the end, stamped by a source's clock.

``Replay`` walks a list of rows and starts again at the first after the last. ``ticks`` paces the walk on an
absolute schedule (tick n is due at start + n / rate), so a slow tick delays the next one without the rate
drifting. ``SourceClock`` is the clock of one simulated device: the wall clock, optionally skewed or reset to
the year 2000 as a PLC's clock is after a power loss.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Generic, TypeVar

from factory_twin.simulator.errors import ScenarioError

T = TypeVar("T")

BAD_CLOCK_EPOCH_US = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp() * 1_000_000)
"""Where a bad clock starts: 2000-01-01T00:00:00Z, the reset value of many PLC real-time clocks."""


class Replay(Generic[T]):
    """Rows replayed in order, one per call, starting again at the first after the last.

    Args:
        rows: the rows to replay; at least one.
        start: index of the first row to give (taken modulo the number of rows).
    """

    def __init__(self, rows: Sequence[T], start: int = 0) -> None:
        if not rows:
            raise ScenarioError("nothing to replay: no rows")
        self._rows = rows
        self._next = start % len(rows)
        self.loops = 0

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def position(self) -> int:
        """Index of the row the next call gives."""
        return self._next

    def next(self) -> T:
        """The next row; after the last, the first again."""
        row = self._rows[self._next]
        self._next += 1
        if self._next == len(self._rows):
            self._next = 0
            self.loops += 1
        return row


@dataclass
class SourceClock:
    """The clock of one simulated source: wall clock plus a skew, or a clock reset to 2000-01-01.

    Args:
        skew_s: seconds added to the wall clock (negative: the source's clock is behind).
        bad: stamp with 2000-01-01 plus the time since the clock was made, as a PLC after a power loss.
    """

    skew_s: float = 0.0
    bad: bool = False
    _started: float = field(default_factory=time.monotonic, repr=False)

    def now_us(self) -> int:
        """This source's idea of now, µs since the Unix epoch (UTC)."""
        skew_us = round(self.skew_s * 1_000_000)
        if self.bad:
            return BAD_CLOCK_EPOCH_US + round((time.monotonic() - self._started) * 1_000_000) + skew_us
        return time.time_ns() // 1_000 + skew_us

    def now(self) -> datetime:
        """This source's idea of now as an aware UTC datetime (for OPC-UA DataValues)."""
        return datetime.fromtimestamp(self.now_us() / 1_000_000, tz=UTC)


async def ticks(rate_hz: float, limit: int | None = None) -> AsyncIterator[int]:
    """Tick numbers 0, 1, 2, … each at its due time start + n / rate_hz; ``limit`` ticks, or forever."""
    if not rate_hz > 0:
        raise ScenarioError(f"speed must be above 0, not {rate_hz}")
    loop = asyncio.get_running_loop()
    start = loop.time()
    n = 0
    while limit is None or n < limit:
        # Behind schedule the delay is negative: sleep(0) still lets the other tasks run.
        await asyncio.sleep(max(0.0, start + n / rate_hz - loop.time()))
        yield n
        n += 1
