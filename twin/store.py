"""The twin store: applies uplink batches to the database, idempotently, latest state never moving backwards.

``TwinStore.apply(batch)`` admits each item against the twin (``twin.validation``), then in one transaction:

1. values go to ``twin_history`` keyed (property, source ts): a key seen before is a duplicate, stored once;
2. frames go to ``twin_frames``; a higher revision replaces a lower one, anything else is a duplicate;
3. diagnoses go to ``twin_diagnoses`` (key node, task, window end; the first one stored wins) and, because
   diagnoses are properties of the twin like any measured value, each field also becomes a value of the
   property ``diag.<task>.<field>`` of the node (created on first use; ``label`` is a string, the rest float);
4. each property's latest state moves to the newest value of the batch, only if that is newer than what is
   held: late data goes to history only, an equal timestamp changes nothing;
5. refused items are recorded in ``ingest_rejections`` (at most ``MAX_REJECTIONS_KEPT`` rows are kept).

The returned ``ApplyResult`` lists the latest-state changes and the diagnoses stored, for the alert engine.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import NamedTuple

import structlog
from sqlalchemy import Connection, Engine, delete, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from plant.site import Site
from plant.wire import Ack, Diagnosis, Frame, Quality, Rejection, Scalar, UplinkBatch, now_us
from twin.bulk import latest_rows, writer_for
from twin.catalog import Catalog, CatalogView, PropInfo
from twin.config import TwinSettings, get_settings
from twin.errors import StoreError, StoreRefused
from twin.tables import QUALITY_NAMES, DiagnosisRecord, FramePoint, IngestRejection, TwinProperty
from twin.uplink_checks import Screened
from twin.validation import (
    RETIRED,
    UNKNOWN_NODE,
    UNKNOWN_PROPERTY,
    Bounds,
    Row,
    admit_diagnoses,
    admit_frames,
    admit_values,
    diagnosis_fields,
)

log = structlog.get_logger(__name__)

MAX_REJECTIONS_KEPT = 10_000
MAX_REJECTIONS_PER_BATCH = 100  # every rejection is counted and acknowledged; only this many are recorded
_PRUNE_EVERY = 1_000


class Change(NamedTuple):
    """One property's latest state moved forward (a named tuple: thousands are made per second).

    Args:
        node: node id.
        prop: property name (``diag.<task>.<field>`` for diagnosis fields).
        value: the new latest value (None when a bad-quality reading carried none).
        ts: its source timestamp, µs.
        quality: its quality.
    """

    node: str
    prop: str
    value: Scalar | None
    ts: int
    quality: Quality


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one batch did to the twin.

    Args:
        accepted: items newly stored (values, frames, diagnoses).
        duplicates: items already stored before (or twice in the batch), counted not stored again.
        rejected: items refused, with their reasons.
        changes: latest-state changes made, one per property that moved (in property id order).
        diagnoses: diagnoses newly stored.
        values_accepted: values newly stored (``accepted`` without frames and diagnoses).
        nodes_changed: nodes with at least one change.
    """

    accepted: int = 0
    duplicates: int = 0
    rejected: tuple[Rejection, ...] = ()
    changes: tuple[Change, ...] = ()
    diagnoses: tuple[Diagnosis, ...] = ()
    values_accepted: int = 0
    nodes_changed: frozenset[str] = field(default_factory=frozenset)

    def ack(self, batch: UplinkBatch) -> Ack:
        """The acknowledgement of ``batch``: stored, with counts and rejections."""
        return Ack(gateway=batch.gateway, batch=batch.batch, stored=True, accepted=self.accepted,
                   duplicates=self.duplicates, rejected=list(self.rejected))


AlsoInTransaction = Callable[[Connection, int], list[Rejection]]  # (the batch's connection, now µs) → rejections


