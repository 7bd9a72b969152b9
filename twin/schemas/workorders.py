"""API schemas of ``/api/v1/work-orders`` (the routes: twin/api/routes/workorders.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from twin.fields import Key, Name, Reason, RowId, Text, Timestamp
from twin.knowledge.base import Part
from twin.schemas.base import Schema

StateName = Literal["open", "in_progress", "done", "cancelled"]


PriorityName = Literal["critical", "high", "medium", "low"]


Verdict = Literal["true_fault", "false_alarm", "cause_found"]


class WorkOrderDraft(Schema):
    """A work order as the knowledge base would write it for an alert."""

    node: str
    task: str
    task_source: str
    steps: list[str]
    parts: list[Part]
    priority: PriorityName
    due: datetime | None
    due_reason: str
    alert_ids: list[int]


class WorkOrderCreate(Schema):
    """A new work order: the asset, what to do, how urgent, by when, by whom, and the alerts it deals with."""

    node: Key
    task: Annotated[Name, Field(min_length=1)]
    task_source: Annotated[Name, Field(max_length=256, description="the knowledge-base entry it came from")] = ""
    steps: list[Reason] = Field(default_factory=list, max_length=50)
    parts: list[Part] = Field(default_factory=list, max_length=50)
    priority: PriorityName = "medium"
    due: Timestamp | None = None
    assignee: Annotated[Name, Field(max_length=128)] = ""
    alert_ids: list[RowId] = Field(default_factory=list, max_length=100)


class WorkOrderUpdate(Schema):
    """Who does it, how urgent, by when (fields left out stay; ``due: null`` removes the due date)."""

    assignee: Annotated[Name, Field(max_length=128)] | None = None
    priority: PriorityName | None = None
    due: Timestamp | None = None


class NoteRequest(Schema):
    """A note, or why (for start and cancel)."""

    text: Text = ""


class CancelRequest(Schema):
    """Why the work is not done."""

    reason: Annotated[Text, Field(min_length=1)]


class CompleteRequest(Schema):
    """What was done; ``verdict`` (needed when alerts are linked) becomes model feedback on each of them."""

    verdict: Verdict | None = None
    cause: Reason = ""
    notes: Text = ""
    parts: list[Part] | None = Field(None, max_length=50, description="parts used; left out: as planned")
    time_spent_h: float | None = Field(None, ge=0, le=10_000)


class WorkOrderPublic(Schema):
    """A work order as the API shows it."""

    id: int
    node: str
    path: str
    task: str
    task_source: str
    steps: list[str]
    priority: PriorityName
    state: StateName
    due: datetime | None
    overdue: bool
    assignee: str
    notes: str
    parts: list[Part]
    time_spent_h: float | None
    verdict: Verdict | None
    cause: str
    alert_ids: list[int]
    created_at: datetime
    created_by: str
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class WorkOrderPage(Schema):
    """A page of work orders, by due date (none last), then newest."""

    items: list[WorkOrderPublic]
    count: int
    total: int


class WorkOrderEventPublic(Schema):
    """One change of a work order."""

    id: int
    at: datetime
    actor: str
    action: str
    from_state: StateName
    to_state: StateName
    note: str
