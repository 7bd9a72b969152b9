"""The platform's clock as this gateway estimates it, from the round-trips of its command-report batches.

The platform stamps the ack of a batch that carries command reports with its own clock (``Ack.at``). A batch
published at ``t0`` and acknowledged at ``t1`` was answered somewhere between, so the platform's time now lies
within ``at + (now - t1)`` and ``at + (now - t0)``. The estimate is the upper end of the narrowest of the last
few such intervals (the shortest round-trip): the corrected clock is never behind the platform's, so a
command's expiry is judged at worst one round-trip early, never late. The times here are taken on a monotonic
clock, so the estimate holds when this machine's wall clock is set or stepped (NTP coming back, a person);
the wall clock only serves before the first ack.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

import structlog

from plant.wire import now_us

log = structlog.get_logger(__name__)

_PENDING = 256  # batches awaiting their ack whose send time is kept


def _monotonic_us() -> int:
    return time.monotonic_ns() // 1000


class PlatformClock:
    """This machine's clock corrected to the platform's.

    Args:
        clock: this machine's wall clock, µs since the epoch, used until the first estimate (a seam: tests give
            a skewed one).
        monotonic: a clock that never steps, µs (for the time since each round-trip).
        window: how many recent round-trips the estimate is chosen from.
    """

    def __init__(self, clock: Callable[[], int] = now_us, monotonic: Callable[[], int] = _monotonic_us,
                 window: int = 8) -> None:
        self.clock = clock
        self.monotonic = monotonic
        self._sent: OrderedDict[str, int] = OrderedDict()
        self._samples: deque[tuple[int, int]] = deque(maxlen=window)  # (round-trip, platform - monotonic), µs
        self._base: int | None = None  # the platform's time minus the monotonic clock, once estimated

    @property
    def known(self) -> bool:
        """Whether an ack has given an estimate yet."""
        return self._base is not None

    def offset_us(self) -> int:
        """µs to add to this machine's wall clock for the platform's (0 before the first estimate)."""
        return 0 if self._base is None else self.now() - self.clock()

    def now(self) -> int:
        """The platform's time as estimated here, µs (this machine's wall clock before the first estimate)."""
        return self.clock() if self._base is None else self.monotonic() + self._base

    def sent(self, batch: str) -> int:
        """Remember when ``batch`` was published; returns the time to put in it (this machine's wall clock)."""
        self._sent[batch] = self.monotonic()
        while len(self._sent) > _PENDING:
            self._sent.popitem(last=False)
        return self.clock()

    def answered(self, batch: str, platform_us: int | None) -> None:
        """The ack of ``batch`` came, stamped with the platform's clock (None: an ack without one)."""
        t0 = self._sent.pop(batch, None)
        if t0 is None or platform_us is None:
            return
        t1 = self.monotonic()
        first = self._base is None
        self._samples.append((t1 - t0, platform_us - t0))
        base = min(self._samples)[1]
        if first or abs(base - (self._base or 0)) > 1_000_000:
            log.info("platform_clock_offset", offset_ms=round((self.monotonic() + base - self.clock()) / 1000, 1),
                     round_trip_ms=round((t1 - t0) / 1000, 1))
        self._base = base