class TwinStore:
    """Writes to the twin. Thread-safe: one instance serves every ingest worker of a process.

    Args:
        engine: the database (``twin.db.make_engine``), at the current schema.
        settings: timestamp limits (``max_future_s``, ``min_valid_year``); the process's settings by default.
    """

    def __init__(self, engine: Engine, settings: TwinSettings | None = None) -> None:
        self.engine = engine
        self.settings = settings or get_settings()
        self.catalog = Catalog(range_margin=self.settings.ingest_range_margin)
        self._writer = writer_for(engine.dialect.name)
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        dbapi = engine.dialect.loaded_dbapi
        self._dbapi_error: type[Exception] = dbapi.Error
        self._dbapi_data_errors: tuple[type[Exception], ...] = (dbapi.DataError, dbapi.IntegrityError)
        self._rejections_since_prune = 0
        self._prune_lock = threading.Lock()

    def sync_site(self, site: Site) -> None:
        """Load ``site`` into the twin (``twin.site_sync``) and reload the catalog."""
        from twin.site_sync import sync_site

        sync_site(self.engine, site)
        self.catalog.invalidate()

    def apply(self, batch: UplinkBatch, now_us: int | None = None, screened: Screened | None = None,
              also: AlsoInTransaction | None = None) -> ApplyResult:
        """Store a batch; raises StoreError if the database fails (nothing of the batch is then kept).

        ``screened`` is the wire screening ``batch`` came out of: its rejections join the result, and the
        indexes of the twin's rejections are those of the original batch. ``also`` is more work of the same
        batch (its command reports) done in the same transaction: its rejections join the result too. A
        database that refuses the data itself (a value it cannot hold, a constraint) raises StoreRefused:
        sending it again would not help.
        """
        return self.apply_many([(batch, screened)], now_us, also=also)[0]

    def apply_many(
        self, batches: Sequence[tuple[UplinkBatch, Screened | None]], now_us: int | None = None,
        also: AlsoInTransaction | None = None,
    ) -> list[ApplyResult]:
        """Store several batches in one transaction, all or none, with one result each (as ``apply``).

        The result of each batch is the one ``apply`` would give applying them one after another in this order:
        an item two batches hold is new in the first only, and a property's change is reported by the batch
        holding its newest value. Raises like ``apply``, for the whole group. ``also`` is as in ``apply``, for
        a group of one batch only.
        """
        if not batches:
            return []
        if also is not None and len(batches) != 1:
            raise ValueError("work done in the same transaction belongs to a group of one batch")
        now = now_us if now_us is not None else _now()
        bounds = Bounds.at(now, self.settings.max_future_s, self.settings.min_valid_year)
        first = batches[0][0]
        try:
            admitted = [self._admit(batch, screened, bounds) for batch, screened in batches]
            with self.engine.begin() as conn:
                if also is not None:
                    found = also(conn, now)
                    screened = batches[0][1]
                    if screened is not None:
                        found = [screened.original(r) for r in found]
                    admitted[0].rejected.extend(found)
                results = self._write(conn, admitted, now)
        except (SQLAlchemyError, self._dbapi_error) as exc:
            self.catalog.invalidate()  # properties created in the failed transaction are gone
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            more = f" (and {len(batches) - 1} more)" if len(batches) > 1 else ""
            log.warning("apply_failed", gateway_id=first.gateway, batch=first.batch, more=len(batches) - 1,
                        error=reason)
            refused = isinstance(exc, (DataError, IntegrityError, *self._dbapi_data_errors))
            error = StoreRefused if refused else StoreError
            raise error(f"could not store batch {first.batch!r}{more}: {reason}") from exc
        except BaseException:
            self.catalog.invalidate()
            raise
        return results

    def _admit(self, batch: UplinkBatch, screened: Screened | None, bounds: Bounds) -> _Admitted:
        """The twin's validation of one batch, against the catalog (looked at again once on unknown names)."""
        view = self._view()
        rows, frames, diags, rejected = _admit(batch, view, bounds)
        if any(r.reason in _NAME_REASONS for r in rejected) and self.catalog.may_refresh():
            # another process may have synchronised the site: look again, once per refresh interval
            view = self._view(reload=True)
            rows, frames, diags, rejected = _admit(batch, view, bounds)
        offered = len(batch) - len(rejected)
        if screened is not None and screened.rejected:
            rejected = [*screened.rejected, *(screened.original(r) for r in rejected)]
        return _Admitted(batch, view, rows, frames, diags, rejected, offered)

    def _view(self, reload: bool = False) -> CatalogView:
        if self.catalog.loaded and not reload:
            return self.catalog.snapshot()
        with self.engine.connect() as conn:
            self.catalog.load(conn)
        return self.catalog.snapshot()

    def _write(self, conn: Connection, group: list[_Admitted], now: int) -> list[ApplyResult]:
        histories: list[list[Row]] = []
        stored: list[tuple[int, list[Diagnosis], int]] = []  # new frames, stored diagnoses, their rows
        created: list[PropInfo] = []
        for a in group:
            new_frames = self._write_frames(conn, a.frames)
            stored_diags = self._write_diagnoses(conn, a.diags)
            diag_rows, diag_props = self._diagnosis_rows(conn, a.view, stored_diags)
            histories.append(a.rows + diag_rows if diag_rows else a.rows)
            stored.append((new_frames, stored_diags, len(diag_rows)))
            created += diag_props
        newest = latest_rows([*chain.from_iterable(histories)]) if len(group) > 1 else latest_rows(histories[0])
        inserted, moved = self._writer.write(conn, histories, newest, now)
        for a in group:
            self._record_rejections(conn, a.batch, a.rejected, now)
        for info in created:
            self.catalog.add(info)
        known = [{p.id: p for p in created}, *{id(a.view): a.view.by_id for a in group}.values()]
        winner = {r[0]: r for r in newest}
        results = []
        for a, history, count, (new_frames, stored_diags, diag_count) in zip(
                group, histories, inserted, stored, strict=True):
            # diagnosis rows are always new: their diagnosis was just stored, and it is their only source
            new_values = count - diag_count
            changes = tuple(_change(_info(known, r[0]), r) for r in latest_rows(history)
                            if r[0] in moved and winner[r[0]] is r)
            accepted = new_values + new_frames + len(stored_diags)
            results.append(ApplyResult(
                accepted=accepted,
                duplicates=a.offered - accepted,
                rejected=tuple(a.rejected),
                changes=changes,
                diagnoses=tuple(stored_diags),
                values_accepted=new_values,
                nodes_changed=frozenset(c.node for c in changes),
            ))
        return results

    def _write_frames(self, conn: Connection, frames: list[Frame]) -> int:
        if not frames:
            return 0
        ins = self._insert(FramePoint)
        stmt = ins.on_conflict_do_update(
            index_elements=[FramePoint.node_id, FramePoint.ts],
            set_={"revision": ins.excluded.revision, "values": ins.excluded["values"],
                  "quality": ins.excluded.quality},
            where=FramePoint.revision < ins.excluded.revision,
        ).returning(FramePoint.ts)
        params = [{"node_id": f.node, "ts": f.ts, "revision": f.revision, "values": f.values,
                   "quality": {k: str(q) for k, q in f.quality.items()}} for f in frames]
        return len(conn.execute(stmt, params).all())

    def _write_diagnoses(self, conn: Connection, diags: list[Diagnosis]) -> list[Diagnosis]:
        if not diags:
            return []
        stmt = self._insert(DiagnosisRecord).on_conflict_do_nothing().returning(
            DiagnosisRecord.node_id, DiagnosisRecord.task, DiagnosisRecord.ts
        )
        params = [{"node_id": d.node, "task": d.task, "ts": d.ts, "model": d.model, "version": d.version,
                   "source": str(d.source), "confidence": d.confidence,
                   "payload": d.model_dump(mode="json", include=_PAYLOAD_FIELDS, exclude_none=True)}
                  for d in diags]
        stored = {tuple(r) for r in conn.execute(stmt, params).all()}
        return [d for d in diags if (d.node, d.task, d.ts) in stored]

    def _diagnosis_rows(
        self, conn: Connection, view: CatalogView, diags: list[Diagnosis]
    ) -> tuple[list[Row], list[PropInfo]]:
        rows: list[Row] = []
        created: dict[tuple[str, str], PropInfo] = {}
        for d in diags:
            for name, value in diagnosis_fields(d).items():
                prop = f"diag.{d.task}.{name}"
                info = view.props.get((d.node, prop)) or created.get((d.node, prop))
                if info is None:
                    info = self._diagnosis_property(conn, d, prop, value)
                    created[(d.node, prop)] = info
                num, text = (None, value) if isinstance(value, str) else (value, None)
                rows.append((info.id, d.ts, num, text, 0, None, None, ""))
        return rows, list(created.values())

    def _diagnosis_property(self, conn: Connection, d: Diagnosis, prop: str, value: float | str) -> PropInfo:
        dtype = "string" if isinstance(value, str) else "float"
        unit = d.unit if prop.startswith("diag.rul.rul") else ""
        conn.execute(
            self._insert(TwinProperty).on_conflict_do_nothing(),
            {"node_id": d.node, "name": prop, "dtype": dtype, "unit": unit, "flags": "",
             "description": f"{d.task} diagnosis: {prop.rsplit('.', 1)[1]}"},
        )
        row = conn.execute(
            select(TwinProperty.id, TwinProperty.dtype)
            .where(TwinProperty.node_id == d.node, TwinProperty.name == prop)
        ).one()
        return PropInfo(row.id, d.node, prop, row.dtype)

    def _record_rejections(
        self, conn: Connection, batch: UplinkBatch, rejected: list[Rejection], now: int
    ) -> None:
        if not rejected:
            return
        conn.execute(insert(IngestRejection), [
            {"at": now, "gateway": batch.gateway[:64], "batch": batch.batch[:64], "kind": r.kind,
             "reason": r.reason, "detail": f"item {r.index}: {r.detail}"}
            for r in rejected[:MAX_REJECTIONS_PER_BATCH]
        ])
        with self._prune_lock:
            self._rejections_since_prune += len(rejected)
            due = self._rejections_since_prune >= _PRUNE_EVERY
            if due:
                self._rejections_since_prune = 0
        if due:
            prune_rejections(conn)


