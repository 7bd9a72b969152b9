"""A node's diagnoses over a time range, grouped by task, as the dashboard charts them."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from twin.tables import DiagnosisRecord

MAX_DIAGNOSES = 2000  # the newest kept when a range holds more


def diagnoses_over(
    session: Session, node_id: str, start: int, end: int, task: str | None = None
) -> tuple[dict[str, list[dict[str, object]]], bool]:
    """The node's diagnoses from ``start`` (inclusive) to ``end`` (exclusive), µs, of one task if given: by task,
    oldest first, each with its time in ms, source, confidence and payload; and whether MAX_DIAGNOSES cut it."""
    d = DiagnosisRecord
    stmt = select(d.task, d.ts, d.source, d.confidence, d.payload).where(
        d.node_id == node_id, d.ts >= start, d.ts < end
    )
    if task:
        stmt = stmt.where(d.task == task)
    rows = list(session.execute(stmt.order_by(d.ts.desc()).limit(MAX_DIAGNOSES)))
    tasks: dict[str, list[dict[str, object]]] = {}
    for t, ts, source, confidence, payload in reversed(rows):
        tasks.setdefault(t, []).append({"ts": ts // 1000, "source": source, "confidence": confidence,
                                        **(payload or {})})
    return tasks, len(rows) == MAX_DIAGNOSES
