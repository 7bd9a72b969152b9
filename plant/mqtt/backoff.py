"""Exponential backoff with jitter and a cap, shared by every reconnect loop (MQTT, OPC-UA).

Jitter spreads the reconnects of many gateways (or many sources of one gateway) after a shared outage, so a
restarted server is not hit by every client in the same instant.
"""

from __future__ import annotations

import asyncio
import random


class Backoff:
    """Delays for successive retries: ``initial * factor**n``, capped, each shortened by a random jitter.

    Args:
        initial: first delay in seconds.
        cap: the longest delay in seconds.
        factor: growth per failed attempt.
        jitter: fraction of the delay that is random (0 = none, 1 = anywhere between 0 and the delay).
        rng: random source, for tests.
    """

    def __init__(
        self,
        initial: float = 0.5,
        cap: float = 30.0,
        factor: float = 2.0,
        jitter: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        if initial <= 0 or cap < initial or factor < 1 or not 0 <= jitter <= 1:
            raise ValueError("backoff needs 0 < initial <= cap, factor >= 1 and 0 <= jitter <= 1")
        self.initial = initial
        self.cap = cap
        self.factor = factor
        self.jitter = jitter
        self._rng = rng or random.Random()
        self.attempt = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one more failure."""
        base = min(self.cap, self.initial * self.factor ** min(self.attempt, 64))
        self.attempt += 1
        return base * (1.0 - self.jitter * self._rng.random())

    def reset(self) -> None:
        """Start again from the initial delay (after a connection that worked)."""
        self.attempt = 0

    async def sleep(self) -> float:
        """Sleep for the next delay and return it."""
        delay = self.next_delay()
        await asyncio.sleep(delay)
        return delay
