"""Why an alert is active, as a sentence with its numbers and units, for the person who reads it.

Each rule kind says what it saw (twin/alerts/rules.py builds a ``Verdict`` with a value, its unit, the limit it
crossed and one of these sentences), e.g.::

    tool_wear 212 min is above its HI limit of 200 min
    torque is rising 6.2 N·m/s over 5 s, faster than the limit of 6 N·m/s
    the fault model predicts OSF with 87 % probability (alerts from 60 %)
    RUL 38 ± 9 cycles, below the 50 cycles horizon

Times are written in UTC with the zone named, so a sentence read anywhere means one moment.
"""

from __future__ import annotations

from plant.wire import from_us

US = 1_000_000


def num(x: float) -> str:
    """A number as people write it: at most four significant digits, no exponent for plant values."""
    if x == 0:
        return "0"
    if abs(x) >= 1e5 or abs(x) < 1e-3:
        return f"{x:.3g}"
    return f"{x:.4g}"


def qty(x: float, unit: str) -> str:
    """A number with its unit: ``212 min``, ``0.31 g``, ``1.2`` (no unit)."""
    return f"{num(x)} {unit}".rstrip()


def clock(ts_us: int) -> str:
    """A time of day in UTC, ``14:03:07 UTC``."""
    return f"{from_us(ts_us):%H:%M:%S} UTC"


def limit(prop: str, value: float, unit: str, name: str, bound: float) -> str:
    """A value past a HI/HIHI/LO/LOLO limit."""
    word = "below" if name.startswith("LO") else "above"
    return f"{prop} {qty(value, unit)} is {word} its {name} limit of {qty(bound, unit)}"


def rate(prop: str, per_s: float, unit: str, window_s: float, max_rate: float) -> str:
    """A value changing faster than its rate limit."""
    word = "rising" if per_s > 0 else "falling"
    return (
        f"{prop} is {word} {qty(abs(per_s), unit)} over {num(window_s)} s, "
        f"faster than the limit of {qty(max_rate, unit)}"
    )


def stale(prop: str, age_s: float, after_s: float, last_good: int | None) -> str:
    """No good value for too long."""
    since = f"; the last good one came at {clock(last_good)}" if last_good else "; none has come yet"
    return f"no good value of {prop} for {age_s:.0f} s (alerts after {num(after_s)} s){since}"


def bad_quality(prop: str, bad_s: float, since: int) -> str:
    """A value reported with bad quality."""
    return f"{prop} has reported bad quality for {bad_s:.0f} s, since {clock(since)}"


def fault(label: str, probability: float, alert_from: float, source: str) -> str:
    """A fault mode predicted."""
    who = "the platform's fault model" if source == "platform" else "the fault model"
    return f"{who} predicts {label} with {probability:.0%} probability (alerts from {alert_from:.0%})"


def anomaly(score: float, threshold: float, ratio: float, source: str) -> str:
    """An anomaly score over its threshold."""
    who = "platform" if source == "platform" else "edge"
    over = f"{num(score / threshold)}× its threshold {num(threshold)}" if threshold > 0 else "over its threshold"
    alert_at = f" (alerts above {num(ratio)}×)" if ratio != 1.0 else ""
    return f"{who} anomaly score {num(score)} is {over}{alert_at}"


def whole(x: float) -> str:
    """A count as people say it: whole from 10 up (``47``), with a decimal below (``4.7``)."""
    return f"{x:.0f}" if abs(x) >= 10 else f"{x:.2g}"


def rul(value: float, low: float | None, high: float | None, unit: str, horizon: float) -> str:
    """A remaining useful life below its horizon, with its interval."""
    spread = ""
    if low is not None and high is not None and high >= low:
        spread = f" ± {whole((high - low) / 2)}"
    return f"RUL {whole(value)}{spread} {unit}, below the {qty(horizon, unit)} horizon".replace("  ", " ")


def combined(kind: str, parts: list[str]) -> str:
    """An all/any rule: the sentences of the rules that hold."""
    return f" {'and' if kind == 'all' else 'or'} ".join(parts) if parts else "the combined rules hold"