_PAYLOAD_FIELDS = {
    "score", "threshold", "label", "probability", "rul", "rul_low", "rul_high", "unit", "learning", "ready_at"
}


def prune_rejections(conn: Connection, keep: int = MAX_REJECTIONS_KEPT) -> int:
    """Delete all but the newest ``keep`` recorded rejections; returns how many went."""
    newest = conn.execute(select(func.max(IngestRejection.id))).scalar()
    if newest is None:
        return 0
    return conn.execute(delete(IngestRejection).where(IngestRejection.id <= newest - keep)).rowcount


_NAME_REASONS = {UNKNOWN_NODE, UNKNOWN_PROPERTY, RETIRED}


class _Admitted(NamedTuple):
    """One batch after the twin's validation, ready to write."""

    batch: UplinkBatch
    view: CatalogView
    rows: list[Row]
    frames: list[Frame]
    diags: list[Diagnosis]
    rejected: list[Rejection]
    offered: int


def _admit(
    batch: UplinkBatch, view: CatalogView, bounds: Bounds
) -> tuple[list[Row], list[Frame], list[Diagnosis], list[Rejection]]:
    rows, rejected = admit_values(batch.values, view, bounds)
    frames, frame_rej = admit_frames(batch.frames, view, bounds)
    diags, diag_rej = admit_diagnoses(batch.diagnoses, view, bounds)
    return rows, frames, diags, rejected + frame_rej + diag_rej


def _info(known: list[dict[int, PropInfo]], pid: int) -> PropInfo:
    """A property by id from the first of ``known`` that holds it."""
    for by_id in known:
        info = by_id.get(pid)
        if info is not None:
            return info
    raise KeyError(pid)


def _change(info: PropInfo, r: Row) -> Change:
    value: Scalar | None
    if r[3] is not None:
        value = r[3]
    elif r[2] is None:
        value = None
    elif info.dtype == "bool":
        value = r[2] != 0.0
    elif info.dtype == "int":
        value = int(r[2])
    else:
        value = r[2]
    return Change(info.node, info.name, value, r[1], _QUALITIES[r[4]])


_QUALITIES = {code: Quality(name) for code, name in QUALITY_NAMES.items()}


def _now() -> int:
    return now_us()
