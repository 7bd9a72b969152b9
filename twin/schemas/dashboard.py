"""What the dashboard's own API routes take and return (twin/dashboard/api.py): logging in and out, plant health,
trends, diagnoses over time."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from twin.auth import Role
from twin.fields import Name, Token
from twin.schemas.base import Schema

Level = Literal["unknown", "ok", "warning", "alarm"]


class NodeHealthPublic(Schema):
    """One node's health: its own and the worst of its subtree, and why."""

    level: Level = Field(description="the worst level in the node's subtree, itself included")
    own: Level
    reasons: list[str] = Field(description="why the node itself is not ok, in words")
    open_alerts: int = Field(description="open alerts on the node and below")


class PlantHealth(Schema):
    """Every current node's health, by node id."""

    generated_at: datetime
    nodes: dict[str, NodeHealthPublic]


class Trend(Schema):
    """A property's history over a range in at most ``points`` buckets, as columns (one entry per bucket)."""

    node_id: str
    property: str
    unit: str
    range_low: float | None
    range_high: float | None
    start: datetime
    end: datetime
    raw: bool = Field(description="the buckets are the raw points (the range held no more than asked for)")
    bucket_s: float
    ts: list[int] = Field(description="bucket starts, ms since the epoch")
    min: list[float]
    max: list[float]
    mean: list[float]
    count: list[int]
    quality: list[Literal["good", "uncertain", "bad"] | None] = Field(
        description="the worst quality in each bucket; null where it came from rollups"
    )


class Diagnoses(Schema):
    """A node's diagnoses over a range, oldest first, by task (each: ts in ms, source, confidence, payload)."""

    node_id: str
    start: datetime
    end: datetime
    tasks: dict[str, list[dict[str, Any]]]
    truncated: bool = Field(description="more diagnoses exist in the range than were returned")


class LoginRequest(Schema):
    """Either ``username`` and ``password``, or ``api_key``."""

    username: Annotated[Name, Field(max_length=64)] | None = None
    password: str | None = Field(None, max_length=1024)
    api_key: Annotated[Token, Field(max_length=256)] | None = None

    @model_validator(mode="after")
    def _one_way(self) -> LoginRequest:
        if self.api_key is None and (self.username is None or self.password is None):
            raise ValueError("send username and password, or api_key")
        return self


class SessionPublic(Schema):
    """Who the token belongs to and what they may do."""

    name: str
    role: Role
    prefix: str
    session: bool = Field(description="a login session (revoked on logout), not a standing API key")
    sites: list[str] | None = Field(None, description="the sites it may see and change; null: every site")


class SessionCreated(SessionPublic):
    """A login: send ``token`` as ``Authorization: Bearer <token>``."""

    token: str
