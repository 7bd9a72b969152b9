"""Database tables of the twin (SQLAlchemy 2 typed models). API schemas live in twin/schemas/.

Timestamps that come from the plant are BIGINT microseconds since the epoch, UTC (see plant/wire.py): exact,
cheap to compare, the same on SQLite and PostgreSQL. Bookkeeping times (created, acknowledged) are too.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    DDL,
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    event,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Quality as stored: small integers, ordered by how much a value can be trusted.
QUALITY_CODES = {"good": 0, "uncertain": 1, "bad": 2}
QUALITY_NAMES = {v: k for k, v in QUALITY_CODES.items()}


class Base(DeclarativeBase):
    """Declarative base with the project's constraint naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class TwinNode(Base):
    """A node of the plant hierarchy: site, area, line, machine or component."""

    __tablename__ = "twin_nodes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("twin_nodes.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(String(1024), index=True)  # "/site/area/line/machine/", for subtree queries
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    type: Mapped[str | None] = mapped_column(String(64))
    criticality: Mapped[str] = mapped_column(String(8), default="medium")
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    position: Mapped[int] = mapped_column(Integer, default=0)  # order among siblings, as in the site file
    # set when the node left the site file: kept with its history, no longer accepts values
    retired_at: Mapped[int | None] = mapped_column(BigInteger)
    # the gateway that owns the node (its own or inherited from the site file); None: any gateway may write it
    gateway: Mapped[str | None] = mapped_column(String(64))


class TwinSite(Base):
    """A site file's model as last loaded, so the alert leader judges every site by its own rules, whichever
    process leads (twin/alerts/evaluator.py); written by the site sync (twin/site_sync.py)."""

    __tablename__ = "twin_sites"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the file's ``site.id``
    model: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class TwinGateway(Base):
    """An edge gateway allowed on the broker: its credential's hash, in Mosquitto's ``$7$`` PBKDF2 format."""

    __tablename__ = "twin_gateways"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[int] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger)


class TwinProperty(Base):
    """A property of a node with its latest value. History rows point here by ``id``."""

    __tablename__ = "twin_properties"
    __table_args__ = (UniqueConstraint("node_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("twin_nodes.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    unit: Mapped[str] = mapped_column(String(32), default="")
    dtype: Mapped[str] = mapped_column(String(8), default="float")
    range_low: Mapped[float | None] = mapped_column(Float)
    range_high: Mapped[float | None] = mapped_column(Float)
    description: Mapped[str] = mapped_column(Text, default="")
    # latest state: never moves backwards in source time
    value_num: Mapped[float | None] = mapped_column(Float)
    value_text: Mapped[str | None] = mapped_column(Text)
    ts: Mapped[int | None] = mapped_column(BigInteger)
    server_ts: Mapped[int | None] = mapped_column(BigInteger)
    recv_ts: Mapped[int | None] = mapped_column(BigInteger)
    stored_ts: Mapped[int | None] = mapped_column(BigInteger)
    quality: Mapped[int | None] = mapped_column(SmallInteger)
    flags: Mapped[str] = mapped_column(String(128), default="")
    # set when the property left its asset type: kept with its history, no longer accepts values
    retired_at: Mapped[int | None] = mapped_column(BigInteger)


class HistoryRow(Base):
    """One stored value of one property; the key (property, source timestamp) makes writes idempotent.

    No foreign key on ``property_id``: its per-row check is a large part of the database's cost of storing a
    value (docs/scaling.md), and the store writes only ids of its catalog's properties. A trigger on
    ``twin_properties`` (migrations/versions/0015) deletes a property's history with it, as the cascade did.
    """

    __tablename__ = "twin_history"

    property_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ts: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    value_num: Mapped[float | None] = mapped_column(Float)
    value_text: Mapped[str | None] = mapped_column(Text)
    quality: Mapped[int] = mapped_column(SmallInteger, default=0)


class FeedEntry(Base):
    """The history keys one stored batch added, waiting to be judged by the alert evaluator (twin/alerts/feed.py).

    Written in the transaction that stores the values, deleted in the transaction that writes the alerts they
    cause: each stored value is judged once, whatever order the writers commit in. ``property_ids`` and ``ts``
    are parallel arrays (JSON text on SQLite); ``stored_at`` the storing time, µs.
    """

    __tablename__ = "alert_feed"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    property_ids: Mapped[Any] = mapped_column(postgresql.ARRAY(Integer).with_variant(Text, "sqlite"))
    ts: Mapped[Any] = mapped_column(postgresql.ARRAY(BigInteger).with_variant(Text, "sqlite"))
    stored_at: Mapped[int] = mapped_column(BigInteger)


class FramePoint(Base):
    """One aligned frame of one asset; a later revision (late data within the watermark) replaces it."""

    __tablename__ = "twin_frames"

    node_id: Mapped[str] = mapped_column(ForeignKey("twin_nodes.id", ondelete="CASCADE"), primary_key=True)
    ts: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    values: Mapped[dict[str, Any]] = mapped_column(JSON)
    quality: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class DiagnosisRecord(Base):
    """A model's verdict on a window of an asset; key (node, task, window end)."""

    __tablename__ = "twin_diagnoses"

    node_id: Mapped[str] = mapped_column(ForeignKey("twin_nodes.id", ondelete="CASCADE"), primary_key=True)
    task: Mapped[str] = mapped_column(String(16), primary_key=True)
    ts: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))
    confidence: Mapped[float] = mapped_column(Float)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)  # score, threshold, label, probability, rul, interval


