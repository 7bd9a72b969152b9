"""Admission of uplink items: each value, frame and diagnosis is checked against the twin before it is stored.

A refused item becomes a ``Rejection`` with a short stable code (``reason``) and a sentence for people
(``detail``); the other items of the batch go on. Checks are plain Python on purpose: they run for every
value.

Codes:
    unknown_node      the node is not in the twin
    unknown_property  the node has no such property
    retired           the node or property was removed from the site file
    wrong_type        the value does not fit the property's data type
    not_finite        NaN or infinity
    missing_value     no value, yet quality says good
    ts_in_future      source timestamp further ahead than ``max_future_s``
    ts_too_old        source timestamp before ``min_valid_year`` (PLC clocks reset after power loss)
    out_of_range      a number far outside its property's declared range (``TWIN_INGEST_RANGE_MARGIN`` spans)

The wire checks (``twin.uplink_checks``) run before these and add their own codes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from plant.wire import Diagnosis, Frame, Rejection, Value, to_us
from twin.catalog import CatalogView, PropInfo
from twin.tables import QUALITY_CODES

UNKNOWN_NODE = "unknown_node"
UNKNOWN_PROPERTY = "unknown_property"
RETIRED = "retired"
WRONG_TYPE = "wrong_type"
NOT_FINITE = "not_finite"
MISSING_VALUE = "missing_value"
OUT_OF_RANGE = "out_of_range"
TS_IN_FUTURE = "ts_in_future"
TS_TOO_OLD = "ts_too_old"

_GOOD = QUALITY_CODES["good"]

# (property id, ts, value_num, value_text, quality, server_ts, recv_ts, flags): history row + latest extras
Row = tuple[int, int, float | None, str | None, int, int | None, int | None, str]


@dataclass(frozen=True, slots=True)
class Bounds:
    """The accepted range of source timestamps for one apply.

    Args:
        low: earliest accepted ts, µs.
        high: latest accepted ts, µs.
        max_future_s: how far ahead ``high`` is from now, for messages.
        min_year: the year ``low`` stands for, for messages.
    """

    low: int
    high: int
    max_future_s: float
    min_year: int

    @classmethod
    def at(cls, now_us: int, max_future_s: float, min_year: int) -> Bounds:
        """Bounds for a batch applied at ``now_us``."""
        low = to_us(datetime(min_year, 1, 1, tzinfo=UTC))
        return cls(low, now_us + int(max_future_s * 1_000_000), max_future_s, min_year)


def convert(value: Any, dtype: str) -> tuple[float | None, str | None] | str:
    """Value as (number, text) columns for ``dtype``, or a rejection code."""
    kind = type(value)
    if dtype == "float":
        if kind is float or kind is int:
            return (float(value), None) if math.isfinite(value) else NOT_FINITE
        return WRONG_TYPE
    if dtype == "int":
        if kind is int:
            return float(value), None
        if kind is float:
            if not math.isfinite(value):
                return NOT_FINITE
            return (value, None) if value.is_integer() else WRONG_TYPE
        return WRONG_TYPE
    if dtype == "bool":
        return (1.0 if value else 0.0, None) if kind is bool else WRONG_TYPE
    return (None, value) if kind is str else WRONG_TYPE


def _convert_in_range(value: Any, info: PropInfo) -> tuple[float | None, str | None] | str:
    """``convert``, and a number must lie within the property's plausible range."""
    cols = convert(value, info.dtype)
    num = cols[0] if isinstance(cols, tuple) else None
    if num is not None and info.dtype != "bool" and not info.low <= num <= info.high:
        return OUT_OF_RANGE
    return cols


def _ts_problem(ts: int, bounds: Bounds) -> tuple[str, str] | None:
    if ts > bounds.high:
        return TS_IN_FUTURE, f"timestamp {ts} µs is more than {bounds.max_future_s:g} s in the future"
    if ts < bounds.low:
        return TS_TOO_OLD, f"timestamp {ts} µs is before {bounds.min_year} (source clock reset?)"
    return None


def _missing(view: CatalogView, node: str, prop: str) -> tuple[str, str]:
    if node in view.retired_nodes:
        return RETIRED, f"node {node!r:.80} was removed from the site file"
    if node not in view.nodes:
        return UNKNOWN_NODE, f"node {node!r:.80} is not in the twin"
    if (node, prop) in view.retired_props:
        return RETIRED, f"property {node}.{prop} was removed from its asset type"
    return UNKNOWN_PROPERTY, f"node {node!r:.80} has no property {prop!r:.80}"


def _type_detail(code: str, info: PropInfo, value: Any) -> str:
    if code == OUT_OF_RANGE:
        plausible = f"{info.low:g} … {info.high:g}"
        return f"{info.node}.{info.name}: {value!r:.40} is far outside its range (plausible {plausible})"
    if code == NOT_FINITE:
        return f"{info.node}.{info.name}: {value!r} is not a finite number"
    return f"{info.node}.{info.name} expects {info.dtype}, got {type(value).__name__} {value!r:.40}"


