"""``/api/v1/alerts``: list and filter alerts, act on them by role, record feedback for retraining.

Roles: viewers read; technicians acknowledge and give feedback; engineers shelve and unshelve.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Literal, cast

from fastapi import APIRouter, Query

from plant.wire import from_us, now_us, to_us
from twin import audit
from twin.advice import advise, due_date
from twin.alerts import feedback, lifecycle, listing, noise
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
    which = listing.AlertFilter(
        sites=who.sites,
        states=list(state) if state else None,
        priorities=list(priority) if priority else None,
        subtree=subtree,
        site=site,
        start=to_us(start) if start else None,
        end=to_us(end) if end else None,
        open_only=open_only,
    )
    rows, total = listing.page(session, which, limit=limit, offset=offset)
    items = [public(a) for a in rows]
    return AlertPage(items=items, count=len(items), total=total)


@router.get("/rate", response_model=AlarmRate)
def alarm_rate(session: SessionDep, who: ViewerDep) -> AlarmRate:
    """Alarms annunciated per operator area in the last 10 minutes and their EEMUA 191 band."""
    rates = noise.alarm_rate(session, now=now_us(), sites=who.sites)
    areas = sorted({*rates, *noise.areas_with_alerts(session, who.sites)})
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
    return AlertSummary.model_validate(asdict(listing.badge_counts(session, now=now_us(), sites=who.sites)))


@router.get("/feedback", response_model=list[FeedbackPublic])
def export_feedback(
    session: SessionDep,
    who: EngineerDep,
    since: Annotated[Timestamp | None, Query(description="recorded at or after")] = None,
    verdict: Annotated[Literal["true_fault", "false_alarm", "cause_found"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[FeedbackPublic]:
    """Feedback across alerts with windows and evidence, oldest first: labels for retraining (engineer+)."""
    rows = feedback.export(session, sites=who.sites, since=to_us(since) if since else None, verdict=verdict,
                           limit=limit)
    return [_feedback_public(f) for f in rows]


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
    return [_feedback_public(f) for f in feedback.of_alert(session, alert_id)]


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
