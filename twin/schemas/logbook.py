"""API schemas of ``/api/v1/logbook`` (the routes: twin/api/routes/logbook.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from twin.schemas.base import Schema

SourceName = Literal["work_orders", "alerts", "models", "setpoints"]


class LogEntryPublic(Schema):
    """One line of the logbook."""

    at: datetime
    node: str
    source: SourceName
    kind: str
    title: str
    detail: str
    actor: str
    ref: str


class Logbook(Schema):
    """An asset's logbook over a range."""

    node: str | None
    start: datetime
    end: datetime
    items: list[LogEntryPublic]
    count: int
