"""What people found about an alert, stored with the window and evidence that caused it: labels for retraining.

``record`` is called for a verdict given on an alert (``POST /alerts/{id}/feedback``) and for every alert a work
order deals with when it is completed (twin/workorders.py). ``GET /api/v1/alerts/feedback`` exports them, and
``factory-twin models retrain`` turns true faults and false alarms into training windows (models/retrain.py).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from plant.wire import now_us
from twin.scopes import Sites, within
from twin.tables import Alert, AlertFeedback

LOOKBACK_US = 600 * 1_000_000  # the window kept for retraining starts this long before the raise
VERDICTS = ("true_fault", "false_alarm", "cause_found")


def record(
    session: Session, alert: Alert, *, by: str, verdict: str, cause: str = "", comment: str = "", at: int | None = None
) -> AlertFeedback:
    """Store one verdict on ``alert`` with its window and evidence (in the caller's transaction)."""
    at = at if at is not None else now_us()
    end = alert.closed_at or alert.returned_at or at
    fb = AlertFeedback(
        alert_id=alert.id,
        at=at,
        by=by,
        verdict=verdict,
        cause=cause,
        comment=comment,
        node_id=alert.node_id,
        rule=alert.rule,
        window_start=alert.raised_at - LOOKBACK_US,
        window_end=max(end, alert.raised_at),
        evidence={
            "condition": alert.condition,
            "value": alert.value,
            "unit": alert.unit,
            "kind": alert.kind,
            "occurrences": alert.occurrences,
            **(alert.evidence or {}),
        },
    )
    session.add(fb)
    session.flush()
    return fb


def of_alert(session: Session, alert_id: int) -> list[AlertFeedback]:
    """The feedback recorded on one alert, oldest first."""
    stmt = select(AlertFeedback).where(AlertFeedback.alert_id == alert_id).order_by(AlertFeedback.id)
    return list(session.scalars(stmt))


def export(
    session: Session, *, sites: Sites = None, since: int | None = None, verdict: str | None = None, limit: int
) -> list[AlertFeedback]:
    """Feedback across alerts (of ``sites`` only, if given), recorded at or after ``since`` (µs), oldest first."""
    stmt = select(AlertFeedback)
    if sites is not None:
        stmt = stmt.join(Alert, Alert.id == AlertFeedback.alert_id).where(within(Alert.node_path, sites))
    if since is not None:
        stmt = stmt.where(AlertFeedback.at >= since)
    if verdict:
        stmt = stmt.where(AlertFeedback.verdict == verdict)
    return list(session.scalars(stmt.order_by(AlertFeedback.id).limit(limit)))
