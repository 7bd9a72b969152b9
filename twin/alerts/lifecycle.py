"""The alert lifecycle after ISA-18.2, and every transition stored with who, when and why.

States and the moves between them::

    normal ──raise──► active_unack ──acknowledge──► active_ack
                          │   ▲                         │
                    return│   │reactivate         return│ (closes: back to normal)
                          ▼   │                         ▼
                     returned_unack ──acknowledge──► normal (closed)

Beside the state an alert can be shelved until a time (by a person), suppressed by design (by a condition
of the asset, e.g. while the machine is stopped), escalated or de-escalated in priority, and marked
flapping. Every move is an ``AlertTransition`` row; the webhook deliveries it causes are written in the
same session, so they commit (or roll back) together with the change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from plant.wire import now_us
from twin.errors import Conflict, NotFound
from twin.tables import Alert, AlertTransition
from twin.webhooks import enqueue_event

NORMAL = "normal"
ACTIVE_UNACK = "active_unack"
ACTIVE_ACK = "active_ack"
RETURNED_UNACK = "returned_unack"
STATES = (NORMAL, ACTIVE_UNACK, ACTIVE_ACK, RETURNED_UNACK)
PRIORITIES = ("critical", "high", "medium", "low")  # most urgent first
SYSTEM = "system"

_CRITICALITY_SHIFT = {"high": -1, "medium": 0, "low": 1}
# while flapping, the raise/return churn is counted and stored but not sent
_QUIET_WHEN_FLAPPING = {"reactivate", "return"}


@dataclass(frozen=True)
class Seen:
    """What the rule saw at an activation or a change of condition (a rule's ``Verdict``, without its state).

    Args:
        condition: HI, HIHI, ROC, STALE, a fault label...
        value: the value judged, in ``unit``.
        unit: unit of value and limit.
        limit: the limit it crossed.
        reason: a sentence with the numbers (twin/alerts/reasons.py).
        evidence: what it was judged on (the diagnosis, the property's value and limit...).
    """

    condition: str
    value: float | None
    unit: str
    limit: float | None
    reason: str
    evidence: dict[str, Any]


def priority_for(severity: str, criticality: str, level: int = 1, steps: int = 0) -> str:
    """Priority from the rule's severity, the asset's criticality, the limit level (HIHI: 2), escalations."""
    i = PRIORITIES.index(severity) + _CRITICALITY_SHIFT.get(criticality, 0) - (level - 1) - steps
    return PRIORITIES[min(max(i, 0), len(PRIORITIES) - 1)]


def record(
    session: Session,
    alert: Alert,
    action: str,
    *,
    at: int,
    actor: str = SYSTEM,
    reason: str = "",
    from_state: str | None = None,
) -> AlertTransition:
    """Store one transition of ``alert``; queue its webhook events unless shelved, suppressed or flapping."""
    alert.updated_at = max(alert.updated_at, at)
    t = AlertTransition(
        alert_id=alert.id,
        at=at,
        actor=actor,
        action=action,
        from_state=from_state if from_state is not None else alert.state,
        to_state=alert.state,
        priority=alert.priority,
        reason=reason,
    )
    session.add(t)
    session.flush()
    if _notifiable(alert, action, at):
        enqueue_event(session, alert, t)
    return t


def _notifiable(alert: Alert, action: str, at: int) -> bool:
    if action in ("shelve", "unshelve", "suppress", "unsuppress", "comment"):
        return True  # receivers learn that the alert goes quiet, and when it comes back; and what people noted
    if alert.suppressed or (alert.shelved_until is not None and alert.shelved_until > at):
        return False
    return not (alert.flapping and action in _QUIET_WHEN_FLAPPING)


def raise_alert(
    session: Session,
    *,
    key: str,
    node_id: str,
    node_path: str,
    asset_type: str,
    rule: str,
    kind: str,
    condition: str,
    severity: str,
    criticality: str,
    level: int,
    message: str,
    value: float | None,
    evidence: dict[str, Any],
    at: int,
    group_id: int | None = None,
    unit: str = "",
    limit: float | None = None,
    reason: str = "",
) -> Alert:
    """A new open alert for ``key``, active and unacknowledged."""
    base = priority_for(severity, criticality)
    alert = Alert(
        key=key,
        open_key=key,
        node_id=node_id,
        node_path=node_path,
        asset_type=asset_type,
        rule=rule,
        kind=kind,
        condition=condition,
        state=ACTIVE_UNACK,
        active=True,
        severity=severity,
        base_priority=base,
        priority=priority_for(severity, criticality, level),
        message=message,
        value=value,
        unit=unit,
        limit=limit,
        reason=reason,
        evidence=evidence,
        occurrences=1,
        group_id=group_id,
        flapping=False,
        suppressed=False,
        escalations=0,
        raised_at=at,
        activated_at=at,
        updated_at=at,
    )
    session.add(alert)
    session.flush()
    if alert.group_id is None:
        alert.group_id = alert.id
    record(session, alert, "raise", at=at, reason=f"{condition}: {reason or message}", from_state=NORMAL)
    return alert


def _show(alert: Alert, seen: Seen) -> str:
    """Make the alert show what was seen; returns the condition it showed before."""
    before = alert.condition
    alert.condition, alert.value, alert.unit, alert.limit = seen.condition[:32], seen.value, seen.unit, seen.limit
    alert.reason, alert.evidence = seen.reason, seen.evidence
    return before


def reactivate(session: Session, alert: Alert, *, at: int, seen: Seen) -> AlertTransition:
    """The condition came back while the alert was still open: count it, do not raise a second alert. The alert
    shows what is seen now (a fault rule may come back with another mode)."""
    before = alert.state
    alert.occurrences += 1
    alert.active = True
    alert.activated_at = at
    alert.returned_at = None
    was = _show(alert, seen)
    alert.state = ACTIVE_UNACK if before in (RETURNED_UNACK, ACTIVE_UNACK) else ACTIVE_ACK
    mode = f" (was {was})" if was != alert.condition else ""
    return record(
        session, alert, "reactivate", at=at, reason=f"{alert.condition}{mode}: {seen.reason}", from_state=before
    )


def change_condition(session: Session, alert: Alert, *, at: int, seen: Seen) -> AlertTransition:
    """An active alert's condition changed (HI → HIHI, fault mode OSF → PWF): it shows the new one, with its
    value, evidence and reason, and the change is a transition of its own."""
    was = _show(alert, seen)
    return record(session, alert, "change", at=at, reason=f"{was} → {alert.condition}: {seen.reason}")


def comment(session: Session, alert_id: int, *, actor: str, text: str, at: int | None = None) -> Alert:
    """A person's note on an alert, kept in its history (the state does not change)."""
    alert = get_alert(session, alert_id, lock=True)
    record(session, alert, "comment", at=at if at is not None else now_us(), actor=actor, reason=text)
    return alert


def return_to_normal(session: Session, alert: Alert, *, at: int, reason: str = "") -> AlertTransition:
    """The condition cleared: an acknowledged alert closes, an unacknowledged one awaits acknowledgement."""
    before = alert.state
    alert.active = False
    alert.returned_at = at
    if before == ACTIVE_ACK:
        _close(alert, at)
    else:
        alert.state = RETURNED_UNACK
    return record(session, alert, "return", at=at, reason=reason, from_state=before)


def _close(alert: Alert, at: int) -> None:
    alert.state = NORMAL
    alert.open_key = None
    alert.closed_at = at
    alert.shelved_until = None


def get_alert(session: Session, alert_id: int, *, lock: bool = False) -> Alert:
    """The alert with this id; NotFound otherwise."""
    stmt = select(Alert).where(Alert.id == alert_id)
    if lock:
        stmt = stmt.with_for_update()
    alert = session.scalars(stmt).first()
    if alert is None:
        raise NotFound(f"alert {alert_id} does not exist")
    return alert


def acknowledge(
    session: Session, alert_id: int, *, actor: str, reason: str = "", at: int | None = None
) -> Alert:
    """An operator has seen the alert: active ones stay active, returned ones close."""
    alert = get_alert(session, alert_id, lock=True)
    at = at if at is not None else now_us()
    before = alert.state
    if before == ACTIVE_UNACK:
        alert.state = ACTIVE_ACK
    elif before == RETURNED_UNACK:
        _close(alert, at)
    else:
        raise Conflict(f"alert {alert_id} is {before}: nothing to acknowledge")
    alert.acked_at, alert.acked_by = at, actor
    record(session, alert, "acknowledge", at=at, actor=actor, reason=reason, from_state=before)
    if alert.escalations and alert.state != NORMAL:
        _set_escalation(session, alert, 0, at=at, actor=actor, reason="acknowledged")
    return alert


def shelve(
    session: Session, alert_id: int, *, actor: str, until: int, reason: str = "", at: int | None = None
) -> Alert:
    """Hide an open alert from notifications until ``until`` (µs); it comes back by itself then."""
    alert = get_alert(session, alert_id, lock=True)
    at = at if at is not None else now_us()
    if alert.state == NORMAL:
        raise Conflict(f"alert {alert_id} is closed: nothing to shelve")
    if until <= at:
        raise Conflict("a shelf must end in the future")
    alert.shelved_until = until
    record(session, alert, "shelve", at=at, actor=actor, reason=reason)
    return alert


def unshelve(session: Session, alert: Alert, *, at: int, actor: str = SYSTEM, reason: str = "") -> None:
    """End a shelf, early (a person) or at its expiry (the engine)."""
    if alert.shelved_until is None:
        raise Conflict(f"alert {alert.id} is not shelved")
    alert.shelved_until = None
    record(session, alert, "unshelve", at=at, actor=actor, reason=reason)


def set_suppressed(session: Session, alert: Alert, suppressed: bool, *, at: int, reason: str) -> None:
    """Suppress by design (a condition of the asset, e.g. machine stopped), or lift it."""
    if alert.suppressed == suppressed:
        return
    alert.suppressed = suppressed
    record(session, alert, "suppress" if suppressed else "unsuppress", at=at, reason=reason)


def set_level(session: Session, alert: Alert, *, criticality: str, level: int, at: int, reason: str) -> None:
    """Follow a limit's level (HI ↔ HIHI) with the priority."""
    new = priority_for(alert.severity, criticality, level, alert.escalations)
    _change_priority(session, alert, new, at=at, actor=SYSTEM, reason=reason)


def _set_escalation(session: Session, alert: Alert, steps: int, *, at: int, actor: str, reason: str) -> None:
    shift = PRIORITIES.index(alert.priority) + alert.escalations  # priority without escalation steps
    alert.escalations = steps
    new = PRIORITIES[min(max(shift - steps, 0), len(PRIORITIES) - 1)]
    _change_priority(session, alert, new, at=at, actor=actor, reason=reason)


def escalate(session: Session, alert: Alert, *, at: int, max_steps: int, reason: str) -> bool:
    """One step more urgent, up to ``max_steps`` above the rule's priority; True when it changed."""
    if alert.escalations >= max_steps or alert.priority == PRIORITIES[0]:
        return False
    _set_escalation(session, alert, alert.escalations + 1, at=at, actor=SYSTEM, reason=reason)
    return True


def deescalate(session: Session, alert: Alert, *, at: int, reason: str) -> bool:
    """Back to the rule's priority; True when it changed."""
    if not alert.escalations:
        return False
    _set_escalation(session, alert, 0, at=at, actor=SYSTEM, reason=reason)
    return True


def _change_priority(session: Session, alert: Alert, new: str, *, at: int, actor: str, reason: str) -> None:
    if new == alert.priority:
        return
    action = "escalate" if PRIORITIES.index(new) < PRIORITIES.index(alert.priority) else "deescalate"
    alert.priority = new
    record(session, alert, action, at=at, actor=actor, reason=reason)


def set_flapping(session: Session, alert: Alert, flapping: bool, *, at: int, reason: str) -> None:
    """Mark an alert as flapping (its churn stays counted, not sent) or stable again."""
    if alert.flapping == flapping:
        return
    alert.flapping = flapping
    record(session, alert, "flapping" if flapping else "stable", at=at, reason=reason)


def transitions(session: Session, alert_id: int) -> list[AlertTransition]:
    """The audit trail of one alert, oldest first."""
    get_alert(session, alert_id)
    stmt = select(AlertTransition).where(AlertTransition.alert_id == alert_id).order_by(AlertTransition.id)
    return list(session.scalars(stmt))
