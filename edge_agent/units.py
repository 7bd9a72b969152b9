"""A small table of engineering units and the affine conversions between units of one dimension.

Each unit maps to (dimension, factor, offset) with ``base = value * factor + offset`` in the dimension's base
unit (K, Pa, Hz, m, s, m³/s, A, V, W, kg/s, m/s², N·m, m/s, 1). Units the table does not know still pass when
the binding and the property name the same unit.
"""

from __future__ import annotations

import math

from edge_agent.errors import ConfigError

_F = 5.0 / 9.0
# The base unit of each dimension, then its other units with their factor to it.
_SCALES: dict[str, dict[str, float]] = {
    "pressure": {"Pa": 1.0, "hPa": 1e2, "kPa": 1e3, "MPa": 1e6, "mbar": 1e2, "bar": 1e5, "psi": 6894.757293168},
    "frequency": {"Hz": 1.0, "kHz": 1e3, "rpm": 1.0 / 60.0, "rad/s": 1.0 / (2.0 * math.pi)},
    "length": {"m": 1.0, "cm": 1e-2, "mm": 1e-3, "µm": 1e-6, "in": 0.0254},
    "time": {"s": 1.0, "ms": 1e-3, "min": 60.0, "h": 3600.0},
    "flow": {"m³/s": 1.0, "m³/h": 1.0 / 3600.0, "l/s": 1e-3, "l/min": 1e-3 / 60.0},
    "current": {"A": 1.0, "mA": 1e-3},
    "voltage": {"V": 1.0, "mV": 1e-3, "kV": 1e3},
    "power": {"W": 1.0, "kW": 1e3},
    "mass_flow": {"kg/s": 1.0, "lbm/s": 0.45359237},
    "acceleration": {"m/s²": 1.0, "g": 9.80665},
    "velocity": {"m/s": 1.0, "mm/s": 1e-3},
    "torque": {"N·m": 1.0, "kN·m": 1e3, "lbf·ft": 1.3558179483314},
    "ratio": {"%": 0.01, "‰": 0.001},
}
_TEMPERATURES = {"K": (1.0, 0.0), "°C": (1.0, 273.15), "°F": (_F, 273.15 - 32.0 * _F), "°R": (_F, 0.0)}
_UNITS: dict[str, tuple[str, float, float]] = {
    **{unit: ("temperature", factor, offset) for unit, (factor, offset) in _TEMPERATURES.items()},
    **{unit: (dimension, factor, 0.0) for dimension, units in _SCALES.items() for unit, factor in units.items()},
}

# Other spellings of the table's units.
_SPELLINGS: dict[str, tuple[str, ...]] = {
    "°C": ("degC", "C", "celsius", "℃"),
    "°F": ("degF", "F", "fahrenheit", "℉"),
    "°R": ("degR", "R"),
    "K": ("kelvin",),
    "psi": ("psia", "psig"),
    "rpm": ("RPM", "1/min", "r/min"),
    "µm": ("um", "μm"),
    "m³/s": ("m3/s",),
    "m³/h": ("m3/h",),
    "l/min": ("L/min", "lpm"),
    "l/s": ("L/s",),
    "m/s²": ("m/s2", "m/s^2"),
    "N·m": ("Nm", "N.m", "N m", "N*m"),
    "kN·m": ("kNm",),
    "s": ("sec",),
    "h": ("hr",),
}
_ALIASES = {alias: unit for unit, aliases in _SPELLINGS.items() for alias in aliases}


def canonical(unit: str) -> str:
    """The table's spelling of a unit (``degC`` → ``°C``); unknown units come back unchanged."""
    u = unit.strip()
    return _ALIASES.get(u, u)


def affine(from_unit: str, to_unit: str) -> tuple[float, float]:
    """(a, b) such that ``value_in_to = a * value_in_from + b``; ConfigError when the units do not convert."""
    src, dst = canonical(from_unit), canonical(to_unit)
    if src == dst:
        return 1.0, 0.0
    s, d = _UNITS.get(src), _UNITS.get(dst)
    if s is None or d is None:
        unknown = src if s is None else dst
        raise ConfigError(
            f"cannot convert {from_unit!r} to {to_unit!r}: unit {unknown!r} is not in the unit table"
        )
    if s[0] != d[0]:
        raise ConfigError(f"cannot convert {from_unit!r} ({s[0]}) to {to_unit!r} ({d[0]})")
    # base = x*fs + os;  y = (base - od) / fd
    return s[1] / d[1], (s[2] - d[2]) / d[1]
