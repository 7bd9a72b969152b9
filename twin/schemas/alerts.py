"""API schemas of ``/api/v1/alerts`` (the routes: twin/api/routes/alerts.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field

from twin.fields import Reason, Text
from twin.schemas.base import Schema

StateName = Literal["normal", "active_unack", "active_ack", "returned_unack"]


PriorityName = Literal["critical", "high", "medium", "low"]


class AlertPublic(Schema):
    """An alert as the API shows it."""

    id: int
    node: str
    path: str
    asset_type: str
    rule: str
    kind: str
    condition: str
    state: StateName
    active: bool
    priority: PriorityName
    severity: str
    message: str
    value: float | None = Field(description="what the rule saw, in ``unit``")
    unit: str
    limit: float | None = Field(description="the limit the value crossed, in ``unit``")
    reason: str = Field(description="why it is active, a sentence with the numbers")
    occurrences: int = Field(description="how often the condition came back while the alert was open")
    group_id: int | None = Field(description="the first alert of a shared cause within the machine")
    flapping: bool
    suppressed: bool = Field(description="suppressed by design (e.g. machine stopped)")
    shelved_until: datetime | None
    raised_at: datetime
    activated_at: datetime = Field(description="start of the current activation")
    updated_at: datetime = Field(description="the last change of any kind (a page compares it to patch a row)")
    returned_at: datetime | None
    acked_at: datetime | None
    acked_by: str | None
    closed_at: datetime | None
    evidence: dict[str, Any]


class AlertPage(Schema):
    """A page of alerts, newest first."""

    items: list[AlertPublic]
    count: int
    total: int


class TransitionPublic(Schema):
    """One stored transition: who, when, why."""

    id: int
    at: datetime
    actor: str
    action: str
    from_state: str
    to_state: str
    priority: str
    reason: str


class ActionRequest(Schema):
    """Why an action is taken (stored with the transition)."""

    reason: Reason = ""


class ShelveRequest(Schema):
    """Shelve for ``minutes`` (at most a day): hidden from notifications, back by itself afterwards."""

    minutes: float = Field(gt=0, le=1440)
    reason: Annotated[Reason, Field(min_length=1)]


class FeedbackCreate(Schema):
    """What was found: a true fault, a false alarm, or the cause."""

    verdict: Literal["true_fault", "false_alarm", "cause_found"]
    cause: Reason = ""
    comment: Text = ""


class FeedbackPublic(FeedbackCreate):
    """Stored feedback with the window and evidence that caused the alert."""

    id: int
    alert_id: int
    at: datetime
    by: str
    node: str
    rule: str
    window_start: datetime
    window_end: datetime
    evidence: dict[str, Any]


class AreaRate(Schema):
    """One operator area's alarm rate and its EEMUA 191 band."""

    area: str
    alarms: int = Field(description="raised or reactivated in the window")
    band: str = Field(description="very likely acceptable, manageable, likely over-demanding, ...")


class AlarmRate(Schema):
    """Alarms annunciated per operator area in the last 10 minutes, judged after EEMUA 191."""

    window_s: float
    acceptable: int = Field(description="fewer than this per window: very likely acceptable")
    manageable: int = Field(description="at most this many per window (one per 5 minutes): manageable")
    areas: dict[str, int]
    bands: list[AreaRate]


class AlertSummary(Schema):
    """Counts for a badge: what needs a person now, and what is open but quiet."""

    needs_ack: int = Field(description="open, unacknowledged, neither shelved nor suppressed")
    active: int = Field(description="open and active, neither shelved nor suppressed")
    open: int = Field(description="not back to normal, shelved and suppressed ones included")
    shelved: int
    suppressed: int
    flapping: int
    by_priority: dict[str, int] = Field(description="needs_ack by priority")


class CommentCreate(Schema):
    """A note on an alert, kept in its history."""

    text: Annotated[Text, Field(min_length=1)]
