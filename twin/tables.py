"""Database tables of the twin (SQLAlchemy 2 typed models). API schemas live in twin/schemas.py.

Timestamps that come from the plant are BIGINT microseconds since the epoch, UTC (see plant/wire.py): exact,
cheap to compare, the same on SQLite and PostgreSQL. Bookkeeping times (created, acknowledged) are too.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
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


class HistoryPoint(Base):
    """One stored value of one property; the key (property, source timestamp) makes writes idempotent."""

    __tablename__ = "twin_history"

    property_id: Mapped[int] = mapped_column(
        ForeignKey("twin_properties.id", ondelete="CASCADE"), primary_key=True
    )
    ts: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    value_num: Mapped[float | None] = mapped_column(Float)
    value_text: Mapped[str | None] = mapped_column(Text)
    quality: Mapped[int] = mapped_column(SmallInteger, default=0)


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
