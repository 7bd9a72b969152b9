"""API schemas: what the REST API accepts and returns, apart from the tables (twin/tables.py).

Here the schemas several routes and queries share; those of one resource in ``twin/schemas/<name>.py``, named
as its route module ``twin/api/routes/<name>.py``.

Timestamps are ISO 8601 with a timezone (UTC) here, µs integers in the database. Every value carries what a
dashboard needs to show it without a second request: unit, quality, flags, and the node's kind, type and
criticality.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field

from twin.auth import Role
from twin.fields import Key, Name
from twin.schemas.base import Schema

Scalar = float | int | bool | str
QualityName = Literal["good", "uncertain", "bad"]
Order = Literal["asc", "desc"]


class NodePublic(Schema):
    """A node of the plant hierarchy as the API shows it."""

    id: str
    parent_id: str | None
    path: str = Field(description="ids from the site down to this node, '/'-separated")
    kind: str = Field(description="site, area, line, machine or component")
    name: str = Field(description="display name")
    type: str | None = Field(description="asset type from the site model, for machines and components")
    criticality: str = Field(description="high, medium or low")
    attributes: dict[str, Any] = Field({})
    position: int = Field(0, description="order among its siblings, as in the site file")
    retired_at: datetime | None = Field(
        None, description="when the node left the site file; kept for its history"
    )


class NodeTree(NodePublic):
    """A node with its children, in site-file order."""

    children: list[NodeTree] = Field([])


class NodeForest(Schema):
    """The node tree: the roots (sites, or the requested subtree's root) and how many nodes it holds."""

    items: list[NodeTree]
    count: int = Field(description="number of nodes in the whole tree")


class PropertyPublic(Schema):
    """A property of a node with its latest value; ``value`` is null until a value has arrived.

    Self-contained (it names its node), so a live update can carry exactly this object.
    """

    node_id: str
    name: str
    description: str = ""
    unit: str = ""
    dtype: str = Field(description="float, int, bool or string")
    range_low: float | None = None
    range_high: float | None = None
    value: Scalar | None = None
    ts: datetime | None = Field(None, description="source timestamp of the latest value")
    server_ts: datetime | None = None
    stored_ts: datetime | None = Field(None, description="when the platform stored it")
    quality: QualityName | None = None
    flags: list[str] = Field(
        [], description="what happened to the value on its way (clock_corrected, late...)"
    )
    retired_at: datetime | None = Field(None, description="when the property left its asset type")


class DiagnosisPublic(Schema):
    """A model's latest verdict on a node for one task (rul, faults, anomaly)."""

    task: str
    ts: datetime = Field(description="end of the window the model looked at")
    model: str
    version: str
    source: str = Field(description="edge, platform or edge_fallback")
    confidence: float
    payload: dict[str, Any] = Field(
        description="score, threshold, label, probability, rul and its interval, unit"
    )


class NodeState(Schema):
    """One node's latest state: the node, its properties' latest values, its latest diagnoses."""

    node: NodePublic
    properties: list[PropertyPublic]
    diagnoses: list[DiagnosisPublic]
    updated_ts: datetime | None = Field(description="the newest source timestamp among its properties")


class HistoryPoint(Schema):
    """One stored value of a property."""

    ts: datetime
    value: Scalar | None
    quality: QualityName


class HistoryBucket(Schema):
    """A property's numeric values over one time bucket (a rollup): ``value`` is the last of them."""

    ts: datetime = Field(description="bucket start")
    value: Scalar | None = Field(description="the value with the newest timestamp in the bucket")
    min: float
    max: float
    mean: float
    count: int


Resolution = Literal["raw", "1m", "1h", "auto"]


class HistoryPage(Schema):
    """A page of a property's history; pass ``next_cursor`` back as ``cursor`` for the next page."""

    node_id: str
    property: str
    unit: str
    dtype: str
    order: Order
    resolution: str = Field("raw", description="raw values, or 1m / 1h buckets (min, max, mean, count, last)")
    items: list[HistoryPoint] | list[HistoryBucket]
    count: int = Field(description="number of items on this page")
    next_cursor: str | None = Field(description="null on the last page")


class FramePublic(Schema):
    """One aligned frame of an asset: every signal's value at one grid point."""

    ts: datetime
    revision: int
    values: dict[str, Scalar | None]
    quality: dict[str, Any]


class FramesPage(Schema):
    """A page of a node's frames; pass ``next_cursor`` back as ``cursor`` for the next page."""

    node_id: str
    order: Order
    items: list[FramePublic]
    count: int
    next_cursor: str | None


class ApiKeyPublic(Schema):
    """An API key as listed: never the key itself."""

    prefix: str = Field(description="public part of the key; use it to revoke")
    name: str
    role: Role
    created_at: datetime
    last_used_at: datetime | None = Field(description="to the minute")
    revoked: bool
    expires_at: datetime | None = Field(None, description="refused from then on; none: never expires")
    owner: str | None = Field(None, description="the user it belongs to: it stops while they are disabled")
    rotated_to: str | None = Field(None, description="prefix of the key that replaced it")
    state: Literal["active", "revoked", "expired"] = "active"
    sites: list[str] | None = Field(None, description="the sites it may see and change (no more than its owner's); "
                                                      "null: every site")


class ApiKeyCreate(Schema):
    """A request for a new key."""

    role: Role
    name: Annotated[Name, Field(max_length=128)] = ""
    expires_in_days: float | None = Field(None, gt=0, le=3650, description="none: never expires")
    owner: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]*$",
                              description="a user the key belongs to (it stops while they are disabled)")
    sites: list[Key] | None = Field(None, max_length=64, description="the site ids it may see and change; "
                                                                     "null: every site")


