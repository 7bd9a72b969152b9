"""The read path of the API: the node tree, a node's latest state, a property's history, a node's frames.

Functions take a session and return API schemas (twin/schemas/); routes stay thin. Time-series pages use
keyset paging on the source timestamp (unique per property, and per node for frames): a page costs one index
range scan however deep it is, and rows arriving meanwhile never shift a page: no row is lost or repeated.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy import Row, Select, and_, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from plant.wire import Diagnosis, from_us, to_us
from twin.db import get_or_missing
from twin.errors import InvalidRequest, NotFound
from twin.schemas import (
    DiagnosisPublic,
    FramePublic,
    FramesPage,
    HistoryBucket,
    HistoryPage,
    HistoryPoint,
    NodeForest,
    NodePublic,
    NodeState,
    NodeTree,
    Order,
    PropertyPublic,
    QualityName,
    Resolution,
    Scalar,
)
from twin.scopes import Sites, within
from twin.tables import QUALITY_NAMES, DiagnosisRecord, FramePoint, HistoryRow, TwinNode, TwinProperty

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
# auto resolution: raw values up to this span, 1-minute buckets up to the next (10,080 of them), then 1-hour
AUTO_RAW_UP_TO = timedelta(hours=6)
AUTO_MINUTE_UP_TO = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class SeriesQuery:
    """Which part of a time series to read.

    Args:
        start: Inclusive lower bound of the source timestamp, or None for the beginning.
        end: Exclusive upper bound, or None for now and beyond.
        limit: Most rows on one page.
        order: ``asc`` (oldest first) or ``desc`` (newest first).
        cursor: ``next_cursor`` of the previous page, or None for the first page.
        resolution: ``raw`` values, ``1m`` or ``1h`` buckets, or ``auto`` (chosen from the span, see
            ``pick_resolution``); buckets apply to history only.
    """

    start: datetime | None = None
    end: datetime | None = None
    limit: int = DEFAULT_LIMIT
    order: Order = "asc"
    cursor: str | None = None
    resolution: Resolution = "raw"


# ---- nodes -------------------------------------------------------------------------------------------------


def get_node(session: Session, node_id: str) -> TwinNode:
    """The node ``node_id``; NotFound if there is none."""
    return get_or_missing(session, TwinNode, node_id, f"no node {node_id!r}")


def node_public(node: TwinNode) -> NodePublic:
    """A node table row as the API shows it."""
    return NodePublic(
        id=node.id,
        parent_id=node.parent_id,
        path=node.path,
        kind=node.kind,
        name=node.name,
        type=node.type,
        criticality=node.criticality,
        attributes=node.attributes or {},
        position=node.position or 0,
        retired_at=_dt(node.retired_at),
    )


def node_tree(
    session: Session, root: str | None = None, include_retired: bool = False, *, sites: Sites = None
) -> NodeForest:
    """The whole node tree (of ``sites`` only, if given), or the subtree under ``root``; children in site-file
    order."""
    stmt = select(TwinNode).where(within(TwinNode.path, sites))
    if not include_retired:
        stmt = stmt.where(or_(TwinNode.retired_at.is_(None), TwinNode.id == root))
    if root is not None:
        top = get_node(session, root)
        # path is a prefix of every descendant's path; autoescape: ids may contain '_', a LIKE wildcard
        stmt = stmt.where(TwinNode.path.startswith(top.path, autoescape=True))
    nodes = list(session.scalars(stmt.order_by(TwinNode.position, TwinNode.name, TwinNode.id)))
    children: dict[str | None, list[TwinNode]] = defaultdict(list)
    for node in nodes:
        children[node.parent_id].append(node)

    def build(node: TwinNode) -> NodeTree:
        return NodeTree(
            **node_public(node).model_dump(), children=[build(child) for child in children[node.id]]
        )

    tops = [n for n in nodes if n.id == root] if root is not None else children[None]
    items = [build(n) for n in tops]
    return NodeForest(items=items, count=_count(items))


def _count(trees: list[NodeTree]) -> int:
    return sum(1 + _count(t.children) for t in trees)


# ---- latest state ------------------------------------------------------------------------------------------


def node_state(session: Session, node_id: str) -> NodeState:
    """One node's latest state: its properties' latest values and its latest diagnosis per task."""
    node = get_node(session, node_id)
    props = list(
        session.scalars(select(TwinProperty).where(TwinProperty.node_id == node_id).order_by(TwinProperty.id))
    )
    stamps = [p.ts for p in props if p.ts is not None]
    return NodeState(
        node=node_public(node),
        properties=[property_public(p) for p in props],
        diagnoses=latest_diagnoses(session, node_id),
        updated_ts=from_us(max(stamps)) if stamps else None,
    )


def get_property(session: Session, node_id: str, name: str) -> TwinProperty:
    """The property ``name`` of node ``node_id``; NotFound naming which of the two is missing."""
    prop = session.scalars(
        select(TwinProperty).where(TwinProperty.node_id == node_id, TwinProperty.name == name)
    ).one_or_none()
    if prop is None:
        get_node(session, node_id)
        raise NotFound(f"node {node_id!r} has no property {name!r}")
    return prop


def property_public(prop: TwinProperty) -> PropertyPublic:
    """A property row with its latest value as the API shows it."""
    return PropertyPublic(
        node_id=prop.node_id,
        name=prop.name,
        description=prop.description or "",
        unit=prop.unit or "",
        dtype=prop.dtype,
        range_low=prop.range_low,
        range_high=prop.range_high,
        value=decode_value(prop.dtype, prop.value_num, prop.value_text),
        ts=_dt(prop.ts),
        server_ts=_dt(prop.server_ts),
        stored_ts=_dt(prop.stored_ts),
        quality=None if prop.quality is None else _quality(prop.quality),
        flags=[f for f in prop.flags.replace(",", " ").split() if f] if prop.flags else [],
        retired_at=_dt(prop.retired_at),
    )


def latest_diagnoses(session: Session, node_id: str) -> list[DiagnosisPublic]:
    """The newest diagnosis of each task for a node, by task name."""
    newest = (
        select(DiagnosisRecord.task, func.max(DiagnosisRecord.ts).label("ts"))
        .where(DiagnosisRecord.node_id == node_id)
        .group_by(DiagnosisRecord.task)
        .subquery()
    )
    rows = session.scalars(
        select(DiagnosisRecord)
        .join(newest, and_(DiagnosisRecord.task == newest.c.task, DiagnosisRecord.ts == newest.c.ts))
        .where(DiagnosisRecord.node_id == node_id)
        .order_by(DiagnosisRecord.task)
    )
    return [
        DiagnosisPublic(
            task=d.task,
            ts=from_us(d.ts),
            model=d.model,
            version=d.version,
            source=d.source,
            confidence=d.confidence,
            payload=d.payload or {},
        )
        for d in rows
    ]


# ---- time series -------------------------------------------------------------------------------------------


def property_history(session: Session, node_id: str, name: str, window: SeriesQuery) -> HistoryPage:
    """A page of one property's history within ``window``."""
    prop = get_property(session, node_id, name)
    resolution = pick_resolution(window, prop.dtype)
    if resolution != "raw":
        return _bucket_history(session, prop, window, resolution)
    # plain rows, not ORM objects: building an entity per point would cost more than the query itself
    h = HistoryRow
    stmt = select(h.ts, h.value_num, h.value_text, h.quality).where(h.property_id == prop.id)
    rows, next_cursor = _page(session, stmt, h.ts, window, scope=f"p{prop.id}")
    dtype = prop.dtype
    return HistoryPage(
        node_id=node_id,
        property=name,
        unit=prop.unit or "",
        dtype=dtype,
        order=window.order,
        items=[
            HistoryPoint(
                ts=from_us(ts), value=decode_value(dtype, num, text), quality=_quality(quality)
            )
            for ts, num, text, quality in rows
        ],
        count=len(rows),
        next_cursor=next_cursor,
    )


