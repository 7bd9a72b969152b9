"""Flood control: each gateway may send so many values per second, so none can crowd out the others.

A token bucket per gateway: ``rate`` items a second flow in up to ``burst``. A batch is admitted when the
bucket holds as many tokens as the batch has items (or is full, for a batch larger than the burst: it then
leaves the bucket in debt). Otherwise the whole batch is refused, before any database work, with an ack saying
``over_budget`` and when to send again; the agent keeps the batch in its outbox and waits (edge_agent/uplink.py).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

MAX_GATEWAYS = 10_000  # buckets kept; beyond, idle (full) ones are forgotten, and refusals counted as "other"


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class GatewayBudget:
    """Token buckets of values (items) per second, one per gateway.

    Args:
        rate: items per second each gateway may send; 0 disables the budget.
        burst: the most a gateway may send at once after a quiet spell.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(burst, rate)
        self.clock = clock
        self.refused: Counter[str] = Counter()  # batches refused per gateway
        self._buckets: dict[str, _Bucket] = {}
        self._reported: dict[str, float] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether a budget applies."""
        return self.rate > 0

    def take(self, gateway: str, items: int) -> float | None:
        """Spend ``items`` tokens of ``gateway``; None when admitted, else the seconds to wait before retrying."""
        if not self.enabled:
            return None
        now = self.clock()
        with self._lock:
            b = self._buckets.get(gateway)
            if b is None:
                if len(self._buckets) >= MAX_GATEWAYS:
                    self._forget_idle(now)
                b = self._buckets[gateway] = _Bucket(self.burst, now)
            b.tokens = min(self.burst, b.tokens + (now - b.at) * self.rate)
            b.at = now
            needed = min(float(items), self.burst)
            if b.tokens >= needed:
                b.tokens -= items
                return None
            self.refused[gateway if gateway in self.refused or len(self.refused) < MAX_GATEWAYS else "other"] += 1
            return max((needed - b.tokens) / self.rate, 0.001)

    def _forget_idle(self, now: float) -> None:
        full = [g for g, b in self._buckets.items() if b.tokens + (now - b.at) * self.rate >= self.burst]
        for g in full:
            del self._buckets[g]

    def should_report(self, gateway: str, every_s: float = 10.0) -> bool:
        """Whether to log a refusal of ``gateway`` now: once per ``every_s`` at most."""
        now = self.clock()
        with self._lock:
            if now - self._reported.get(gateway, float("-inf")) < every_s:
                return False
            if len(self._reported) >= MAX_GATEWAYS:
                self._reported.clear()
            self._reported[gateway] = now
            return True

    def refused_batches(self) -> dict[str, int]:
        """Batches refused so far, per gateway."""
        with self._lock:
            return dict(self.refused)
