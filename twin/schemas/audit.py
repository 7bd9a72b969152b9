"""API schemas of ``/api/v1/audit`` (the routes: twin/api/routes/audit.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class AuditPublic(BaseModel):
    """One audit record."""

    model_config = ConfigDict(extra="forbid")

    id: int
    at: datetime
    actor: str = Field(description="who: a username, or the API key used")
    address: str = Field(description="the client address the request came from")
    action: str
    target: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class AuditPage(BaseModel):
    """A page of the audit trail, newest first; ``next_before_id`` asks for the next (older) page."""

    model_config = ConfigDict(extra="forbid")

    items: list[AuditPublic]
    count: int
    next_before_id: int | None