def pick_resolution(window: SeriesQuery, dtype: str) -> Literal["raw", "1m", "1h"]:
    """The resolution a window is served at: ``auto`` by its span (raw when it has no start)."""
    if window.resolution != "raw" and dtype == "string":
        if window.resolution == "auto":
            return "raw"
        raise InvalidRequest(f"resolution={window.resolution} needs a numeric property, this one is text")
    if window.resolution != "auto":
        return window.resolution
    if window.start is None:
        return "raw"
    span = (window.end or datetime.now(window.start.tzinfo)) - window.start
    if span <= AUTO_RAW_UP_TO:
        return "raw"
    return "1m" if span <= AUTO_MINUTE_UP_TO else "1h"


def _bucket_history(
    session: Session, prop: TwinProperty, window: SeriesQuery, res: Literal["1m", "1h"]
) -> HistoryPage:
    """A page of 1-minute or 1-hour buckets of one property (twin/history.py)."""
    from twin.history import BUCKET_US, read_buckets

    _check_window(window)
    scope = f"p{prop.id}:{res}"
    lo = to_us(window.start) if window.start is not None else 0
    hi = to_us(window.end) if window.end is not None else _FAR_FUTURE_US
    if window.cursor is not None:
        after = decode_cursor(window.cursor, scope, window.order)
        if window.order == "asc":
            lo = max(lo, after + BUCKET_US[res])
        else:
            hi = min(hi, after)
    rows = []
    if lo < hi:
        rows = read_buckets(session.connection(), prop.id, res, lo, hi, window.order, window.limit + 1)
    next_cursor = None
    if len(rows) > window.limit:
        rows = rows[: window.limit]
        next_cursor = encode_cursor(rows[-1].ts, scope, window.order)
    items = [
        HistoryBucket(ts=from_us(b.ts), value=decode_value(prop.dtype, b.vlast, None), min=b.vmin, max=b.vmax,
                      mean=b.vmean, count=b.n)
        for b in rows
    ]
    return HistoryPage(
        node_id=prop.node_id, property=prop.name, unit=prop.unit or "", dtype=prop.dtype, order=window.order,
        resolution=res, items=items, count=len(items), next_cursor=next_cursor,
    )


