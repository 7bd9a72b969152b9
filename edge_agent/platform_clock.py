"""The platform's clock as this gateway estimates it, from the round-trips of its command-report batches.

The platform stamps the ack of a batch that carries command reports with its own clock (``Ack.at``). A batch
published at ``t0`` and acknowledged at ``t1`` (this machine's clock) was answered somewhere between, so the
offset to add to this machine's clock lies in ``[at - t1, at - t0]``. The estimate is the upper end of the
narrowest interval among the last few (the shortest round-trip): the corrected clock is never behind the
platform's, so a command's expiry is judged at worst one round-trip early, never late.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable

import structlog

from plant.wire import now_us

log = structlog.get_logger(__name__)

_PENDING = 256  # batches awaiting their ack whose send time is kept


class PlatformClock:
    """This machine's clock corrected by its estimated offset to the platform's.

    Args:
        clock: this machine's clock, µs since the epoch (a seam: tests give a skewed one).
        window: how many recent round-trips the estimate is chosen from.
    """

    def __init__(self, clock: Callable[[], int] = now_us, window: int = 8) -> None:
        self.clock = clock
        self._sent: OrderedDict[str, int] = OrderedDict()
        self._samples: deque[tuple[int, int]] = deque(maxlen=window)  # (round-trip, offset's upper bound), µs
        self._offset = 0

    @property
    def known(self) -> bool:
        """Whether an ack has given an estimate yet (before that the offset is 0)."""
        return bool(self._samples)

    def offset_us(self) -> int:
        """µs to add to this machine's clock for the platform's."""
        return self._offset

    def now(self) -> int:
        """The platform's time as estimated here, µs."""
        return self.clock() + self._offset

    def sent(self, batch: str) -> int:
        """Remember when ``batch`` was published (this machine's clock); returns that time."""
        t0 = self.clock()
        self._sent[batch] = t0
        while len(self._sent) > _PENDING:
            self._sent.popitem(last=False)
        return t0

    def answered(self, batch: str, platform_us: int | None) -> None:
        """The ack of ``batch`` came, stamped with the platform's clock (None: an ack without one)."""
        t0 = self._sent.pop(batch, None)
        if t0 is None or platform_us is None:
            return
        t1 = self.clock()
        if t1 < t0:  # this machine's clock stepped back meanwhile: the interval means nothing
            return
        self._samples.append((t1 - t0, platform_us - t0))
        offset = min(self._samples)[1]
        if abs(offset - self._offset) > 1_000_000 or len(self._samples) == 1:
            log.info("platform_clock_offset", offset_ms=round(offset / 1000, 1),
                     round_trip_ms=round((t1 - t0) / 1000, 1))
        self._offset = offset
