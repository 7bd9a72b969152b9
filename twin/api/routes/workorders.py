"""``/api/v1/work-orders``: maintenance work from an alert or a plan item, open → in progress → done / cancelled.

Viewers read; technicians create, take, note, complete and cancel. ``GET /work-orders/draft?alert_id=`` says what
the knowledge base would put in one (task, steps, parts, priority, due), for a form to start from. The rules live
in twin/workorders.py.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, cast

from fastapi import APIRouter, Query
from sqlalchemy.orm import Session

from plant.wire import from_us, now_us, to_us
from twin import audit, workorders
from twin.api.deps import SessionDep, TechnicianDep, ViewerDep
from twin.auth import Principal
from twin.fields import Key, Name, Offset, RowId
from twin.knowledge.base import Part
from twin.schemas.workorders import (
    CancelRequest,
    CompleteRequest,
    NoteRequest,
    PriorityName,
    StateName,
    Verdict,
    WorkOrderCreate,
    WorkOrderDraft,
    WorkOrderEventPublic,
    WorkOrderPage,
    WorkOrderPublic,
    WorkOrderUpdate,
)
from twin.scopes import check_references
from twin.tables import WorkOrder, WorkOrderEvent

router = APIRouter(prefix="/work-orders", tags=["work orders"])


def _dt(us: int | None) -> datetime | None:
    return None if us is None else from_us(us)


def public(wo: WorkOrder, alert_ids: list[int], now: int | None = None) -> WorkOrderPublic:
    """A work order row as the API shows it."""
    now = now if now is not None else now_us()
    return WorkOrderPublic(
        id=wo.id,
        node=wo.node_id,
        path=wo.node_path,
        task=wo.task,
        task_source=wo.task_source,
        steps=wo.steps,
        priority=cast(PriorityName, wo.priority),
        state=cast(StateName, wo.state),
        due=_dt(wo.due_at),
        overdue=wo.due_at is not None and wo.due_at < now and wo.state in workorders.ACTIVE_STATES,
        assignee=wo.assignee,
        notes=wo.notes,
        parts=[Part.model_validate(p) for p in wo.parts],
        time_spent_h=wo.time_spent_h,
        verdict=cast(Verdict | None, wo.verdict),
        cause=wo.cause,
        alert_ids=alert_ids,
        created_at=from_us(wo.created_at),
        created_by=wo.created_by,
        updated_at=from_us(wo.updated_at),
        started_at=_dt(wo.started_at),
        finished_at=_dt(wo.finished_at),
    )


def _one(session: SessionDep, wo: WorkOrder) -> WorkOrderPublic:
    return public(wo, workorders.alert_ids(session, [wo.id])[wo.id])


@router.get("", response_model=WorkOrderPage)
def list_work_orders(
    session: SessionDep,
    who: ViewerDep,
    state: Annotated[list[StateName] | None, Query(description="any of these states")] = None,
    subtree: Annotated[Key | None, Query(description="only this node and below")] = None,
    assignee: Annotated[Name | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[Offset, Query()] = 0,
) -> WorkOrderPage:
    """Work orders filtered by state, asset subtree and assignee."""
    rows, total = workorders.listing(
        session, states=list(state or []), subtree=subtree, assignee=assignee, limit=limit, offset=offset,
        sites=who.sites,
    )
    ids = workorders.alert_ids(session, [w.id for w in rows])
    items = [public(w, ids[w.id]) for w in rows]
    return WorkOrderPage(items=items, count=len(items), total=total)


@router.get("/draft", response_model=WorkOrderDraft)
def draft(session: SessionDep, _who: ViewerDep, alert_id: Annotated[RowId, Query()]) -> WorkOrderDraft:
    """What the knowledge base would put in a work order for this alert."""
    d = workorders.draft(session, alert_id)
    return WorkOrderDraft(
        node=d.node,
        task=d.task,
        task_source=d.task_source,
        steps=d.steps,
        parts=[Part.model_validate(p) for p in d.parts],
        priority=cast(PriorityName, d.priority),
        due=_dt(d.due),
        due_reason=d.due_reason,
        alert_ids=d.alert_ids,
    )


@router.post("", response_model=WorkOrderPublic, status_code=201)
def create(session: SessionDep, who: TechnicianDep, body: WorkOrderCreate) -> WorkOrderPublic:
    """Open a work order (technician and up)."""
    check_references(session, who, [("node", body.node)])  # its alerts must lie under the node (twin/workorders.py)
    d = workorders.Draft(
        node=body.node,
        task=body.task.strip(),
        priority=body.priority,
        due=to_us(body.due) if body.due else None,
        steps=[s for s in (x.strip() for x in body.steps) if s],
        parts=[p.model_dump() for p in body.parts],
        task_source=body.task_source,
        alert_ids=body.alert_ids,
        assignee=body.assignee.strip(),
    )
    wo = workorders.create(session, d, by=who.name or who.prefix)
    _audit(session, who, "work_order.create", wo, None, task=wo.task, node=wo.node_id, alert_ids=body.alert_ids)
    session.commit()
    return _one(session, wo)


@router.get("/{wo_id}", response_model=WorkOrderPublic)
def get_work_order(session: SessionDep, _who: ViewerDep, wo_id: RowId) -> WorkOrderPublic:
    """One work order."""
    return _one(session, workorders.get(session, wo_id))


@router.get("/{wo_id}/events", response_model=list[WorkOrderEventPublic])
def get_events(session: SessionDep, _who: ViewerDep, wo_id: RowId) -> list[WorkOrderEventPublic]:
    """A work order's history, oldest first."""
    return [_event_public(e) for e in workorders.events(session, wo_id)]


