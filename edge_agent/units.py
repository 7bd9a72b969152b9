"""A small table of engineering units and the affine conversions between units of one dimension.

Each unit maps to (dimension, factor, offset) with ``base = value * factor + offset`` in the dimension's base
unit (K, Pa, Hz, m, s, m³/s, A, V, W, kg/s, m/s², N·m, m/s, 1). Units the table does not know still pass when
the binding and the property name the same unit.
"""

from __future__ import annotations

import math

from edge_agent.errors import ConfigError

_F = 5.0 / 9.0
_UNITS: dict[str, tuple[str, float, float]] = {
    "K": ("temperature", 1.0, 0.0),
    "°C": ("temperature", 1.0, 273.15),
    "°F": ("temperature", _F, 273.15 - 32.0 * _F),
    "°R": ("temperature", _F, 0.0),
    "Pa": ("pressure", 1.0, 0.0),
    "hPa": ("pressure", 1e2, 0.0),
    "kPa": ("pressure", 1e3, 0.0),
    "MPa": ("pressure", 1e6, 0.0),
    "mbar": ("pressure", 1e2, 0.0),
    "bar": ("pressure", 1e5, 0.0),
    "psi": ("pressure", 6894.757293168, 0.0),
    "Hz": ("frequency", 1.0, 0.0),
    "kHz": ("frequency", 1e3, 0.0),
    "rpm": ("frequency", 1.0 / 60.0, 0.0),
    "rad/s": ("frequency", 1.0 / (2.0 * math.pi), 0.0),
    "m": ("length", 1.0, 0.0),
    "cm": ("length", 1e-2, 0.0),
    "mm": ("length", 1e-3, 0.0),
    "µm": ("length", 1e-6, 0.0),
    "in": ("length", 0.0254, 0.0),
    "s": ("time", 1.0, 0.0),
    "ms": ("time", 1e-3, 0.0),
    "min": ("time", 60.0, 0.0),
    "h": ("time", 3600.0, 0.0),
    "m³/s": ("flow", 1.0, 0.0),
    "m³/h": ("flow", 1.0 / 3600.0, 0.0),
    "l/s": ("flow", 1e-3, 0.0),
    "l/min": ("flow", 1e-3 / 60.0, 0.0),
    "A": ("current", 1.0, 0.0),
    "mA": ("current", 1e-3, 0.0),
    "V": ("voltage", 1.0, 0.0),
    "mV": ("voltage", 1e-3, 0.0),
    "kV": ("voltage", 1e3, 0.0),
    "W": ("power", 1.0, 0.0),
    "kW": ("power", 1e3, 0.0),
    "kg/s": ("mass_flow", 1.0, 0.0),
    "lbm/s": ("mass_flow", 0.45359237, 0.0),
    "m/s²": ("acceleration", 1.0, 0.0),
    "g": ("acceleration", 9.80665, 0.0),
    "m/s": ("velocity", 1.0, 0.0),
    "mm/s": ("velocity", 1e-3, 0.0),
    "N·m": ("torque", 1.0, 0.0),
    "kN·m": ("torque", 1e3, 0.0),
    "lbf·ft": ("torque", 1.3558179483314, 0.0),
    "%": ("ratio", 0.01, 0.0),
    "‰": ("ratio", 0.001, 0.0),
}

_ALIASES = {
    "degC": "°C",
    "C": "°C",
    "celsius": "°C",
    "℃": "°C",
    "degF": "°F",
    "F": "°F",
    "fahrenheit": "°F",
    "℉": "°F",
    "degR": "°R",
    "R": "°R",
    "kelvin": "K",
    "psia": "psi",
    "psig": "psi",
    "RPM": "rpm",
    "1/min": "rpm",
    "r/min": "rpm",
    "um": "µm",
    "μm": "µm",
    "m3/s": "m³/s",
    "m3/h": "m³/h",
    "L/min": "l/min",
    "lpm": "l/min",
    "L/s": "l/s",
    "m/s2": "m/s²",
    "m/s^2": "m/s²",
    "Nm": "N·m",
    "N.m": "N·m",
    "N m": "N·m",
    "N*m": "N·m",
    "kNm": "kN·m",
    "sec": "s",
    "hr": "h",
}


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
