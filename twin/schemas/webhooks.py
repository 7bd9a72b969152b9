"""API schemas of ``/api/v1/webhooks`` (the routes: twin/api/routes/webhooks.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from twin.fields import Key, Name, RowId, UrlText
from twin.schemas.base import Schema

Priority = Literal["critical", "high", "medium", "low"]


# rule kinds of alerts, and work_order for work-order events (native format only)
Kind = Literal["limit", "rate", "stale", "quality", "fault", "anomaly", "rul", "all", "any", "work_order"]


class SubscriptionUpdate(Schema):
    """Fields of a subscription that can change."""

    name: Annotated[Name, Field(min_length=1, max_length=128)] | None = None
    url: UrlText | None = None
    format: Literal["native", "alertmanager"] | None = None
    priorities: list[Priority] | None = Field(None, max_length=4)
    subtree: Key | None = None
    kinds: list[Kind] | None = Field(None, max_length=10)
    max_attempts: int | None = Field(None, ge=1, le=100)
    enabled: bool | None = None


class SubscriptionCreate(Schema):
    """A new subscription; a secret is generated when none is given."""

    name: Annotated[Name, Field(min_length=1, max_length=128)]
    url: UrlText
    secret: Annotated[Name, Field(min_length=16, max_length=128)] | None = None
    format: Literal["native", "alertmanager"] = "native"
    priorities: list[Priority] = Field(default_factory=list, max_length=4, description="empty: every priority")
    subtree: Annotated[Key | None, Field(description="a node id; empty: the whole plant")] = None
    kinds: list[Kind] = Field(
        default_factory=list,
        max_length=10,
        description="rule kinds, and work_order for work-order events; empty: every kind",
    )
    max_attempts: int = Field(18, ge=1, le=100, description="tries before a delivery is dead-lettered")
    enabled: bool = True


class SubscriptionPublic(Schema):
    """A subscription without its secret."""

    id: int
    name: str
    url: str
    format: str
    priorities: list[str]
    subtree: str | None
    kinds: list[str]
    max_attempts: int
    enabled: bool
    created_at: datetime


class SubscriptionCreated(SubscriptionPublic):
    """The created subscription with its secret, shown this once."""

    secret: str


class DeliveryPublic(Schema):
    """One queued, delivered or dead-lettered event."""

    id: int
    subscription_id: int
    event_key: str
    event: str
    alert_id: int | None
    node: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str
    created_at: datetime
    delivered_at: datetime | None


class ReplayRequest(Schema):
    """Replay given deliveries, or every delivery of the subscription in ``status``."""

    delivery_ids: list[RowId] | None = Field(None, max_length=1000)
    status: Literal["dead", "delivered"] = "dead"


class DeliveryPage(Schema):
    """A page of a subscription's deliveries, newest first."""

    items: list[DeliveryPublic]
    count: int
    total: int


class Replayed(Schema):
    """How many deliveries were queued again."""

    replayed: int
