"""What the dashboard's own API routes return (twin/dashboard/api.py): plant health, trends, diagnoses over time."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

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
