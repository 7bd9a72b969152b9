"""The checks a setpoint write must pass, shared by the platform (before it sends) and the agent (before it writes).

Each check answers None (the value may be written) or a ``Refusal`` with a stable reason code and a sentence for
people. Nothing is clamped or rounded: a value that is not exactly acceptable is refused.

    not_writable   the property is not declared writable, or has no binding to write to
    wrong_type     not a number (a string, a bool, null), or a fraction for an int property
    not_finite     NaN or infinite
    out_of_limits  outside the declared engineering limits
    too_fast       changes faster than the declared maximum rate from the last desired value
    expired        the command's expiry has passed
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from plant.site import DataType, PropertyDef, Writable

NOT_WRITABLE = "not_writable"
WRONG_TYPE = "wrong_type"
NOT_FINITE = "not_finite"
OUT_OF_LIMITS = "out_of_limits"
TOO_FAST = "too_fast"
EXPIRED = "expired"
ROLE_TOO_LOW = "role_too_low"
UNCONFIRMED = "unconfirmed"
NOT_OWNER = "not_owner"
BAD_STATUS = "bad_status"
READBACK_DIFFERS = "readback_differs"
NO_READBACK = "no_readback"
INTERRUPTED = "interrupted"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a write is refused: a stable code and a sentence."""

    reason: str
    detail: str


def check_value(value: object, pdef: PropertyDef, rules: Writable) -> Refusal | None:
    """Type, finiteness and limits of ``value`` for a writable property."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return Refusal(WRONG_TYPE, f"a {pdef.dtype} value is needed, got {type(value).__name__}")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return Refusal(OUT_OF_LIMITS, f"the value has {len(str(value))} digits: far outside the limits")
    if not finite:
        return Refusal(NOT_FINITE, f"the value must be a finite number, got {value}")
    if pdef.dtype is DataType.INT and not float(value).is_integer():
        return Refusal(WRONG_TYPE, f"an int value is needed, got {value}")
    low, high = rules.limits
    if not low <= value <= high:
        unit = f" {pdef.unit}" if pdef.unit else ""
        return Refusal(OUT_OF_LIMITS, f"{value}{unit} is outside the limits {low:g} to {high:g}{unit}")
    return None


def check_rate(value: float, rules: Writable, previous: float | None, previous_at_us: int | None,
               now_us: int) -> Refusal | None:
    """The change from the last desired value against ``max_rate`` (units per second)."""
    if rules.max_rate is None or previous is None or previous_at_us is None:
        return None
    elapsed = max((now_us - previous_at_us) / 1e6, 1e-6)
    step = abs(value - previous)
    if step / elapsed > rules.max_rate:
        return Refusal(TOO_FAST, f"a change of {step:g} in {elapsed:.1f} s is over the maximum rate of "
                                 f"{rules.max_rate:g} per second; wait {step / rules.max_rate - elapsed:.0f} s "
                                 f"or take a smaller step")
    return None


def check_expiry(expires_us: int, now_us: int) -> Refusal | None:
    """Refused at or after ``expires_us``."""
    if now_us >= expires_us:
        late = (now_us - expires_us) / 1e6
        return Refusal(EXPIRED, f"the command expired {late:.1f} s ago and was not applied")
    return None