class IngestRejection(Base):
    """An input the platform refused, kept for people to inspect (bounded by a retention job)."""

    __tablename__ = "ingest_rejections"
    __table_args__ = (Index("ix_ingest_rejections_at", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[int] = mapped_column(BigInteger)
    gateway: Mapped[str] = mapped_column(String(64), default="")
    batch: Mapped[str] = mapped_column(String(64), default="")
    kind: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text, default="")


class DeadLetter(Base):
    """An uplink message that could not be stored, kept with its reason for people to inspect and replay.

    ``gateway`` is the gateway the message claimed (or its topic named), cleaned and cut to 64 characters;
    ``head`` the first bytes of the payload; ``payload`` the whole of it when it was not too large to keep.
    """

    __tablename__ = "twin_dead_letters"
    __table_args__ = (Index("ix_twin_dead_letters_received_at", "received_at"),
                      Index("ix_twin_dead_letters_reason", "reason"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    received_at: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")
    gateway: Mapped[str] = mapped_column(String(64), default="")
    topic: Mapped[str] = mapped_column(String(256), default="")
    size: Mapped[int] = mapped_column(Integer)
    head: Mapped[bytes] = mapped_column(LargeBinary)
    payload: Mapped[bytes | None] = mapped_column(LargeBinary)
    replayed_at: Mapped[int | None] = mapped_column(BigInteger)


class ApiKey(Base):
    """A bearer API key: only its SHA-256 is stored, the key itself is shown once at creation."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)  # first characters, to find and name a key
    hash: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[int] = mapped_column(BigInteger)
    last_used_at: Mapped[int | None] = mapped_column(BigInteger)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    # after this the key is refused; set at creation, or by a rotation (the old key's grace period)
    expires_at: Mapped[int | None] = mapped_column(BigInteger)
    # the person the key belongs to (a login session, or a key made for them): disabling them stops it
    owner: Mapped[str | None] = mapped_column(String(64), index=True)
    rotated_to: Mapped[str | None] = mapped_column(String(16))  # prefix of the key that replaced this one
    # the sites (top-level node ids) the key may see and change; None: every site (twin/scopes.py)
    sites: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True))


class Alert(Base):
    """One alert: an asset's condition from raise to return to normal (ISA-18.2), deduplicated while open.

    ``open_key`` is the dedup key (node, rule, direction) while the alert is open, NULL once back to normal:
    the unique constraint allows one open alert per asset and condition, and any number of closed ones.
    """

    __tablename__ = "alerts"
    __table_args__ = (
        UniqueConstraint("open_key"),
        Index("ix_alerts_state_priority", "state", "priority"),
        Index("ix_alerts_raised_at", "raised_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(256), index=True)
    open_key: Mapped[str | None] = mapped_column(String(256))
    node_id: Mapped[str] = mapped_column(String(64), index=True)
    node_path: Mapped[str] = mapped_column(String(1024), index=True)  # "/site/area/.../node/" for subtrees
    asset_type: Mapped[str] = mapped_column(String(64), default="")
    rule: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # limit, rate, stale, quality, fault, anomaly, rul, all/any
    condition: Mapped[str] = mapped_column(String(32))  # HI, HIHI, LO, LOLO, RATE, STALE, BAD, a fault label
    state: Mapped[str] = mapped_column(String(24))  # normal, active_unack, active_ack, returned_unack
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    severity: Mapped[str] = mapped_column(String(8))
    base_priority: Mapped[str] = mapped_column(String(8))
    priority: Mapped[str] = mapped_column(String(8))
    message: Mapped[str] = mapped_column(Text, default="")
    value: Mapped[float | None] = mapped_column(Float)
    unit: Mapped[str] = mapped_column(String(32), default="", server_default="")  # of value and limit
    limit: Mapped[float | None] = mapped_column("limit_value", Float)  # the limit the value crossed
    reason: Mapped[str] = mapped_column(Text, default="", server_default="")  # a sentence with the numbers
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    occurrences: Mapped[int] = mapped_column(Integer, default=1)
    group_id: Mapped[int | None] = mapped_column(Integer, index=True)  # the first alert of a shared cause
    flapping: Mapped[bool] = mapped_column(Boolean, default=False)
    shelved_until: Mapped[int | None] = mapped_column(BigInteger)
    suppressed: Mapped[bool] = mapped_column(Boolean, default=False)
    escalations: Mapped[int] = mapped_column(SmallInteger, default=0)
    raised_at: Mapped[int] = mapped_column(BigInteger)
    activated_at: Mapped[int] = mapped_column(BigInteger)  # start of the current activation
    returned_at: Mapped[int | None] = mapped_column(BigInteger)
    acked_at: Mapped[int | None] = mapped_column(BigInteger)
    acked_by: Mapped[str | None] = mapped_column(String(128))
    closed_at: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class AlertTransition(Base):
    """One change of an alert (state, priority, shelving...), with who did it, when and why."""

    __tablename__ = "alert_transitions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"), index=True)
    at: Mapped[int] = mapped_column(BigInteger)
    actor: Mapped[str] = mapped_column(String(128))  # "system" for the engine, else the API key's name
    action: Mapped[str] = mapped_column(String(24))
    from_state: Mapped[str] = mapped_column(String(24))
    to_state: Mapped[str] = mapped_column(String(24))
    priority: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str] = mapped_column(Text, default="")


class AlertFeedback(Base):
    """What people found about an alert, with the window and evidence that caused it, for retraining."""

    __tablename__ = "alert_feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"), index=True)
    at: Mapped[int] = mapped_column(BigInteger)
    by: Mapped[str] = mapped_column(String(128))
    verdict: Mapped[str] = mapped_column(String(16))  # true_fault, false_alarm, cause_found
    cause: Mapped[str] = mapped_column(Text, default="")
    comment: Mapped[str] = mapped_column(Text, default="")
    node_id: Mapped[str] = mapped_column(String(64))
    rule: Mapped[str] = mapped_column(String(64))
    window_start: Mapped[int] = mapped_column(BigInteger)
    window_end: Mapped[int] = mapped_column(BigInteger)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class AssetTypeRecord(Base):
    """What the site model says about an asset type that people look at: key signals, limits, thresholds.

    Written by the site sync (twin/site_sync.py); read by the dashboard to open an asset on the signals that
    matter, with the alarm limits drawn.
    """

    __tablename__ = "twin_asset_types"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # key_signals, limits, models
    updated_at: Mapped[int] = mapped_column(BigInteger)


class WorkOrder(Base):
    """A piece of maintenance work on an asset: open → in progress → done or cancelled (twin/workorders.py)."""

    __tablename__ = "work_orders"
    __table_args__ = (Index("ix_work_orders_state_due", "state", "due_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node_id: Mapped[str] = mapped_column(String(64), index=True)
    node_path: Mapped[str] = mapped_column(String(1024))  # "/site/area/.../node/", for subtrees
    task: Mapped[str] = mapped_column(String(200))  # what to do, in a line
    task_source: Mapped[str] = mapped_column(String(256), default="")  # "asset_type/condition@version" of the KB
    steps: Mapped[list[str]] = mapped_column(JSON, default=list)  # the actions, in order
    priority: Mapped[str] = mapped_column(String(8))
    state: Mapped[str] = mapped_column(String(16))  # open, in_progress, done, cancelled
    due_at: Mapped[int | None] = mapped_column(BigInteger)
    assignee: Mapped[str] = mapped_column(String(128), default="")
    notes: Mapped[str] = mapped_column(Text, default="")
    parts: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # [{part, quantity, number}]
    time_spent_h: Mapped[float | None] = mapped_column(Float)
    verdict: Mapped[str | None] = mapped_column(String(16))  # true_fault, false_alarm, cause_found (when done)
    cause: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[int] = mapped_column(BigInteger)
    created_by: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[int] = mapped_column(BigInteger)
    started_at: Mapped[int | None] = mapped_column(BigInteger)
    finished_at: Mapped[int | None] = mapped_column(BigInteger)


class WorkOrderAlert(Base):
    """An alert a work order deals with; completing the work order acknowledges it and records the verdict."""

    __tablename__ = "work_order_alerts"

    work_order_id: Mapped[int] = mapped_column(ForeignKey("work_orders.id", ondelete="CASCADE"), primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"), primary_key=True, index=True)


class WorkOrderEvent(Base):
    """One change of a work order (created, assigned, started, noted, done, cancelled), with who, when, why."""

    __tablename__ = "work_order_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    work_order_id: Mapped[int] = mapped_column(ForeignKey("work_orders.id", ondelete="CASCADE"), index=True)
    at: Mapped[int] = mapped_column(BigInteger)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(16))
    from_state: Mapped[str] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    note: Mapped[str] = mapped_column(Text, default="")


class KnowledgeEntry(Base):
    """One version of a knowledge-base entry: causes and actions for a condition on an asset type."""

    __tablename__ = "knowledge_entries"
    __table_args__ = (UniqueConstraint("asset_type", "condition", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    asset_type: Mapped[str] = mapped_column(String(64))
    condition: Mapped[str] = mapped_column(String(64))  # a rule id, a fault label or a rule kind
    version: Mapped[int] = mapped_column(Integer)
    current: Mapped[bool] = mapped_column(Boolean, default=True)  # the latest, not deleted, version
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    source: Mapped[str] = mapped_column(String(256), default="")  # file it came from, or "api"
    created_at: Mapped[int] = mapped_column(BigInteger)
    created_by: Mapped[str] = mapped_column(String(128), default="")


class WebhookSubscription(Base):
    """Where alert events are sent, which ones, and in which format."""

    __tablename__ = "webhook_subscriptions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    url: Mapped[str] = mapped_column(String(2048))
    secret: Mapped[str] = mapped_column(String(128))  # HMAC key; needed in clear to sign
    format: Mapped[str] = mapped_column(String(16), default="native")  # native, alertmanager
    priorities: Mapped[list[str]] = mapped_column(JSON, default=list)  # empty: all
    subtree: Mapped[str | None] = mapped_column(String(64))  # a node id; None: the whole plant
    kinds: Mapped[list[str]] = mapped_column(JSON, default=list)  # rule kinds; empty: all
    max_attempts: Mapped[int] = mapped_column(Integer, default=18)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[int] = mapped_column(BigInteger)


class WebhookDelivery(Base):
    """One event for one subscription: the delivery queue, written in the alert change's transaction."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("subscription_id", "event_key"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_order", "subscription_id", "node_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subscription_id: Mapped[int] = mapped_column(ForeignKey("webhook_subscriptions.id", ondelete="CASCADE"))
    event_key: Mapped[str] = mapped_column(String(64))  # the Idempotency-Key: same on every retry and replay
    event: Mapped[str] = mapped_column(String(32))  # alert.raised, alert.acknowledged...
    alert_id: Mapped[int | None] = mapped_column(Integer)
    node_id: Mapped[str] = mapped_column(String(64))  # events of one asset are delivered in id order
    body: Mapped[str] = mapped_column(Text)  # rendered once, so every attempt sends the same bytes
    status: Mapped[str] = mapped_column(String(12), default="pending")  # pending, sending, delivered, dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[int] = mapped_column(BigInteger)
    lease_until: Mapped[int | None] = mapped_column(BigInteger)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[int] = mapped_column(BigInteger)  # when the alert change was committed (µs)
    delivered_at: Mapped[int | None] = mapped_column(BigInteger)


class User(Base):
    """A person who logs in to the dashboard with a password; only a salted scrypt hash of it is stored."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))  # "scrypt$n$r$p$salt$hash", base64 parts
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[int] = mapped_column(BigInteger)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    password_changed_at: Mapped[int | None] = mapped_column(BigInteger)
    # the sites (top-level node ids) the person may see and change; None: every site (twin/scopes.py)
    sites: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True))


class AuditRecord(Base):
    """One change a person (or key) made: who, when, from where, what, and the state before and after.

    Append-only: triggers (AUDIT_TRIGGERS, and migration 0009) refuse UPDATE, and DELETE of any row not older
    than the cutoff a retention purge has written into ``twin_audit_purge`` in its own transaction.
    """

    __tablename__ = "twin_audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[int] = mapped_column(BigInteger, index=True)
    actor: Mapped[str] = mapped_column(String(160), index=True)
    address: Mapped[str] = mapped_column(String(64), default="")
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(256), index=True)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class AuditPurge(Base):
    """The cutoff of a retention purge in progress: present only inside the purge's transaction."""

    __tablename__ = "twin_audit_purge"

    before: Mapped[int] = mapped_column(BigInteger, primary_key=True)


class _Rollup:
    """Columns shared by the history rollups: one row per property and time bucket, numeric values only."""

    property_id: Mapped[int] = mapped_column(
        ForeignKey("twin_properties.id", ondelete="CASCADE"), primary_key=True
    )
    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # bucket start, µs
    vmin: Mapped[float] = mapped_column(Float)
    vmax: Mapped[float] = mapped_column(Float)
    vmean: Mapped[float] = mapped_column(Float)
    n: Mapped[int] = mapped_column(Integer)  # how many values the bucket holds
    vlast: Mapped[float | None] = mapped_column(Float)  # the value with the newest timestamp
    last_ts: Mapped[int] = mapped_column(BigInteger)


class HistoryMinute(_Rollup, Base):
    """1-minute rollup of twin_history (min, max, mean, count, last), kept up to date by twin.history."""

    __tablename__ = "twin_history_1m"


class HistoryHour(_Rollup, Base):
    """1-hour rollup of twin_history, computed from the 1-minute rollup."""

    __tablename__ = "twin_history_1h"


class HistoryState(Base):
    """Bookkeeping of the history job: how far the rollups are complete, which storage the history uses."""

    __tablename__ = "twin_history_state"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)
    note: Mapped[str] = mapped_column(String(64), default="")


class ModelVersion(Base):
    """One version of a diagnostic model uploaded to the platform: its registry directory as a tar.gz archive.

    The archive lives in the database, so every API replica serves the same bytes and keeps no files.
    """

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("task", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(String(16))
    version: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(String(64))  # of the archive bytes, checked by the agents
    size: Mapped[int] = mapped_column(Integer)
    archive: Mapped[bytes] = mapped_column(LargeBinary)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    variants: Mapped[list[str]] = mapped_column(JSON, default=list)  # variants whose ONNX file the archive holds
    uploaded_at: Mapped[int] = mapped_column(BigInteger)
    uploaded_by: Mapped[str] = mapped_column(String(128), default="")


class ModelPromotion(Base):
    """The version of a task that the agents run for an asset type."""

    __tablename__ = "model_promotions"

    asset_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    task: Mapped[str] = mapped_column(String(16), primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), index=True)
    promoted_at: Mapped[int] = mapped_column(BigInteger)
    promoted_by: Mapped[str] = mapped_column(String(128), default="")


class ModelFailure(Base):
    """A gateway could not run a model version for an asset type (it failed to load, or left its range).

    One row per version, gateway and asset type: a repeated report updates it and counts.
    """

    __tablename__ = "model_failures"
    __table_args__ = (UniqueConstraint("model_id", "gateway", "asset_type"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    gateway: Mapped[str] = mapped_column(String(64))
    asset_type: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    count: Mapped[int] = mapped_column(Integer, default=1)
    first_at: Mapped[int] = mapped_column(BigInteger)
    last_at: Mapped[int] = mapped_column(BigInteger)


# The audit trail refuses change (migration 0009 creates the same triggers; these serve ``create_all``).
AUDIT_TRIGGERS: dict[str, tuple[str, ...]] = {
    "sqlite": (
        "CREATE TRIGGER twin_audit_no_update BEFORE UPDATE ON twin_audit "
        "BEGIN SELECT RAISE(ABORT, 'twin_audit is append-only: UPDATE refused'); END",
        "CREATE TRIGGER twin_audit_no_delete BEFORE DELETE ON twin_audit "
        "WHEN OLD.at >= COALESCE((SELECT MAX(before) FROM twin_audit_purge), 0) "
        "BEGIN SELECT RAISE(ABORT, 'twin_audit is append-only: DELETE refused (retention purge only)'); END",
    ),
    "postgresql": (
        """CREATE OR REPLACE FUNCTION twin_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.at < COALESCE((SELECT MAX(before) FROM twin_audit_purge), 0) THEN
            RETURN OLD;
        END IF;
    END IF;
    RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
        MESSAGE = 'twin_audit is append-only: ' || TG_OP || ' refused (retention purge only)';
END $$""",
        "CREATE TRIGGER twin_audit_append_only BEFORE UPDATE OR DELETE ON twin_audit "
        "FOR EACH ROW EXECUTE FUNCTION twin_audit_append_only()",
        "CREATE TRIGGER twin_audit_no_truncate BEFORE TRUNCATE ON twin_audit "
        "FOR EACH STATEMENT EXECUTE FUNCTION twin_audit_append_only()",
    ),
}
for _dialect, _statements in AUDIT_TRIGGERS.items():
    for _sql in _statements:
        event.listen(AuditRecord.__table__, "after_create", DDL(_sql).execute_if(dialect=_dialect))  # type: ignore[no-untyped-call]


# A property's history goes with it (migration 0015 creates the same triggers; these serve ``create_all``).
HISTORY_CASCADE: dict[str, tuple[str, ...]] = {
    "sqlite": (
        "CREATE TRIGGER twin_properties_delete_history BEFORE DELETE ON twin_properties "
        "BEGIN DELETE FROM twin_history WHERE property_id = OLD.id; END",
    ),
    "postgresql": (
        """CREATE OR REPLACE FUNCTION twin_properties_delete_history() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM twin_history WHERE property_id = OLD.id;
    RETURN OLD;
END $$""",
        "CREATE TRIGGER twin_properties_delete_history BEFORE DELETE ON twin_properties "
        "FOR EACH ROW EXECUTE FUNCTION twin_properties_delete_history()",
    ),
}
for _dialect, _statements in HISTORY_CASCADE.items():
    for _sql in _statements:
        event.listen(TwinProperty.__table__, "after_create", DDL(_sql).execute_if(dialect=_dialect))  # type: ignore[no-untyped-call]


class SetpointCommand(Base):
    """One setpoint write: desired value, who asked and why, its state, and what the gateway reported.

    ``state`` is a ``plant.wire.CommandState``; once final (applied, rejected, failed, expired) it never
    changes again and the command is never sent again.
    """

    __tablename__ = "twin_commands"
    __table_args__ = (Index("ix_twin_commands_node_prop", "node_id", "prop", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    node_id: Mapped[str] = mapped_column(String(64))
    prop: Mapped[str] = mapped_column(String(64))
    gateway: Mapped[str] = mapped_column(String(64), index=True)
    value: Mapped[float] = mapped_column(Float)
    previous: Mapped[float | None] = mapped_column(Float, nullable=True)  # the desired value it replaces
    state: Mapped[str] = mapped_column(String(32), index=True)
    actor: Mapped[str] = mapped_column(String(160))
    reason: Mapped[str] = mapped_column(Text, default="")  # why the person asked for it
    confirmed_by: Mapped[str | None] = mapped_column(String(160), nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    sent_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    ended_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    outcome: Mapped[str] = mapped_column(String(64), default="")  # the refusal or failure code
    detail: Mapped[str] = mapped_column(Text, default="")  # for people: limits, status code
    reported: Mapped[float | None] = mapped_column(Float, nullable=True)  # the value read back
