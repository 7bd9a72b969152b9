"""Work orders: what a technician does about an alert or a plan item, from open to done, and what it closes.

States and moves (every move a ``WorkOrderEvent`` with who, when and a note; each one queued as a webhook event
in the same transaction, so a plant's CMMS can mirror it)::

    open ──start──► in_progress ──complete──► done
      │                  │
      └──────cancel──────┴──────────────────► cancelled          (complete straight from open too: quick jobs)

A work order names an asset, a task (a knowledge-base entry's title and actions by default, ``draft``), a
priority, a due date and an assignee. Completing it records the notes, parts used and time spent, and for each
linked alert: the verdict as model feedback (twin/alerts/feedback.py: it feeds ``factory-twin models retrain``)
and an acknowledgement, so a returned alert closes, and an alert whose condition still holds stays visible,
acknowledged, until it clears (ISA-18.2: a person cannot clear a condition, only the plant can).

Every state change goes through this module, so an audit trail is a call here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from plant.wire import now_us
from twin.advice import advise, due_date
from twin.alerts import feedback, lifecycle
from twin.db import get_or_missing
from twin.errors import Conflict, InvalidRequest, NotFound
from twin.scopes import Sites, within
from twin.tables import Alert, TwinNode, WorkOrder, WorkOrderAlert, WorkOrderEvent
from twin.webhooks.queue import enqueue_work_order_event

OPEN, IN_PROGRESS, DONE, CANCELLED = "open", "in_progress", "done", "cancelled"
STATES = (OPEN, IN_PROGRESS, DONE, CANCELLED)
ACTIVE_STATES = (OPEN, IN_PROGRESS)


@dataclass
class Draft:
    """What a new work order would say: from an alert's best advice, or given by a person.

    Args:
        node: the asset.
        task: what to do, in a line.
        priority: critical, high, medium or low.
        due: µs, or None.
        steps: the actions, in order.
        parts: spare parts [{part, quantity, number}].
        task_source: the knowledge-base entry (``asset_type/condition@version``), or "".
        alert_ids: the alerts it deals with.
        assignee: who does it.
        due_reason: why it is due then.
    """

    node: str
    task: str
    priority: str = "medium"
    due: int | None = None
    steps: list[str] = field(default_factory=list)
    parts: list[dict[str, Any]] = field(default_factory=list)
    task_source: str = ""
    alert_ids: list[int] = field(default_factory=list)
    assignee: str = ""
    due_reason: str = ""


def draft(session: Session, alert_id: int) -> Draft:
    """A work order for an alert as the knowledge base would write it: its best advice, priority, due date."""
    alert = lifecycle.get_alert(session, alert_id)
    due, why = due_date(session, alert)
    best = next(iter(advise(session, alert)), None)
    return Draft(
        node=alert.node_id,
        task=(best.title if best else alert.message or f"{alert.rule} {alert.condition}")[:200],
        priority=alert.priority,
        due=due,
        steps=list(best.actions) if best else [],
        parts=list(best.parts) if best else [],
        task_source=best.source if best else "",
        alert_ids=[alert.id],
        due_reason=why,
    )


def create(session: Session, d: Draft, *, by: str, at: int | None = None) -> WorkOrder:
    """A new open work order for ``d`` (alerts must belong to its asset or below)."""
    at = at if at is not None else now_us()
    node = get_or_missing(session, TwinNode, d.node, f"node {d.node!r} does not exist")
    alerts = [lifecycle.get_alert(session, i) for i in dict.fromkeys(d.alert_ids)]
    for a in alerts:
        if not a.node_path.startswith(node.path):
            raise InvalidRequest(f"alert {a.id} is on {a.node_id}, not on {d.node} or below it")
    wo = WorkOrder(
        node_id=node.id,
        node_path=node.path,
        task=d.task,
        task_source=d.task_source,
        steps=d.steps,
        priority=d.priority,
        state=OPEN,
        due_at=d.due,
        assignee=d.assignee,
        notes="",
        parts=d.parts,
        cause="",
        created_at=at,
        created_by=by,
        updated_at=at,
    )
    session.add(wo)
    session.flush()
    session.add_all(WorkOrderAlert(work_order_id=wo.id, alert_id=a.id) for a in alerts)
    linked = f" for alert{'s' if len(alerts) > 1 else ''} {', '.join(f'#{a.id}' for a in alerts)}" if alerts else ""
    _event(session, wo, "create", at=at, actor=by, note=f"{d.task}{linked}", before=OPEN)
    return wo


def get(session: Session, wo_id: int, *, lock: bool = False) -> WorkOrder:
    """The work order with this id; NotFound otherwise."""
    stmt = select(WorkOrder).where(WorkOrder.id == wo_id)
    wo = session.scalars(stmt.with_for_update() if lock else stmt).first()
    if wo is None:
        raise NotFound(f"work order {wo_id} does not exist")
    return wo


def update(
    session: Session,
    wo_id: int,
    *,
    by: str,
    assignee: str | None = None,
    priority: str | None = None,
    due: int | None = None,
    clear_due: bool = False,
    at: int | None = None,
) -> WorkOrder:
    """Change who does it, its priority or due date (while open or in progress)."""
    wo = _active(session, wo_id)
    changes = []
    if assignee is not None and assignee != wo.assignee:
        changes.append(f"assigned to {assignee}" if assignee else "unassigned")
        wo.assignee = assignee
    if priority is not None and priority != wo.priority:
        changes.append(f"priority {wo.priority} → {priority}")
        wo.priority = priority
    if clear_due or (due is not None and due != wo.due_at):
        wo.due_at = None if clear_due else due
        changes.append("due date changed" if wo.due_at is not None else "due date removed")
    if changes:
        _event(session, wo, "update", at=at, actor=by, note="; ".join(changes), before=wo.state)
    return wo


def note(session: Session, wo_id: int, *, by: str, text: str, at: int | None = None) -> WorkOrder:
    """Add a note (kept in the work order's notes and its history)."""
    wo = get(session, wo_id, lock=True)
    wo.notes = f"{wo.notes}\n{text}".strip()
    _event(session, wo, "note", at=at, actor=by, note=text, before=wo.state)
    return wo


def start(session: Session, wo_id: int, *, by: str, note_text: str = "", at: int | None = None) -> WorkOrder:
    """Work begins: open → in progress (taken by ``by`` when nobody was assigned)."""
    wo = _active(session, wo_id)
    if wo.state != OPEN:
        raise Conflict(f"work order {wo_id} is {wo.state}: only an open one can start")
    at = at if at is not None else now_us()
    wo.state, wo.started_at = IN_PROGRESS, at
    wo.assignee = wo.assignee or by
    _event(session, wo, "start", at=at, actor=by, note=note_text, before=OPEN)
    return wo


@dataclass
class Completion:
    """What was done: the verdict on the alerts it dealt with, the cause, notes, parts used, time spent."""

    verdict: str | None = None  # true_fault, false_alarm, cause_found; required when alerts are linked
    cause: str = ""
    notes: str = ""
    parts: list[dict[str, Any]] | None = None
    time_spent_h: float | None = None


def complete(session: Session, wo_id: int, c: Completion, *, by: str, at: int | None = None) -> WorkOrder:
    """Done: record what was done; each linked alert gets the verdict as feedback and is acknowledged."""
    wo = _active(session, wo_id)
    alerts = linked_alerts(session, wo.id)
    if alerts and c.verdict not in feedback.VERDICTS:
        raise InvalidRequest("a work order with alerts needs a verdict: true_fault, false_alarm or cause_found")
    at = at if at is not None else now_us()
    before = wo.state
    wo.state, wo.finished_at = DONE, at
    wo.verdict, wo.cause, wo.time_spent_h = c.verdict, c.cause, c.time_spent_h
    if c.parts is not None:
        wo.parts = c.parts
    if c.notes:
        wo.notes = f"{wo.notes}\n{c.notes}".strip()
    why = f"work order #{wo.id} done" + (f": {c.cause}" if c.cause else "")
    for alert in alerts:
        assert c.verdict is not None
        feedback.record(session, alert, by=by, verdict=c.verdict, cause=c.cause, comment=why, at=at)
        if alert.state in (lifecycle.ACTIVE_UNACK, lifecycle.RETURNED_UNACK):
            lifecycle.acknowledge(session, alert.id, actor=by, reason=why, at=at)
        elif alert.state != lifecycle.NORMAL:
            lifecycle.comment(session, alert.id, actor=by, text=why, at=at)
    spent = f", {c.time_spent_h:g} h" if c.time_spent_h is not None else ""
    verdict = f" ({c.verdict.replace('_', ' ')})" if c.verdict else ""
    _event(session, wo, "complete", at=at, actor=by, note=f"{c.cause or c.notes or 'done'}{verdict}{spent}",
           before=before)
    return wo


def cancel(session: Session, wo_id: int, *, by: str, reason: str, at: int | None = None) -> WorkOrder:
    """Not done, and why; linked alerts are left as they are."""
    wo = _active(session, wo_id)
    before = wo.state
    wo.state, wo.finished_at = CANCELLED, at if at is not None else now_us()
    _event(session, wo, "cancel", at=wo.finished_at, actor=by, note=reason, before=before)
    return wo


def linked_alerts(session: Session, wo_id: int) -> list[Alert]:
    """The alerts a work order deals with, oldest first."""
    stmt = (
        select(Alert)
        .join(WorkOrderAlert, WorkOrderAlert.alert_id == Alert.id)
        .where(WorkOrderAlert.work_order_id == wo_id)
        .order_by(Alert.id)
    )
    return list(session.scalars(stmt))


def alert_ids(session: Session, wo_ids: list[int]) -> dict[int, list[int]]:
    """Work order id → its alerts' ids."""
    out: dict[int, list[int]] = {i: [] for i in wo_ids}
    if wo_ids:
        rows = session.execute(
            select(WorkOrderAlert.work_order_id, WorkOrderAlert.alert_id)
            .where(WorkOrderAlert.work_order_id.in_(wo_ids))
            .order_by(WorkOrderAlert.alert_id)
        )
        for wo_id, alert_id in rows:
            out[wo_id].append(alert_id)
    return out


def for_alerts(session: Session, ids: list[int]) -> dict[int, list[WorkOrder]]:
    """Alert id → the work orders dealing with it (any state), oldest first."""
    out: dict[int, list[WorkOrder]] = {}
    if ids:
        rows = session.execute(
            select(WorkOrderAlert.alert_id, WorkOrder)
            .join(WorkOrder, WorkOrder.id == WorkOrderAlert.work_order_id)
            .where(WorkOrderAlert.alert_id.in_(ids))
            .order_by(WorkOrder.id)
        )
        for alert_id, wo in rows:
            out.setdefault(alert_id, []).append(wo)
    return out


def events(session: Session, wo_id: int) -> list[WorkOrderEvent]:
    """A work order's history, oldest first."""
    get(session, wo_id)
    stmt = select(WorkOrderEvent).where(WorkOrderEvent.work_order_id == wo_id).order_by(WorkOrderEvent.id)
    return list(session.scalars(stmt))


def listing(
    session: Session,
    *,
    states: list[str] | None = None,
    subtree: str | None = None,
    assignee: str | None = None,
    limit: int = 100,
    offset: int = 0,
    sites: Sites = None,
) -> tuple[list[WorkOrder], int]:
    """Work orders filtered by state, asset subtree, assignee and sites, by due date (none last), then newest;
    and how many match."""
    conds: list[Any] = [within(WorkOrder.node_path, sites)]
    if states:
        conds.append(WorkOrder.state.in_(states))
    if subtree:
        conds.append(WorkOrder.node_path.contains(f"/{subtree}/", autoescape=True))
    if assignee is not None:
        conds.append(WorkOrder.assignee == assignee)
    total = session.scalar(select(func.count()).select_from(WorkOrder).where(*conds)) or 0
    stmt = (
        select(WorkOrder)
        .where(*conds)
        .order_by(WorkOrder.due_at.is_(None), WorkOrder.due_at, WorkOrder.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return list(session.scalars(stmt)), int(total)


def _active(session: Session, wo_id: int) -> WorkOrder:
    wo = get(session, wo_id, lock=True)
    if wo.state not in ACTIVE_STATES:
        raise Conflict(f"work order {wo_id} is {wo.state}: it can no longer change")
    return wo


def _event(
    session: Session, wo: WorkOrder, action: str, *, at: int | None, actor: str, note: str, before: str
) -> WorkOrderEvent:
    at = at if at is not None else now_us()
    wo.updated_at = max(wo.updated_at, at)
    e = WorkOrderEvent(
        work_order_id=wo.id, at=at, actor=actor, action=action, from_state=before, to_state=wo.state, note=note
    )
    session.add(e)
    session.flush()
    enqueue_work_order_event(session, wo, e, linked=alert_ids(session, [wo.id])[wo.id])
    return e
