"""``/api/v1/knowledge`` (the maintenance knowledge base, versioned) and ``/api/v1/maintenance-plan``.

Viewers read; engineers create, edit (each edit adds a version) and retire entries.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response
from sqlalchemy.orm import Session

from plant.wire import from_us, now_us
from twin import audit, knowledge
from twin.advice import PlanItem, maintenance_plan
from twin.api.deps import EngineerDep, SessionDep, ViewerDep
from twin.errors import NotFound
from twin.exports import CalendarEvent, csv_text, filename_stamp, ical_text, iso
from twin.fields import Key
from twin.knowledge.base import KnowledgeBody, entry_dict
from twin.schemas import KnowledgeEntries, KnowledgeEntryPublic, MaintenancePlan
from twin.schemas.advice import KnowledgeCreate
from twin.tables import KnowledgeEntry

router = APIRouter(tags=["advice"])


@router.get("/knowledge", response_model=KnowledgeEntries)
def list_knowledge(
    session: SessionDep, _who: ViewerDep, asset_type: Annotated[Key | None, Query()] = None
) -> KnowledgeEntries:
    """The current entries of the knowledge base."""
    items = [_entry(r) for r in knowledge.current(session, asset_type)]
    return KnowledgeEntries(items=items, count=len(items))


def _entry(row: KnowledgeEntry) -> KnowledgeEntryPublic:
    return KnowledgeEntryPublic.model_validate(entry_dict(row))


@router.get("/knowledge/{asset_type}/{condition}", response_model=KnowledgeEntryPublic)
def get_knowledge(session: SessionDep, _who: ViewerDep, asset_type: Key, condition: Key) -> KnowledgeEntryPublic:
    """The current version of one entry."""
    return _entry(knowledge.get_current(session, asset_type, condition))


@router.get("/knowledge/{asset_type}/{condition}/versions", response_model=KnowledgeEntries)
def knowledge_versions(session: SessionDep, _who: ViewerDep, asset_type: Key, condition: Key) -> KnowledgeEntries:
    """Every version of one entry, oldest first."""
    items = [_entry(r) for r in knowledge.versions(session, asset_type, condition)]
    return KnowledgeEntries(items=items, count=len(items))


@router.post("/knowledge", status_code=201, response_model=KnowledgeEntryPublic)
def create_knowledge(session: SessionDep, who: EngineerDep, body: KnowledgeCreate) -> KnowledgeEntryPublic:
    """Add an entry (engineer and up); 409 if one exists for this asset type and condition."""
    content = KnowledgeBody.model_validate(body.model_dump(exclude={"asset_type", "condition"}))
    row, _ = knowledge.put(
        session, body.asset_type, body.condition, content, by=who.name or who.prefix, create_only=True
    )
    audit.record(session, who, "knowledge.create", f"knowledge:{body.asset_type}/{body.condition}",
                 after=content.model_dump(mode="json"))
    session.commit()
    return _entry(row)


@router.put("/knowledge/{asset_type}/{condition}", response_model=KnowledgeEntryPublic)
def update_knowledge(
    session: SessionDep, who: EngineerDep, asset_type: Key, condition: Key, body: KnowledgeBody
) -> KnowledgeEntryPublic:
    """Replace an entry's content: a new version when it differs (engineer and up)."""
    was = _current_body(session, asset_type, condition)
    row, changed = knowledge.put(session, asset_type, condition, body, by=who.name or who.prefix)
    if changed:
        audit.record(session, who, "knowledge.update", f"knowledge:{asset_type}/{condition}",
                     before=was, after=body.model_dump(mode="json"))
    session.commit()
    return _entry(row)


@router.delete("/knowledge/{asset_type}/{condition}", status_code=204)
def delete_knowledge(session: SessionDep, who: EngineerDep, asset_type: Key, condition: Key) -> None:
    """Retire an entry; its versions stay readable (engineer and up)."""
    was = _current_body(session, asset_type, condition)
    knowledge.delete(session, asset_type, condition, by=who.name or who.prefix)
    audit.record(session, who, "knowledge.delete", f"knowledge:{asset_type}/{condition}",
                 before=was)
    session.commit()


