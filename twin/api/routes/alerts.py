"""``/api/v1/alerts``: list and filter alerts, act on them by role, record feedback for retraining.

Roles: viewers read; technicians acknowledge and give feedback; engineers shelve and unshelve.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Query
from sqlalchemy import func, select

from plant.wire import from_us, now_us, to_us
from twin import audit
from twin.advice import advise, due_date
from twin.alerts import feedback, lifecycle, noise
from twin.api.deps import EngineerDep, SessionDep, TechnicianDep, ViewerDep
from twin.errors import InvalidRequest
from twin.fields import Key, Offset, RowId, Timestamp
from twin.schemas import AlertAdvice
from twin.schemas.alerts import (
    ActionRequest,
    AlarmRate,
    AlertPage,
    AlertPublic,
    AlertSummary,
    AreaRate,
    CommentCreate,
    FeedbackCreate,
    FeedbackPublic,
    PriorityName,
    ShelveRequest,
    StateName,
    TransitionPublic,
)
from twin.scopes import within
from twin.tables import Alert, AlertFeedback, AlertTransition

router = APIRouter(prefix="/alerts", tags=["alerts"])
# What the audit trail records of an alert before and after a person acts on it.
AUDITED = ("state", "active", "priority", "condition", "shelved_until", "acked_by", "acked_at", "closed_at")


def _dt(us: int | None) -> datetime | None:
    return None if us is None else from_us(us)


def public(a: Alert) -> AlertPublic:
    """An alert row as the API shows it."""
    return AlertPublic(
        id=a.id,
        node=a.node_id,
        path=a.node_path,
        asset_type=a.asset_type,
        rule=a.rule,
        kind=a.kind,
        condition=a.condition,
        state=cast(StateName, a.state),
        active=a.active,
        priority=cast(PriorityName, a.priority),
        severity=a.severity,
        message=a.message,
        value=a.value,
        unit=a.unit,
        limit=a.limit,
        reason=a.reason,
        occurrences=a.occurrences,
        group_id=a.group_id,
        flapping=a.flapping,
        suppressed=a.suppressed,
        shelved_until=_dt(a.shelved_until),
        raised_at=from_us(a.raised_at),
        activated_at=from_us(a.activated_at),
        updated_at=from_us(a.updated_at),
        returned_at=_dt(a.returned_at),
        acked_at=_dt(a.acked_at),
        acked_by=a.acked_by,
        closed_at=_dt(a.closed_at),
        evidence=a.evidence or {},
    )


@router.get("", response_model=AlertPage)
def list_alerts(
    session: SessionDep,
    who: ViewerDep,
    state: Annotated[list[StateName] | None, Query(description="any of these states")] = None,
    priority: Annotated[list[PriorityName] | None, Query(description="any of these priorities")] = None,
    subtree: Annotated[Key | None, Query(description="only alerts of this node and below")] = None,
    site: Annotated[Key | None, Query(description="only alerts of this site (a top-level node id)")] = None,
    start: Annotated[Timestamp | None, Query(description="raised at or after")] = None,
    end: Annotated[Timestamp | None, Query(description="raised before")] = None,
    open_only: Annotated[bool, Query(alias="open", description="only alerts not back to normal")] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[Offset, Query()] = 0,
) -> AlertPage:
    """Alerts filtered by state, priority, site, asset subtree and time range, newest first."""
    if start and end and end <= start:
        raise InvalidRequest("end must be after start")
    conds: list[Any] = [within(Alert.node_path, who.sites)]
    if state:
        conds.append(Alert.state.in_(state))
    if priority:
        conds.append(Alert.priority.in_(priority))
    if subtree:
        conds.append(Alert.node_path.contains(f"/{subtree}/", autoescape=True))
    if site:
        conds.append(within(Alert.node_path, frozenset({site})))
    if start:
        conds.append(Alert.raised_at >= to_us(start))
    if end:
        conds.append(Alert.raised_at < to_us(end))
    if open_only:
        conds.append(Alert.open_key.is_not(None))
    total = session.scalar(select(func.count()).select_from(Alert).where(*conds)) or 0
    rows = session.scalars(select(Alert).where(*conds).order_by(Alert.id.desc()).limit(limit).offset(offset))
    items = [public(a) for a in rows]
    return AlertPage(items=items, count=len(items), total=total)


@router.get("/rate", response_model=AlarmRate)
def alarm_rate(session: SessionDep, who: ViewerDep) -> AlarmRate:
    """Alarms annunciated per operator area in the last 10 minutes and their EEMUA 191 band."""
    rates = noise.alarm_rate(session, now=now_us(), sites=who.sites)
    paths = session.scalars(select(Alert.node_path).where(within(Alert.node_path, who.sites)).distinct())
    areas = sorted({*rates, *(noise.area_of(p) for p in paths)})
    return AlarmRate(
        window_s=noise.RATE_WINDOW_S,
        acceptable=noise.EEMUA_ACCEPTABLE_PER_10MIN,
        manageable=noise.EEMUA_MANAGEABLE_PER_10MIN,
        areas=rates,
        bands=[AreaRate(area=a, alarms=rates.get(a, 0), band=noise.eemua_band(rates.get(a, 0))) for a in areas],
    )


@router.get("/summary", response_model=AlertSummary)
def summary(session: SessionDep, who: ViewerDep) -> AlertSummary:
    """What the alert badge counts: open alerts needing acknowledgement (shelved and suppressed ones aside)."""
    now = now_us()
    rows = session.execute(
        select(Alert.state, Alert.active, Alert.priority, Alert.shelved_until, Alert.suppressed, Alert.flapping)
        .where(Alert.open_key.is_not(None), within(Alert.node_path, who.sites))
    ).all()
    out = AlertSummary(needs_ack=0, active=0, open=len(rows), shelved=0, suppressed=0, flapping=0, by_priority={})
    for state, active, priority, shelved_until, suppressed, flapping in rows:
        shelved = shelved_until is not None and shelved_until > now
        out.shelved += shelved
        out.suppressed += bool(suppressed)
        out.flapping += bool(flapping)
        if shelved or suppressed:
            continue
        out.active += bool(active)
        if state in (lifecycle.ACTIVE_UNACK, lifecycle.RETURNED_UNACK):
            out.needs_ack += 1
            out.by_priority[priority] = out.by_priority.get(priority, 0) + 1
    return out


@router.get("/feedback", response_model=list[FeedbackPublic])
def export_feedback(
    session: SessionDep,
    who: EngineerDep,
    since: Annotated[Timestamp | None, Query(description="recorded at or after")] = None,
    verdict: Annotated[Literal["true_fault", "false_alarm", "cause_found"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[FeedbackPublic]:
    """Feedback across alerts with windows and evidence, oldest first: labels for retraining (engineer+)."""
    stmt = select(AlertFeedback)
    if who.sites is not None:
        stmt = stmt.join(Alert, Alert.id == AlertFeedback.alert_id).where(within(Alert.node_path, who.sites))
    if since:
        stmt = stmt.where(AlertFeedback.at >= to_us(since))
    if verdict:
        stmt = stmt.where(AlertFeedback.verdict == verdict)
    return [_feedback_public(f) for f in session.scalars(stmt.order_by(AlertFeedback.id).limit(limit))]


@router.get("/{alert_id}", response_model=AlertPublic)
def get_alert(session: SessionDep, _who: ViewerDep, alert_id: RowId) -> AlertPublic:
    """One alert."""
    return public(lifecycle.get_alert(session, alert_id))


@router.get("/{alert_id}/transitions", response_model=list[TransitionPublic])
def get_transitions(session: SessionDep, _who: ViewerDep, alert_id: RowId) -> list[TransitionPublic]:
    """The alert's history, oldest first: every transition, change of condition and comment."""
    return [_transition_public(t) for t in lifecycle.transitions(session, alert_id)]


