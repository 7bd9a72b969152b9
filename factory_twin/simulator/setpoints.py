"""Setpoints of the simulated machines: a value the twin may write (a pump's speed) and the signals it drives.

The data sets were recorded at one operating point. A machine whose feed declares a setpoint serves it as a
writable OPC-UA variable that starts at the nominal value and is never written by the replay: only a client
(the edge agent carrying a setpoint command) changes it. Each tick the replay reads it back and scales the
signals it drives by ``(actual / nominal) ** exponent``, where ``actual`` follows the written value with a
first-order lag (a pump does not change speed at once). At the nominal value the replay is the data set's own.

For a centrifugal pump the affinity laws give the exponents: flow ∝ n, head (pressure) ∝ n²; the imbalance
force (vibration) and the load torque (motor current) also grow with n².
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from factory_twin.simulator.errors import ScenarioError
from plant.wire import Scalar


@dataclass(frozen=True)
class Setpoint:
    """A writable value of a simulated machine and the signals it drives.

    Args:
        nominal: the value the data set was recorded at (the variable's initial value).
        unit: its unit.
        drives: property → exponent of ``actual / nominal`` its value is multiplied by.
        lag_s: time constant (seconds of replay) of the actual value following a written one.
    """

    nominal: float
    unit: str
    drives: Mapping[str, float]
    lag_s: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.nominal) and self.nominal > 0):
            raise ScenarioError(f"a setpoint's nominal value must be above 0, not {self.nominal}")
        if not self.lag_s > 0:
            raise ScenarioError(f"a setpoint's lag must be above 0 s, not {self.lag_s}")


@dataclass(frozen=True)
class Driven:
    """A signal a setpoint drives, with its binding's scale and offset (the replay holds raw values)."""

    prop: str
    exponent: float
    scale: float = 1.0
    offset: float = 0.0


class Drive:
    """One setpoint of one machine during a run: the written value, the actual one following it.

    Args:
        setpoint: what the setpoint is and drives.
        driven: the bound signals it drives on this machine.
    """

    def __init__(self, setpoint: Setpoint, driven: tuple[Driven, ...]) -> None:
        self.setpoint = setpoint
        self.driven = driven
        self.target = setpoint.nominal
        self.actual = setpoint.nominal
        self._at: float | None = None

    @property
    def ratio(self) -> float:
        """The actual value against the nominal one."""
        return self.actual / self.setpoint.nominal

    def follow(self, target: Scalar | None, elapsed_s: float) -> bool:
        """Move the actual value towards ``target`` for the replay time since the last call; True if the
        target changed. A value that is not a positive finite number (nothing a client could write through
        the agent's checks) leaves the last target in force."""
        changed = False
        if isinstance(target, int | float) and not isinstance(target, bool) and math.isfinite(target) and target > 0:
            changed = float(target) != self.target
            self.target = float(target)
        if self._at is not None:
            step = max(0.0, elapsed_s - self._at)
            self.actual = self.target + (self.actual - self.target) * math.exp(-step / self.setpoint.lag_s)
        self._at = elapsed_s
        return changed

    def apply(self, values: dict[str, Scalar | None]) -> None:
        """Scale the driven signals of one tick's raw values in place (a missing or non-float value is left)."""
        ratio = self.ratio
        if ratio == 1.0:
            return
        for d in self.driven:
            raw = values.get(d.prop)
            if type(raw) is float:
                factor = ratio**d.exponent
                # the physical value raw × scale + offset scales; the raw value sent is what gives it back
                values[d.prop] = raw * factor + d.offset * (factor - 1.0) / d.scale
