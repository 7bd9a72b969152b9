"""The maintenance knowledge base: YAML files → validated entries → versioned rows, editable through the API.

A file covers one asset type::

    asset_type: pump
    entries:
      - condition: cavitation          # a fault label, an alert rule id, or a rule kind (stale, quality...)
        title: Pump cavitation
        causes:
          - {cause: Inlet valve partly closed, likelihood: 0.5, actions: [...]}
        actions: [{action: ..., duration_h: 1.0}]
        parts: [{part: Mechanical seal kit, quantity: 1}]
        skills: [pump fitter]
        duration_h: 2.0
        lead_time_h: 24                 # plan work this long before the predicted end of life
        rul_unit_hours: 1.0             # hours per unit of the RUL model (cycles, hours...)
        safety: [Isolate and lock out the motor before opening the pump]
        inspect: [Listen for crackling at the inlet]   # what to check when a diagnosis is not confident

Each (asset type, condition) has versions: an edit or a changed file adds a version, the newest one is
current, older ones stay for the record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from plant.wire import now_us
from twin.errors import Conflict, InvalidRequest, NotFound
from twin.fields import Key, Name, Reason, Text
from twin.tables import KnowledgeEntry


class _Kb(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


MAX_ITEMS = 50  # causes, actions, parts, skills... of one entry
Hours = Annotated[float, Field(ge=0, le=100_000)]


class Action(_Kb):
    """One recommended action."""

    action: Annotated[Reason, Field(min_length=1)]
    duration_h: Hours | None = None


class Cause(_Kb):
    """A probable cause with its prior likelihood and, optionally, the actions specific to it."""

    cause: Annotated[Reason, Field(min_length=1)]
    likelihood: float = Field(0.5, gt=0, le=1)
    actions: list[Action] = Field([], max_length=MAX_ITEMS)


class Part(_Kb):
    """A spare part the work needs."""

    part: Annotated[Name, Field(min_length=1)]
    quantity: float = Field(1, gt=0, le=1e6)
    number: Annotated[Name, Field(max_length=100)] = ""


class KnowledgeBody(_Kb):
    """What the base knows about one condition on one asset type."""

    title: Annotated[Name, Field(min_length=1)]
    description: Text = ""
    causes: list[Cause] = Field(min_length=1, max_length=MAX_ITEMS)
    actions: list[Action] = Field([], max_length=MAX_ITEMS)
    parts: list[Part] = Field([], max_length=MAX_ITEMS)
    skills: list[Name] = Field([], max_length=MAX_ITEMS)
    duration_h: Hours | None = None
    lead_time_h: Hours = 8.0
    rul_unit_hours: float = Field(1.0, gt=0, le=1e6)
    safety: list[Reason] = Field([], max_length=MAX_ITEMS)
    inspect: list[Reason] = Field([], max_length=MAX_ITEMS)


class KnowledgeItem(KnowledgeBody):
    """An entry as written in a file: its condition and body."""

    condition: Key


class KnowledgeFile(_Kb):
    """One knowledge file: an asset type and its entries."""

    asset_type: Key
    entries: list[KnowledgeItem]


def load_file(path: Path) -> KnowledgeFile:
    """Read and validate one knowledge file; InvalidRequest naming the file and field on error."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return KnowledgeFile.model_validate(data)
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidRequest(f"{path}: cannot read knowledge file: {exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise InvalidRequest(f"{path}: {loc}: {first['msg']}") from None


def load_dir(directory: Path) -> list[tuple[KnowledgeFile, str]]:
    """Every ``*.yaml`` file of a directory, validated, with its name."""
    return [(load_file(p), p.name) for p in sorted(directory.glob("*.yaml"))]


def current(session: Session, asset_type: str | None = None) -> list[KnowledgeEntry]:
    """The current entries, of one asset type or all."""
    stmt = select(KnowledgeEntry).where(KnowledgeEntry.current.is_(True))
    if asset_type is not None:
        stmt = stmt.where(KnowledgeEntry.asset_type == asset_type)
    return list(session.scalars(stmt.order_by(KnowledgeEntry.asset_type, KnowledgeEntry.condition)))


def get_current(session: Session, asset_type: str, condition: str) -> KnowledgeEntry:
    """The current version of one entry; NotFound if none."""
    row = session.scalars(
        select(KnowledgeEntry).where(
            KnowledgeEntry.asset_type == asset_type,
            KnowledgeEntry.condition == condition,
            KnowledgeEntry.current.is_(True),
        )
    ).first()
    if row is None:
        raise NotFound(f"no knowledge entry for {condition!r} on {asset_type!r}")
    return row


def versions(session: Session, asset_type: str, condition: str) -> list[KnowledgeEntry]:
    """Every version of one entry, oldest first."""
    rows = list(
        session.scalars(
            select(KnowledgeEntry)
            .where(KnowledgeEntry.asset_type == asset_type, KnowledgeEntry.condition == condition)
            .order_by(KnowledgeEntry.version)
        )
    )
    if not rows:
        raise NotFound(f"no knowledge entry for {condition!r} on {asset_type!r}")
    return rows


def put(
    session: Session,
    asset_type: str,
    condition: str,
    body: KnowledgeBody,
    *,
    by: str,
    source: str = "api",
    create_only: bool = False,
) -> tuple[KnowledgeEntry, bool]:
    """Store ``body`` as the new current version unless it equals the current one; returns (row, changed)."""
    data = body.model_dump(mode="json")
    cur = session.scalars(
        select(KnowledgeEntry)
        .where(
            KnowledgeEntry.asset_type == asset_type,
            KnowledgeEntry.condition == condition,
            KnowledgeEntry.current.is_(True),
        )
        .with_for_update()
    ).first()
    if cur is not None and create_only:
        raise Conflict(f"a knowledge entry for {condition!r} on {asset_type!r} exists: update it instead")
    if cur is not None and cur.body == data:
        return cur, False
    last = (
        session.scalar(
            select(func.max(KnowledgeEntry.version)).where(
                KnowledgeEntry.asset_type == asset_type, KnowledgeEntry.condition == condition
            )
        )
        or 0
    )
    if cur is not None:
        cur.current = False
    row = KnowledgeEntry(
        asset_type=asset_type,
        condition=condition,
        version=last + 1,
        current=True,
        deleted=False,
        body=data,
        source=source,
        created_at=now_us(),
        created_by=by,
    )
    session.add(row)
    session.flush()
    return row, True


def delete(session: Session, asset_type: str, condition: str, *, by: str) -> KnowledgeEntry:
    """Retire an entry: its current version stops being current; the history stays."""
    row = get_current(session, asset_type, condition)
    row.current = False
    row.deleted = True
    return row


def sync_files(session: Session, files: list[tuple[KnowledgeFile, str]], *, by: str = "loader") -> int:
    """Store the files' entries, adding a version where one changed; returns how many versions were added."""
    added = 0
    for kf, name in files:
        for item in kf.entries:
            body = KnowledgeBody.model_validate(item.model_dump(exclude={"condition"}))
            _, changed = put(session, kf.asset_type, item.condition, body, by=by, source=name)
            added += changed
    return added


def body_of(row: KnowledgeEntry) -> KnowledgeBody:
    """The validated body of a stored version."""
    return KnowledgeBody.model_validate(row.body)


def entry_dict(row: KnowledgeEntry) -> dict[str, Any]:
    """A stored version as the API shows it."""
    return {
        "asset_type": row.asset_type,
        "condition": row.condition,
        "version": row.version,
        "current": row.current,
        "deleted": row.deleted,
        "source": row.source,
        "created_at": row.created_at,
        "created_by": row.created_by,
        "body": row.body,
    }
