"""API schemas of the setpoint writes and commands (the routes: twin/api/routes/setpoints.py)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from twin.fields import Reason


class DesiredRequest(BaseModel):
    """A setpoint write: the value (checked against the property's type and limits), why, how long it may wait."""

    model_config = ConfigDict(extra="forbid")

    value: Any = Field(description="a number within the property's limits")
    reason: Reason = ""
    expires_s: float | None = Field(None, gt=0, le=3600, description="default: the property's (60 s)")


class CommandPublic(BaseModel):
    """One setpoint command and what became of it."""

    id: str
    node: str
    prop: str
    gateway: str
    value: float
    previous: float | None
    state: str
    actor: str
    reason: str
    confirmed_by: str | None
    created_at: str
    expires_at: str
    outcome: str = Field(description="why it was refused or failed, as a code")
    detail: str
    reported: float | None = Field(description="the value the gateway read back after writing")


class DesiredState(BaseModel):
    """Desired against reported for one writable property."""

    node: str
    prop: str
    desired: float | None
    reported: float | int | bool | str | None = Field(description="the latest value measured")
    in_sync: bool
    command: CommandPublic | None
