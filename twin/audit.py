"""The audit trail: who changed what, when, from where, and the state before and after.

Every state-changing action a person or key takes calls ``record`` in the same transaction as the change, so
the change and its record commit together or not at all. Records are append-only: the database refuses to
update them, and to delete any but those older than a retention purge's cutoff (``purge``, run by the
platform's housekeeping when TWIN_AUDIT_RETENTION_DAYS is set).

Actions are ``<thing>.<verb>`` (``alert.acknowledge``, ``user.disable``, ``key.rotate``), targets
``<thing>:<id>`` (``alert:42``, ``user:alice``, ``key:ftk_0123456789ab``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import structlog
from sqlalchemy import CursorResult, delete, func, select
from sqlalchemy.orm import Session

from plant.wire import now_us
from twin.auth import Principal
from twin.exports import csv_text, iso
from twin.tables import AuditPurge, AuditRecord

log = structlog.get_logger(__name__)

MAX_LIMIT = 10_000
_TEXT_LIMITS = {"actor": 160, "address": 64, "action": 64, "target": 256}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def record(
    session: Session,
    actor: Principal | str,
    action: str,
    target: str,
    *,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    address: str | None = None,
) -> AuditRecord:
    """Add an audit record to ``session`` (the caller commits it with the change it describes)."""
    if isinstance(actor, Principal):
        address = actor.address if address is None else address
        actor = actor.actor
    row = AuditRecord(
        at=now_us(),
        actor=_text(actor, "actor"),
        address=_text(address or "", "address"),
        action=_text(action, "action"),
        target=_text(target, "target"),
        before=before,
        after=after,
    )
    session.add(row)
    return row


def _text(value: str, column: str) -> str:
    """``value`` cut to the column's size, control characters (a failed login's typed name) made visible."""
    return _CONTROL.sub("\N{REPLACEMENT CHARACTER}", value)[: _TEXT_LIMITS[column]]


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Which records to list: each field narrows, None leaves it open; times are µs, ``until`` exclusive.

    Args:
        actor: exactly this actor.
        action: this action, or with a trailing ``.`` (``alert.``) every action of that thing.
        target: exactly this target.
        since: at or after.
        until: before.
        before_id: older than this record (paging backwards).
    """

    actor: str | None = None
    action: str | None = None
    target: str | None = None
    since: int | None = None
    until: int | None = None
    before_id: int | None = None


def query(session: Session, where: AuditFilter, limit: int = 100) -> list[AuditRecord]:
    """Matching records, newest first, at most ``limit``."""
    a = AuditRecord
    stmt = select(a)
    if where.actor is not None:
        stmt = stmt.where(a.actor == where.actor)
    if where.action is not None:
        stmt = stmt.where(a.action.startswith(where.action, autoescape=True) if where.action.endswith(".")
                          else a.action == where.action)
    if where.target is not None:
        stmt = stmt.where(a.target == where.target)
    if where.since is not None:
        stmt = stmt.where(a.at >= where.since)
    if where.until is not None:
        stmt = stmt.where(a.at < where.until)
    if where.before_id is not None:
        stmt = stmt.where(a.id < where.before_id)
    return list(session.scalars(stmt.order_by(a.id.desc()).limit(min(limit, MAX_LIMIT))))


CSV_HEADER = ("id", "at", "actor", "address", "action", "target", "before", "after")


def to_csv(rows: Sequence[AuditRecord]) -> str:
    """The records as CSV (before and after as JSON text)."""
    import json

    def _json(value: dict[str, Any] | None) -> str:
        return "" if value is None else json.dumps(value, sort_keys=True, default=str)

    return csv_text(
        CSV_HEADER,
        ((r.id, iso(r.at), r.actor, r.address, r.action, r.target, _json(r.before), _json(r.after)) for r in rows),
    )


def purge(session: Session, retention_days: float, now: int | None = None) -> int:
    """Delete records older than ``retention_days`` and commit; returns how many. 0 days keeps all.

    The cutoff is written to ``twin_audit_purge`` for this transaction only: the append-only triggers let a
    DELETE through for rows older than it, and for nothing else.
    """
    if retention_days <= 0:
        return 0
    cutoff = (now or now_us()) - int(retention_days * 86_400e6)
    oldest = session.scalar(select(func.min(AuditRecord.at)))
    if oldest is None or oldest >= cutoff:
        return 0
    session.add(AuditPurge(before=cutoff))
    session.flush()
    result = cast("CursorResult[Any]", session.execute(delete(AuditRecord).where(AuditRecord.at < cutoff)))
    deleted = result.rowcount
    session.execute(delete(AuditPurge))
    session.commit()
    log.info("audit_records_purged", deleted=deleted, retention_days=retention_days)
    return int(deleted or 0)


def fields(row: object, names: Sequence[str]) -> dict[str, Any]:
    """The named attributes of ``row``, as a before or after state."""
    return {name: getattr(row, name) for name in names}