_FAR_FUTURE_US = 2**62


def node_frames(session: Session, node_id: str, window: SeriesQuery) -> FramesPage:
    """A page of one node's aligned frames within ``window``."""
    get_node(session, node_id)
    f = FramePoint
    stmt = select(f.ts, f.revision, f.values, f.quality).where(f.node_id == node_id)
    rows, next_cursor = _page(session, stmt, f.ts, window, scope=f"f{node_id}")
    return FramesPage(
        node_id=node_id,
        order=window.order,
        items=[
            FramePublic(ts=from_us(r.ts), revision=r.revision, values=r.values or {}, quality=r.quality or {})
            for r in rows
        ],
        count=len(rows),
        next_cursor=next_cursor,
    )


def _page(
    session: Session,
    stmt: Select[*tuple[Any, ...]],
    ts: InstrumentedAttribute[int],
    window: SeriesQuery,
    scope: str,
) -> tuple[list[Row[*tuple[Any, ...]]], str | None]:
    """One keyset page of ``stmt`` ordered on ``ts``, and the cursor of the next page (None on the last)."""
    _check_window(window)
    if window.start is not None:
        stmt = stmt.where(ts >= to_us(window.start))
    if window.end is not None:
        stmt = stmt.where(ts < to_us(window.end))
    if window.cursor is not None:
        after = decode_cursor(window.cursor, scope, window.order)
        stmt = stmt.where(ts > after if window.order == "asc" else ts < after)
    stmt = stmt.order_by(ts.asc() if window.order == "asc" else ts.desc()).limit(window.limit + 1)
    rows = list(session.execute(stmt).all())
    if len(rows) <= window.limit:
        return rows, None
    rows = rows[: window.limit]
    return rows, encode_cursor(rows[-1].ts, scope, window.order)


def _check_window(window: SeriesQuery) -> None:
    if not 1 <= window.limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be between 1 and {MAX_LIMIT}, got {window.limit}")
    if window.start is not None and window.end is not None and window.start >= window.end:
        raise InvalidRequest(
            f"start ({window.start.isoformat()}) must be before end ({window.end.isoformat()})"
        )


def encode_cursor(ts_us: int, scope: str, order: Order) -> str:
    """An opaque cursor: the last timestamp served, bound to the series and the order it was served in."""
    raw = json.dumps({"k": ts_us, "s": scope, "o": order}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, scope: str, order: Order) -> int:
    """The timestamp a cursor resumes after; InvalidRequest if malformed or from another series or order."""
    try:
        data: Any = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        ts_us, cursor_scope, cursor_order = data["k"], data["s"], data["o"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise InvalidRequest(
            "invalid cursor: pass back next_cursor from the previous page unchanged"
        ) from None
    if not isinstance(ts_us, int) or isinstance(ts_us, bool) or cursor_scope != scope:
        raise InvalidRequest("invalid cursor: it belongs to another series") from None
    if cursor_order != order:
        raise InvalidRequest(f"invalid cursor: it was made for order={cursor_order}, not order={order}")
    return ts_us


# ---- values ------------------------------------------------------------------------------------------------


def diagnosis_of(row: DiagnosisRecord) -> Diagnosis:
    """A stored diagnosis as its wire message; pydantic's ValidationError when the stored payload is not one."""
    return Diagnosis(node=row.node_id, task=row.task, ts=row.ts, model=row.model, version=row.version,
                     source=row.source, confidence=row.confidence, **(row.payload or {}))  # fmt: skip


def decode_value(dtype: str, num: float | None, text: str | None) -> Scalar | None:
    """A stored value in its property's data type: numbers and booleans in value_num, text in value_text."""
    if text is not None or num is None:
        return text
    if dtype == "int":
        return int(num)
    if dtype == "bool":
        return bool(num)
    if dtype == "string":
        return str(num)
    return num


def _quality(code: int) -> QualityName:
    return cast(QualityName, QUALITY_NAMES.get(code, "bad"))


def _dt(us: int | None) -> datetime | None:
    return None if us is None else from_us(us)