def admit_values(values: list[Value], view: CatalogView, bounds: Bounds) -> tuple[list[Row], list[Rejection]]:
    """Rows to store for the acceptable values, and rejections for the others."""
    rows: list[Row] = []
    rejected: list[Rejection] = []
    props = view.props
    low, high = bounds.low, bounds.high
    isfinite = math.isfinite
    for i, v in enumerate(values):
        info = props.get((v.node, v.prop))
        if info is None:
            code, detail = _missing(view, v.node, v.prop)
            rejected.append(Rejection(kind="value", index=i, reason=code, detail=detail))
            continue
        ts = v.ts
        if ts > high or ts < low:
            code, detail = _ts_problem(ts, bounds) or ("", "")
            detail = f"{v.node}.{v.prop}: {detail}"
            rejected.append(Rejection(kind="value", index=i, reason=code, detail=detail))
            continue
        quality = QUALITY_CODES[v.quality]
        raw = v.value
        if type(raw) is float and info.dtype == "float" and isfinite(raw) and info.low <= raw <= info.high:
            # the common case, without a call: a finite float for a float property
            rows.append((info.id, ts, raw, None, quality, v.server_ts, v.recv_ts, ",".join(v.flags)))
            continue
        if raw is None:
            if quality == _GOOD:
                rejected.append(Rejection(kind="value", index=i, reason=MISSING_VALUE,
                                          detail=f"{v.node}.{v.prop}: no value but quality 'good'"))
                continue
            num, text = None, None
        else:
            cols = _convert_in_range(raw, info)
            if isinstance(cols, str):
                detail = _type_detail(cols, info, raw)
                rejected.append(Rejection(kind="value", index=i, reason=cols, detail=detail))
                continue
            num, text = cols
        rows.append((info.id, ts, num, text, quality, v.server_ts, v.recv_ts, ",".join(v.flags)))
    return rows, rejected


def admit_frames(
    frames: list[Frame], view: CatalogView, bounds: Bounds
) -> tuple[list[Frame], list[Rejection]]:
    """Frames to store (the highest revision per node and ts) and rejections for the others."""
    best: dict[tuple[str, int], Frame] = {}
    rejected: list[Rejection] = []
    for i, f in enumerate(frames):
        problem = _frame_problem(f, view, bounds)
        if problem is not None:
            rejected.append(Rejection(kind="frame", index=i, reason=problem[0], detail=problem[1]))
            continue
        key = (f.node, f.ts)
        if key not in best or f.revision > best[key].revision:
            best[key] = f
    return list(best.values()), rejected


def _frame_problem(f: Frame, view: CatalogView, bounds: Bounds) -> tuple[str, str] | None:
    if f.node not in view.nodes:
        return _missing(view, f.node, "")
    ts_problem = _ts_problem(f.ts, bounds)
    if ts_problem is not None:
        return ts_problem[0], f"frame of {f.node}: {ts_problem[1]}"
    for name, raw in f.values.items():
        info = view.props.get((f.node, name))
        if info is None:
            code, detail = _missing(view, f.node, name)
            return code, f"frame of {f.node}: {detail}"
        if raw is not None:
            cols = _convert_in_range(raw, info)
            if isinstance(cols, str):
                return cols, f"frame of {f.node}: {_type_detail(cols, info, raw)}"
    return None


_DIAG_FLOATS = ("confidence", "score", "threshold", "probability", "rul", "rul_low", "rul_high")


def admit_diagnoses(
    diagnoses: list[Diagnosis], view: CatalogView, bounds: Bounds
) -> tuple[list[Diagnosis], list[Rejection]]:
    """Diagnoses to store (first of each node, task and ts) and rejections for the others."""
    keep: dict[tuple[str, str, int], Diagnosis] = {}
    rejected: list[Rejection] = []
    for i, d in enumerate(diagnoses):
        problem = _missing(view, d.node, "") if d.node not in view.nodes else _ts_problem(d.ts, bounds)
        if problem is None:
            bad = [f for f in _DIAG_FLOATS if (x := getattr(d, f)) is not None and not math.isfinite(x)]
            if bad:
                problem = NOT_FINITE, f"diagnosis {d.task} of {d.node}: {', '.join(bad)} not finite"
        if problem is not None:
            rejected.append(Rejection(kind="diagnosis", index=i, reason=problem[0], detail=problem[1]))
            continue
        keep.setdefault((d.node, d.task, d.ts), d)
    return list(keep.values()), rejected


def diagnosis_fields(d: Diagnosis) -> dict[str, float | str]:
    """The fields of a diagnosis stored as twin properties ``diag.<task>.<field>``."""
    out: dict[str, float | str] = {"confidence": d.confidence}
    for name in ("score", "threshold", "probability", "rul", "rul_low", "rul_high"):
        x = getattr(d, name)
        if x is not None:
            out[name] = float(x)
    if d.label is not None:
        out["label"] = d.label
    return out