def _transition_public(t: AlertTransition) -> TransitionPublic:
    return TransitionPublic(
        id=t.id,
        at=from_us(t.at),
        actor=t.actor,
        action=t.action,
        from_state=t.from_state,
        to_state=t.to_state,
        priority=t.priority,
        reason=t.reason,
    )


@router.get("/{alert_id}/advice", response_model=AlertAdvice)
def get_advice(session: SessionDep, _who: ViewerDep, alert_id: RowId) -> AlertAdvice:
    """Ranked maintenance advice for the alert, with its due date."""
    alert = lifecycle.get_alert(session, alert_id)
    due, why = due_date(session, alert)
    return AlertAdvice.model_validate({
        "alert_id": alert.id,
        "due": from_us(due),
        "due_reason": why,
        "advice": [asdict(a) for a in advise(session, alert)],
    })  # fmt: skip


@router.post("/{alert_id}/comments", response_model=TransitionPublic, status_code=201)
def add_comment(session: SessionDep, who: TechnicianDep, alert_id: RowId, body: CommentCreate) -> TransitionPublic:
    """Note something on an alert (technician and up); it shows in the alert's history."""
    alert = lifecycle.comment(session, alert_id, actor=who.name or who.prefix, text=body.text.strip())
    audit.record(session, who, "alert.comment", f"alert:{alert.id}", after={"text": body.text.strip()})
    session.commit()
    return _transition_public(lifecycle.transitions(session, alert.id)[-1])