@router.patch("/{wo_id}", response_model=WorkOrderPublic)
def update(session: SessionDep, who: TechnicianDep, wo_id: RowId, body: WorkOrderUpdate) -> WorkOrderPublic:
    """Assign, re-prioritise or re-date an open or running work order (technician and up)."""
    clear_due = "due" in body.model_fields_set and body.due is None
    before = _state(workorders.get(session, wo_id))
    wo = workorders.update(
        session,
        wo_id,
        by=who.name or who.prefix,
        assignee=body.assignee.strip() if body.assignee is not None else None,
        priority=body.priority,
        due=to_us(body.due) if body.due else None,
        clear_due=clear_due,
    )
    _audit(session, who, "work_order.update", wo, before)
    session.commit()
    return _one(session, wo)


@router.post("/{wo_id}/start", response_model=WorkOrderPublic)
def start(session: SessionDep, who: TechnicianDep, wo_id: RowId, body: NoteRequest | None = None) -> WorkOrderPublic:
    """Work begins (technician and up): open → in progress."""
    before = _state(workorders.get(session, wo_id))
    wo = workorders.start(session, wo_id, by=who.name or who.prefix, note_text=body.text if body else "")
    _audit(session, who, "work_order.start", wo, before, note=body.text if body else "")
    session.commit()
    return _one(session, wo)


@router.post("/{wo_id}/notes", response_model=WorkOrderPublic)
def add_note(session: SessionDep, who: TechnicianDep, wo_id: RowId, body: NoteRequest) -> WorkOrderPublic:
    """Add a note (technician and up)."""
    wo = workorders.note(session, wo_id, by=who.name or who.prefix, text=body.text.strip() or "-")
    audit.record(session, who, "work_order.note", f"work_order:{wo.id}", after={"note": body.text.strip() or "-"})
    session.commit()
    return _one(session, wo)


@router.post("/{wo_id}/complete", response_model=WorkOrderPublic)
def complete(session: SessionDep, who: TechnicianDep, wo_id: RowId, body: CompleteRequest) -> WorkOrderPublic:
    """Done (technician and up): the verdict goes to each linked alert as feedback, which is acknowledged."""
    c = workorders.Completion(
        verdict=body.verdict,
        cause=body.cause.strip(),
        notes=body.notes.strip(),
        parts=[p.model_dump() for p in body.parts] if body.parts is not None else None,
        time_spent_h=body.time_spent_h,
    )
    before = _state(workorders.get(session, wo_id))
    wo = workorders.complete(session, wo_id, c, by=who.name or who.prefix)
    _audit(session, who, "work_order.complete", wo, before, notes=c.notes)
    session.commit()
    return _one(session, wo)


@router.post("/{wo_id}/cancel", response_model=WorkOrderPublic)
def cancel(session: SessionDep, who: TechnicianDep, wo_id: RowId, body: CancelRequest) -> WorkOrderPublic:
    """Not done, and why (technician and up)."""
    before = _state(workorders.get(session, wo_id))
    wo = workorders.cancel(session, wo_id, by=who.name or who.prefix, reason=body.reason.strip())
    _audit(session, who, "work_order.cancel", wo, before, reason=body.reason.strip())
    session.commit()
    return _one(session, wo)


# What the audit trail records of a work order before and after a change.
AUDITED = ("state", "priority", "due_at", "assignee", "verdict", "cause", "time_spent_h")


def _state(wo: WorkOrder) -> dict[str, Any]:
    return audit.fields(wo, AUDITED)


def _audit(session: Session, who: Principal, action: str, wo: WorkOrder, before: dict[str, Any] | None,
           **extra: Any) -> None:
    audit.record(session, who, action, f"work_order:{wo.id}", before=before, after=_state(wo) | extra)


def _event_public(e: WorkOrderEvent) -> WorkOrderEventPublic:
    return WorkOrderEventPublic(
        id=e.id,
        at=from_us(e.at),
        actor=e.actor,
        action=e.action,
        from_state=cast(StateName, e.from_state),
        to_state=cast(StateName, e.to_state),
        note=e.note,
    )