class ApiKeyCreated(ApiKeyPublic):
    """A new key: ``key`` is shown this once and cannot be recovered."""

    key: str


class ApiKeyRotate(Schema):
    """A rotation: a new key now, the old one still valid for ``grace_s`` seconds (default: the setting)."""

    grace_s: float | None = Field(None, ge=0, le=90 * 86_400)


class ApiKeyRotated(ApiKeyCreated):
    """The new key (shown this once) and until when the old one still works."""

    replaces: str
    old_expires_at: datetime


class ApiKeysPublic(Schema):
    """A counted list of keys."""

    items: list[ApiKeyPublic]
    count: int


class Health(Schema):
    """Liveness of the platform."""

    status: Literal["ok", "unavailable"]
    detail: str | None = None


class Problem(Schema):
    """An error, as RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[dict[str, Any]] | None = None


class ModelFailurePublic(Schema):
    """Gateways that could not run a model version for an asset type, and why (the latest reason)."""

    gateway: str
    asset_type: str
    reason: str
    count: int = Field(description="reports received from this gateway for this asset type")
    first_at: datetime
    last_at: datetime


class ModelPublic(Schema):
    """A model version in the platform's registry."""

    task: str = Field(description="rul, faults or anomaly")
    name: str
    version: str
    sha256: str = Field(description="of the archive, as sent in X-Model-Sha256")
    size: int = Field(description="archive bytes")
    variants: list[str] = Field(description="variants whose ONNX file the archive holds")
    uploaded_at: datetime
    uploaded_by: str
    metrics: dict[str, dict[str, Any]] = Field(description="per variant, from the manifest")
    promoted_for: list[str] = Field(description="asset types whose agents run this version")
    failures: list[ModelFailurePublic] = Field([])


class ModelsPublic(Schema):
    """A counted list of model versions, by task and newest version first."""

    items: list[ModelPublic]
    count: int


class ModelCreated(Schema):
    """An uploaded model version."""

    task: str
    name: str
    version: str
    sha256: str


class ModelPromote(Schema):
    """Which asset type's agents should run a version."""

    asset_type: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class KnowledgeEntryPublic(Schema):
    """One stored version of a knowledge-base entry."""

    asset_type: str
    condition: str = Field(description="a fault label, alert rule id or rule kind")
    version: int
    current: bool = Field(description="the newest version, which advice uses")
    deleted: bool = Field(description="retired: kept for the record, no longer advised")
    source: str = Field(description="the file it came from, or api")
    created_at: int = Field(description="µs since the epoch")
    created_by: str
    body: dict[str, Any] = Field(description="title, causes, actions, parts, skills, safety... (KnowledgeBody)")


class KnowledgeEntries(Schema):
    """A counted list of knowledge-base entries or versions."""

    items: list[KnowledgeEntryPublic]
    count: int


class AdvicePublic(Schema):
    """One recommendation for an alert: repair a probable cause, or inspect when the diagnosis is unsure."""

    kind: Literal["repair", "inspect"]
    title: str
    cause: str
    confidence: float
    actions: list[str]
    parts: list[dict[str, Any]] = Field(description="part, quantity, number")
    skills: list[str]
    duration_h: float | None
    safety: list[str]
    source: str = Field(description="the knowledge-base entry: asset_type/condition@version")


class AlertAdvice(Schema):
    """Ranked advice for an alert, with its due date and why."""

    alert_id: int
    due: datetime
    due_reason: str
    advice: list[AdvicePublic]


class PlanItemPublic(Schema):
    """One piece of open work: an alert, its advice, when it is due and why, and the work orders on it."""

    alert_id: int
    node: str
    path: str
    rule: str
    condition: str
    state: str
    priority: str
    due: datetime
    due_reason: str
    overdue: bool
    advice: list[AdvicePublic]
    evidence: dict[str, Any]
    message: str
    reason: str = Field(description="why the alert is active, with its numbers")
    work_orders: list[dict[str, Any]] = Field(description="id, state and assignee of each dealing with it")


class MaintenancePlan(Schema):
    """The open work across the plant, most urgent first."""

    generated_at: datetime
    items: list[PlanItemPublic]
    count: int