@router.post("/{alert_id}/acknowledge", response_model=AlertPublic)
def acknowledge(
    session: SessionDep, who: TechnicianDep, alert_id: RowId, body: ActionRequest | None = None
) -> AlertPublic:
    """Acknowledge: active alerts stay active, returned ones close (technician and up)."""
    before = audit.fields(lifecycle.get_alert(session, alert_id), AUDITED)
    alert = lifecycle.acknowledge(
        session, alert_id, actor=who.name or who.prefix, reason=body.reason if body else ""
    )
    audit.record(session, who, "alert.acknowledge", f"alert:{alert.id}", before=before,
                 after=audit.fields(alert, AUDITED) | {"reason": body.reason if body else ""})
    session.commit()
    return public(alert)


@router.post("/{alert_id}/shelve", response_model=AlertPublic)
def shelve(session: SessionDep, who: EngineerDep, alert_id: RowId, body: ShelveRequest) -> AlertPublic:
    """Shelve for a while, with a reason (engineer and up)."""
    now = now_us()
    before = audit.fields(lifecycle.get_alert(session, alert_id), AUDITED)
    alert = lifecycle.shelve(
        session,
        alert_id,
        actor=who.name or who.prefix,
        until=now + int(body.minutes * 60e6),
        reason=body.reason,
        at=now,
    )
    audit.record(session, who, "alert.shelve", f"alert:{alert.id}", before=before,
                 after=audit.fields(alert, AUDITED) | {"reason": body.reason})
    session.commit()
    return public(alert)


@router.post("/{alert_id}/unshelve", response_model=AlertPublic)
def unshelve(
    session: SessionDep, who: EngineerDep, alert_id: RowId, body: ActionRequest | None = None
) -> AlertPublic:
    """End a shelf early (engineer and up)."""
    alert = lifecycle.get_alert(session, alert_id, lock=True)
    before = audit.fields(alert, AUDITED)
    lifecycle.unshelve(
        session, alert, at=now_us(), actor=who.name or who.prefix, reason=body.reason if body else ""
    )
    audit.record(session, who, "alert.unshelve", f"alert:{alert.id}", before=before,
                 after=audit.fields(alert, AUDITED) | {"reason": body.reason if body else ""})
    session.commit()
    return public(alert)


@router.post("/{alert_id}/feedback", response_model=FeedbackPublic, status_code=201)
def add_feedback(
    session: SessionDep, who: TechnicianDep, alert_id: RowId, body: FeedbackCreate
) -> FeedbackPublic:
    """Record what was found, with the window and evidence behind the alert, for retraining (technician+)."""
    alert = lifecycle.get_alert(session, alert_id)
    fb = feedback.record(
        session, alert, by=who.name or who.prefix, verdict=body.verdict, cause=body.cause, comment=body.comment
    )
    audit.record(session, who, "alert.feedback", f"alert:{alert.id}",
                 after={"verdict": body.verdict, "cause": body.cause, "comment": body.comment})
    session.commit()
    return _feedback_public(fb)


@router.get("/{alert_id}/feedback", response_model=list[FeedbackPublic])
def list_feedback(session: SessionDep, _who: ViewerDep, alert_id: RowId) -> list[FeedbackPublic]:
    """The feedback recorded on an alert."""
    lifecycle.get_alert(session, alert_id)
    rows = session.scalars(
        select(AlertFeedback).where(AlertFeedback.alert_id == alert_id).order_by(AlertFeedback.id)
    )
    return [_feedback_public(f) for f in rows]


def _feedback_public(f: AlertFeedback) -> FeedbackPublic:
    return FeedbackPublic(
        id=f.id,
        alert_id=f.alert_id,
        at=from_us(f.at),
        by=f.by,
        verdict=f.verdict,
        cause=f.cause,
        comment=f.comment,
        node=f.node_id,
        rule=f.rule,
        window_start=from_us(f.window_start),
        window_end=from_us(f.window_end),
        evidence=f.evidence,
    )
