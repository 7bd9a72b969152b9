"""Replay: data-set rows one per tick at a chosen speed, looping at the end, stamped by a source's clock.

``Replay`` walks a list of rows and starts again at the first after the last. ``PacedReplay`` spreads each row
over several ticks, as the demo does so that wear and degradation unfold at a pace a person can follow: numbers
move from one row to the next in a straight line (a counter that resets, such as tool wear after a tool change,
steps), or every row is held for its ticks when one row stands for one cycle of the machine.

``ticks`` paces the walk on an absolute schedule (tick n is due at start + n / rate), so a slow tick delays the
next one without the rate drifting. ``SourceClock`` is the clock of one simulated device: the wall clock,
optionally skewed or reset to the year 2000 as a PLC's clock is after a power loss.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
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


class PacedReplay:
    """Rows replayed ``ticks_per_row`` ticks each, looping at the end.

    Args:
        rows: the rows (property → value); at least one.
        ticks_per_row: ticks each row lasts (≥ 1).
        start: index of the first row.
        hold: True: each row's values stay for its ticks; False: floats go in a straight line to the next row's.
        counters: properties that only step down (a counter reset): held when the next row's value is lower.
    """

    def __init__(
        self,
        rows: Sequence[Mapping[str, object]],
        ticks_per_row: float,
        start: int = 0,
        *,
        hold: bool = False,
        counters: Collection[str] = (),
    ) -> None:
        if not rows:
            raise ScenarioError("nothing to replay: no rows")
        if ticks_per_row < 1:
            raise ScenarioError(f"a paced replay needs at least one tick per row, not {ticks_per_row}")
        self._rows = rows
        self.ticks_per_row = ticks_per_row
        self.hold = hold
        self.counters = frozenset(counters)
        self._pos = float(start % len(rows))  # rows, fractional
        self.loops = 0

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def position(self) -> int:
        """Index of the row the next call is in."""
        return int(self._pos)

    def next(self) -> dict[str, object]:
        """This tick's values: the row's, or on the way to the next row's."""
        i, frac = int(self._pos), self._pos - int(self._pos)
        row, after = self._rows[i], self._rows[(i + 1) % len(self._rows)]
        if self.hold or frac == 0:
            values = dict(row)
        else:
            values = {k: self._between(k, v, after.get(k), frac) for k, v in row.items()}
        self._pos += 1.0 / self.ticks_per_row
        if self._pos >= len(self._rows) - 1e-9:
            self._pos = 0.0
            self.loops += 1
        return values

    def _between(self, key: str, a: object, b: object, frac: float) -> object:
        if type(a) is not float or type(b) is not float:  # text, integers, flags, a missing value: held
            return a
        if key in self.counters and b < a:  # a reset happens at the row boundary, not as a slow slide
            return a
        return a + (b - a) * frac


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
