"""Min/max-preserving downsampling of a property's history, done by the database.

A week of 1 s data is 604,800 points; a chart is at most a few thousand pixels wide. The range is cut into
``buckets`` equal slices and each slice returns its minimum, maximum, mean and count, so every spike survives
however far out the chart is zoomed. When the range holds no more points than buckets, the raw points come
back instead.

Where slices are a minute or an hour wide or more, they are merged from the 1-minute or 1-hour rollups
(twin/history.py) for the whole minutes or hours of the range, and from raw rows for the ragged edges: a week
then costs 168 hourly rows instead of 604,800 raw ones. Without the rollup tables (an older schema) every
slice comes from one GROUP BY over the raw rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session

from twin.errors import InvalidRequest
from twin.tables import HistoryRow, TwinProperty

MAX_BUCKETS = 5000
_ROLLUPS = (("1h", 3_600_000_000), ("1m", 60_000_000))  # coarsest first
_has_rollups: dict[str, bool] = {}  # per database URL: the schema does not change under a running process


@dataclass(frozen=True, slots=True)
class Bucket:
    """One slice of the range: [ts, ts + width) µs.

    Args:
        ts: start of the slice, µs (for raw points, the point's own timestamp).
        min: smallest value in the slice.
        max: largest value.
        mean: average value.
        count: how many points the slice holds.
        worst_quality: the worst quality code in the slice (0 good, 1 uncertain, 2 bad); None where the slice
            came from rollups, which keep no quality.
    """

    ts: int
    min: float
    max: float
    mean: float
    count: int
    worst_quality: int | None


def downsample(
    session: Session, prop: TwinProperty, start_us: int, end_us: int, buckets: int
) -> tuple[list[Bucket], int, bool]:
    """Buckets of ``prop``'s numeric history over [start, end); returns (buckets, width µs, raw?)."""
    if end_us <= start_us:
        raise InvalidRequest("end must be after start")
    if not 1 <= buckets <= MAX_BUCKETS:
        raise InvalidRequest(f"points must be between 1 and {MAX_BUCKETS}")
    h = HistoryRow
    in_range = (h.property_id == prop.id, h.ts >= start_us, h.ts < end_us, h.value_num.is_not(None))
    width = max(1, -(-(end_us - start_us) // buckets))  # ceiling: the last slice ends at or after `end`
    span = next((s for res, s in _ROLLUPS if width >= s and _rollups_here(session)), None)
    if span is None:
        total = session.scalar(select(func.count()).where(*in_range)) or 0
        if total <= buckets:
            rows = session.execute(select(h.ts, h.value_num, h.quality).where(*in_range).order_by(h.ts)).all()
            return [Bucket(ts, v, v, v, 1, q) for ts, v, q in rows if v is not None], 0, True
        return _raw_slices(session, prop, start_us, end_us, start_us, width), width, False
    return _from_rollups(session, prop, start_us, end_us, width, span), width, False


def _rollups_here(session: Session) -> bool:
    url = session.get_bind().engine.url.render_as_string(hide_password=True)
    if url not in _has_rollups:
        _has_rollups[url] = inspect(session.connection()).has_table("twin_history_state")
    return _has_rollups[url]


def _raw_slices(
    session: Session, prop: TwinProperty, lo: int, hi: int, origin: int, width: int
) -> list[Bucket]:
    """Slices of ``width`` counted from ``origin``, over raw rows in [lo, hi)."""
    h = HistoryRow
    slot = ((h.ts - origin) // width).label("slot")  # floor division, rendered for SQLite and PostgreSQL
    stmt = (
        select(slot, func.min(h.value_num), func.max(h.value_num), func.avg(h.value_num), func.count(),
               func.max(h.quality))
        .where(h.property_id == prop.id, h.ts >= lo, h.ts < hi, h.value_num.is_not(None))
        .group_by(slot)
        .order_by(slot)
    )
    return [
        Bucket(origin + int(s) * width, float(v0), float(v1), float(mean), int(n), int(q or 0))
        for s, v0, v1, mean, n, q in session.execute(stmt).all()
    ]


def _from_rollups(
    session: Session, prop: TwinProperty, start_us: int, end_us: int, width: int, span: int
) -> list[Bucket]:
    """Slices merged from whole rollup buckets inside the range and raw rows at its two ragged edges."""
    from twin.history import read_buckets

    res: Literal["1m", "1h"] = "1h" if span == _ROLLUPS[0][1] else "1m"
    inner_lo = -(-start_us // span) * span
    inner_hi = max(inner_lo, end_us // span * span)
    parts = _raw_slices(session, prop, start_us, min(inner_lo, end_us), start_us, width)
    if inner_hi > inner_lo:
        rollups = read_buckets(session.connection(), prop.id, res, inner_lo, inner_hi, "asc", MAX_BUCKETS * 100)
        # a rollup bucket lies wholly in one slice when slices are at least one bucket wide, but not
        # aligned to it: assign it by its start, off by at most one bucket's width at the slice's end
        parts += [
            Bucket(start_us + (b.ts - start_us) // width * width, b.vmin, b.vmax, b.vmean, b.n, None)
            for b in rollups
        ]
    if inner_hi > inner_lo or inner_lo < end_us:
        parts += _raw_slices(session, prop, max(inner_hi, inner_lo), end_us, start_us, width)
    return _merge(parts)


def _merge(parts: list[Bucket]) -> list[Bucket]:
    """Pieces of the same slice (same ``ts``) combined: min of mins, max of maxes, weighted mean."""
    out: dict[int, Bucket] = {}
    for p in parts:
        q = out.get(p.ts)
        if q is None:
            out[p.ts] = p
            continue
        n = q.count + p.count
        quality = None if q.worst_quality is None or p.worst_quality is None else max(q.worst_quality,
                                                                                       p.worst_quality)
        out[p.ts] = Bucket(p.ts, min(q.min, p.min), max(q.max, p.max),
                           (q.mean * q.count + p.mean * p.count) / n, n, quality)
    return [out[k] for k in sorted(out)]
