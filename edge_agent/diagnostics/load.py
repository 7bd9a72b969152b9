"""Load awareness: diagnose less often under pressure, healthy machines first, so ingestion never falls behind.

Three signals, sampled about once a second:

* cpu: the agent process's CPU time per wall second, as a share of the cores it may run on;
* busy: the share of wall time the inference thread spent scoring windows;
* backlog: readings waiting for their outbox commit, as a share of ``max_pending_items`` (the point where the
  connectors start waiting): the one sign that ingestion itself is falling behind.

Pressure is the largest of the three relative to its limit (``EDGE_LOAD_*_HIGH``). Above 1, the diagnosis
period of healthy machines doubles, up to ``EDGE_LOAD_MAX_STRETCH``; only when it is at the maximum and the
pressure stays does the period of unhealthy machines (anomalous, faulty, RUL near its alert horizon, or not
yet diagnosed) start doubling too. Below 0.6 the periods halve again, unhealthy machines first. The gap
between 0.6 and 1 keeps the stretch from flapping.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from edge_agent import metrics

RELAX_BELOW = 0.6


def _cores() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(slots=True)
class Load:
    """One sample of the three load signals, each a share in [0, 1] (cpu may exceed 1 briefly)."""

    cpu: float
    busy: float
    backlog: float


class LoadGovernor:
    """Turns load samples into diagnosis period multipliers for healthy and unhealthy machines.

    Args:
        cpu_high: process CPU share counted as pressure.
        busy_high: inference busy share counted as pressure.
        backlog_high: ingestion backlog share counted as pressure.
        max_stretch: largest period multiplier.
    """

    def __init__(self, *, cpu_high: float, busy_high: float, backlog_high: float, max_stretch: int) -> None:
        self.cpu_high = cpu_high
        self.busy_high = busy_high
        self.backlog_high = backlog_high
        self.max_stretch = max_stretch
        self.healthy = 1
        self.unhealthy = 1
        self.last = Load(0.0, 0.0, 0.0)
        self._cores = _cores()
        self._wall = time.monotonic()
        self._cpu = time.process_time()
        self._busy = 0.0
        self.publish()

    def stretch(self, healthy: bool) -> int:
        """The period multiplier for a machine of this health."""
        return self.healthy if healthy else self.unhealthy

    def add_busy(self, seconds: float) -> None:
        """Count time the inference thread spent scoring."""
        self._busy += seconds

    def sample(self, backlog: float, min_interval_s: float = 1.0) -> Load | None:
        """Measure CPU and busy share since the last sample and update the stretch; None when too soon."""
        wall, cpu = time.monotonic(), time.process_time()
        elapsed = wall - self._wall
        if elapsed < min_interval_s:
            return None
        load = Load(
            cpu=(cpu - self._cpu) / elapsed / self._cores,
            busy=min(self._busy / elapsed, 1.0),
            backlog=backlog,
        )
        self._wall, self._cpu, self._busy = wall, cpu, 0.0
        self.update(load)
        return load

    def pressure(self, load: Load) -> float:
        """The largest load signal relative to its limit."""
        return max(load.cpu / self.cpu_high, load.busy / self.busy_high, load.backlog / self.backlog_high)

    def update(self, load: Load) -> None:
        """One step of the stretch policy for this sample."""
        self.last = load
        p = self.pressure(load)
        if p > 1.0:
            if self.healthy < self.max_stretch:
                self.healthy = min(self.healthy * 2, self.max_stretch)
            elif self.unhealthy < self.max_stretch:
                self.unhealthy = min(self.unhealthy * 2, self.max_stretch)
        elif p < RELAX_BELOW:
            if self.unhealthy > 1:
                self.unhealthy = max(self.unhealthy // 2, 1)
            elif self.healthy > 1:
                self.healthy = max(self.healthy // 2, 1)
        self.publish()

    def publish(self) -> None:
        """The load and the stretch to their gauges."""
        metrics.LOAD.labels("cpu").set(self.last.cpu)
        metrics.LOAD.labels("busy").set(self.last.busy)
        metrics.LOAD.labels("backlog").set(self.last.backlog)
        metrics.DIAGNOSIS_STRETCH.labels("healthy").set(self.healthy)
        metrics.DIAGNOSIS_STRETCH.labels("unhealthy").set(self.unhealthy)