def _current_body(session: Session, asset_type: str, condition: str) -> dict[str, Any] | None:
    """An entry's current content, for the audit trail's before; None if there is none."""
    try:
        return dict(knowledge.get_current(session, asset_type, condition).body)
    except NotFound:
        return None


Subtree = Annotated[Key | None, Query(description="only this node and below")]


@router.get("/maintenance-plan", response_model=MaintenancePlan)
def get_maintenance_plan(session: SessionDep, who: ViewerDep, subtree: Subtree = None) -> MaintenancePlan:
    """The open work across the plant, most urgent first, each with its advice and evidence."""
    now = now_us()
    items = []
    for item in maintenance_plan(session, now=now, subtree=subtree, sites=who.sites):
        d = item.as_dict()
        d["due"] = from_us(item.due)
        d["advice"] = [asdict(a) for a in item.advice]
        items.append(d)
    return MaintenancePlan.model_validate({"generated_at": from_us(now), "items": items, "count": len(items)})


PLAN_COLUMNS = (
    "due", "overdue", "priority", "asset", "path", "condition", "rule", "why", "due_reason", "task", "actions",
    "parts", "skills", "duration_h", "alert_id", "state", "work_orders",
)  # fmt: skip


def _plan_row(item: PlanItem) -> list[object]:
    best = item.advice[0] if item.advice else None
    parts = "; ".join(f"{p.get('quantity', 1):g} × {p.get('part', '')} {p.get('number', '')}".strip()
                      for p in (best.parts if best else []))  # fmt: skip
    orders = "; ".join(f"#{w['id']} {w['state']} {w['assignee']}".strip() for w in item.work_orders)
    return [
        iso(item.due), item.overdue, item.priority, item.node, item.path, item.condition, item.rule, item.reason,
        item.due_reason, best.title if best else "", " / ".join(best.actions) if best else "", parts,
        ", ".join(best.skills) if best else "", best.duration_h if best and best.duration_h else "",
        item.alert_id, item.state, orders,
    ]  # fmt: skip


def _attachment(body: str, media: str, name: str) -> Response:
    return Response(body, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/maintenance-plan.csv", response_class=Response, responses={200: {"content": {"text/csv": {}}}})
def get_plan_csv(session: SessionDep, who: ViewerDep, subtree: Subtree = None) -> Response:
    """The open work as CSV, by due date: what, where, why, by when, how."""
    now = now_us()
    rows = [_plan_row(i) for i in maintenance_plan(session, now=now, subtree=subtree, sites=who.sites)]
    return _attachment(csv_text(PLAN_COLUMNS, rows), "text/csv; charset=utf-8",
                       f"maintenance-plan-{filename_stamp(now)}.csv")


@router.get("/maintenance-plan.ics", response_class=Response, responses={200: {"content": {"text/calendar": {}}}})
def get_plan_ical(session: SessionDep, who: ViewerDep, subtree: Subtree = None) -> Response:
    """The open work as an iCalendar file: an event per item at its due date (a stable UID per alert, so a
    calendar that imports it again updates the events instead of doubling them)."""
    now = now_us()
    events = []
    for item in maintenance_plan(session, now=now, subtree=subtree, sites=who.sites):
        best = item.advice[0] if item.advice else None
        steps = "\n".join(f"{n}. {a}" for n, a in enumerate(best.actions if best else [], start=1))
        description = "\n".join(x for x in (item.reason, f"Due: {item.due_reason}", steps,
                                             f"Alert #{item.alert_id} ({item.rule} {item.condition})") if x)
        events.append(CalendarEvent(
            uid=f"plan-alert-{item.alert_id}@factory-twin",
            start=item.due,
            minutes=round((best.duration_h if best and best.duration_h else 1.0) * 60),
            summary=f"[{item.priority}] {item.node}: {best.title if best else item.message or item.condition}",
            description=description,
            location=item.path,
            priority=item.priority,
        ))  # fmt: skip
    body = ical_text(events, stamp=now, name="factory-twin maintenance plan")
    return _attachment(body, "text/calendar; charset=utf-8", f"maintenance-plan-{filename_stamp(now)}.ics")
