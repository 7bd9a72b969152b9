"""What the alert leader reads: every value and diagnosis stored for the properties and tasks the rules watch,
whichever process stored it, each exactly once.

    catch_up(session)   on becoming the leader: the latest state of every watched property and the newest
                        diagnosis of every watched task, except those still waiting in the feed
    since(session)      the values and diagnoses of the oldest waiting ``alert_feed`` rows; deletes those rows

Every store transaction that adds history rows also adds one ``alert_feed`` row with their keys (twin/bulk.py);
the leader judges what a row names and deletes it in the transaction that writes the alerts it causes
(twin/alerts/evaluator.py). So a batch is judged once it is visible, whatever order the ingest workers commit
in (a cursor over ids or times would skip a batch that commits after a newer one), and once only: a leader
killed before its commit leaves the rows for its successor; a batch stored again adds no rows (its values are
duplicates). Catch-up reads the latest state, which the predecessor already judged (the open alerts it loaded
make that a no-op), to give the rules their starting point; what waits in the feed is left to it.

A value older than the newest judged value of its property (a batch that committed late, an outbox drained
after a reconnection) is judged as late (``AlertEngine.process(late=True)``): an excursion raises its alert, a
normal value does not return an alert the newer value holds; then the newest value is judged again, so the rules
end where the property is (a late excursion's alert returns to normal when the property has moved on).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import structlog
from pydantic import ValidationError
from sqlalchemy import and_, func, or_, select, text
from sqlalchemy.orm import Session

from plant.wire import Diagnosis, Scalar
from twin.alerts.engine import Watched
from twin.queries import decode_value, diagnosis_of
from twin.tables import DiagnosisRecord, TwinProperty

log = structlog.get_logger(__name__)

CHUNK = 200  # properties, keys or node tasks per query (SQLite)
CURSORS_PER_QUERY = 5_000  # PostgreSQL: keys travel as arrays
FEED_ROWS = 500  # feed rows (stored batches) per pass
DIAGNOSIS_MARK = "confidence"  # the field every stored diagnosis has: its property's feed key marks the diagnosis
_MARK_SUFFIX = "." + DIAGNOSIS_MARK
Key = tuple[str, str]  # (node, property) or (node, diagnosis task)


class StoredValue(NamedTuple):
    """A stored value of a watched property, as the engine takes it (``rules.ChangeLike``; a named tuple: a busy
    leader reads thousands a second).

    Args:
        node: node id.
        prop: property name.
        value: the value in its property's data type.
        ts: source time, µs.
        quality: the stored quality code (0 good, 1 uncertain, 2 bad).
    """

    node: str
    prop: str
    value: Scalar | None
    ts: int
    quality: int


@dataclass
class Read:
    """What one read found; ``steps`` gives it in source-time order.

    Args:
        changes: property values.
        diagnoses: diagnoses.
        stored_at: the oldest storing time (µs) of what was read.
        late: values older than their property's newest judged before (a batch that committed late).
        restore: the newest judged value of each property that got only late values, judged again after them.
        more: the feed holds more than one read took.
        rows: feed rows (stored batches) read.
    """

    changes: list[StoredValue] = field(default_factory=list)
    diagnoses: list[Diagnosis] = field(default_factory=list)
    stored_at: int | None = None
    late: list[StoredValue] = field(default_factory=list)
    rows: int = 0
    restore: list[StoredValue] = field(default_factory=list)
    more: bool = False

    def steps(self) -> Iterator[tuple[list[StoredValue], list[Diagnosis], bool]]:
        """(changes, diagnoses, late) by source time, oldest first: the engine judges each moment in turn, so a
        value overtaken by a newer one still counts (one ``process`` call judges only where its input ends).
        Late values come first, then the newest values they were older than, then the new ones."""
        for changes, _ in _moments(self.late, []):
            yield changes, [], True
        if self.restore:
            yield self.restore, [], False
        for changes, diagnoses in _moments(self.changes, self.diagnoses):
            yield changes, diagnoses, False


def _moments(
    changes: list[StoredValue], diagnoses: list[Diagnosis]
) -> Iterator[tuple[list[StoredValue], list[Diagnosis]]]:
    moments: dict[int, tuple[list[StoredValue], list[Diagnosis]]] = {}
    for c in changes:
        moments.setdefault(c.ts, ([], []))[0].append(c)
    for d in diagnoses:
        moments.setdefault(d.ts, ([], []))[1].append(d)
    for ts in sorted(moments):
        yield moments[ts]


class AlertFeed:
    """The alert feed for the watched properties and diagnosis tasks of a site.

    Args:
        watched: what the rules read, by asset (``AlertEngine.watched``).
    """

    def __init__(self, watched: dict[str, Watched]) -> None:
        self.watched = watched
        self._names: dict[int, Key | None] = {}  # property id → (node, property), None when nothing reads it
        self._last: dict[Key, StoredValue] = {}  # newest value judged, by property

    def catch_up(self, session: Session) -> Read:
        """Forget what was learned; the latest state and newest diagnoses of everything watched that no waiting
        feed row names."""
        self._names.clear()
        self._last.clear()
        held = _waiting_latest(session)
        self._learn(session, (pid for pid, _ in held))
        waiting = {(k, ts) for pid, ts in held if (k := self._names[pid]) is not None}
        out = Read()
        nodes = sorted(self.watched)
        for chunk in _chunks(nodes, CHUNK):
            p = TwinProperty
            names = sorted({n for node in chunk for n in self.watched[node].props})
            latest = select(p.node_id, p.name, p.dtype, p.value_num, p.value_text, p.ts, p.quality, p.stored_ts)
            for row in session.execute(latest.where(p.node_id.in_(chunk), p.name.in_(names))):
                key = (row.node_id, row.name)
                if row.name not in self.watched[row.node_id].props or row.ts is None:
                    continue
                value = decode_value(row.dtype, row.value_num, row.value_text)
                self._last[key] = StoredValue(row.node_id, row.name, value, row.ts, row.quality or 0)
                if (key, row.ts) not in waiting:
                    out.changes.append(self._last[key])
                    out.stored_at = _min(out.stored_at, row.stored_ts)
            out.diagnoses += [
                d for d in self._newest_diagnoses(session, chunk)
                if ((d.node, f"diag.{d.task}.{DIAGNOSIS_MARK}"), d.ts) not in waiting
            ]
        return out

    def since(self, session: Session, limit: int = FEED_ROWS) -> Read:
        """The values and diagnoses named by the oldest ``limit`` feed rows, which are deleted (in the caller's
        transaction: commit it with the alerts they cause)."""
        postgres = session.get_bind().dialect.name == "postgresql"
        out = Read()
        rows = _feed_rows(session, limit, postgres)
        out.rows, out.more = len(rows), len(rows) == limit
        values: list[tuple[int, int]] = []
        diagnoses: list[tuple[str, str, int]] = []
        for _, pids, stamps, stored_at in rows:
            out.stored_at = _min(out.stored_at, stored_at)
            self._learn(session, pids)
            for pid, ts in zip(pids, stamps, strict=True):
                key = self._names[pid]
                if key is None:
                    continue
                if key[1] in self.watched[key[0]].props:
                    values.append((pid, ts))
                if key[1].startswith("diag.") and key[1].endswith(_MARK_SUFFIX):
                    diagnoses.append((key[0], key[1][5 : -len(_MARK_SUFFIX)], ts))
        for chunk in _chunks(values, CURSORS_PER_QUERY if postgres else CHUNK):
            for node, name, dtype, ts, num, txt, quality in _history_at(session, chunk, postgres):
                out.changes.append(StoredValue(node, name, decode_value(dtype, num, txt), ts, quality or 0))
        out.changes, out.late, out.restore = self._judged(out.changes)
        for chunk in _chunks(diagnoses, CURSORS_PER_QUERY if postgres else CHUNK):
            out.diagnoses += _diagnoses(_diagnoses_at(session, chunk, postgres))
        _delete_rows(session, [r[0] for r in rows], postgres)
        return out

    def _judged(
        self, changes: list[StoredValue]
    ) -> tuple[list[StoredValue], list[StoredValue], list[StoredValue]]:
        """Split ``changes`` into new values and late ones (older than their property's newest judged before: a
        batch that committed late); note the newest of each property. Also returns, for each property whose
        values here are all late, its newest value (judged again after them)."""
        before: dict[Key, StoredValue | None] = {}
        newest: dict[Key, int] = {}
        fresh: list[StoredValue] = []
        late: list[StoredValue] = []
        for c in changes:
            key = (c.node, c.prop)
            if key not in before:
                before[key] = self._last.get(key)
            prev = before[key]
            (late if prev is not None and c.ts < prev.ts else fresh).append(c)
            newest[key] = max(newest.get(key, c.ts), c.ts)
            if (last := self._last.get(key)) is None or c.ts > last.ts:
                self._last[key] = c
        restore = [prev for key, prev in before.items() if prev is not None and prev.ts > newest[key]]
        return fresh, late, restore

    def _learn(self, session: Session, pids: Iterable[int]) -> None:
        unknown = sorted({p for p in pids if p not in self._names})
        for chunk in _chunks(unknown, CURSORS_PER_QUERY):
            p = TwinProperty
            for pid, node, name in session.execute(select(p.id, p.node_id, p.name).where(p.id.in_(chunk))):
                self._names[pid] = (node, name) if self._reads(node, name) else None
            for pid in chunk:
                self._names.setdefault(pid, None)  # gone since

    def _reads(self, node: str, name: str) -> bool:
        w = self.watched.get(node)
        if w is None:
            return False
        if name in w.props:
            return True
        return name.startswith("diag.") and name.endswith(_MARK_SUFFIX) and name[5 : -len(_MARK_SUFFIX)] in w.tasks

    def _newest_diagnoses(self, session: Session, nodes: list[str]) -> list[Diagnosis]:
        tasks = sorted({t for n in nodes for t in self.watched[n].tasks})
        if not tasks:
            return []
        d = DiagnosisRecord
        newest = (
            select(d.node_id, d.task, func.max(d.ts).label("ts"))
            .where(d.node_id.in_(nodes), d.task.in_(tasks))
            .group_by(d.node_id, d.task)
            .subquery()
        )
        rows = session.scalars(
            select(d).join(newest, and_(d.node_id == newest.c.node_id, d.task == newest.c.task, d.ts == newest.c.ts))
        )
        return [x for x in _diagnoses(rows) if x.task in self.watched[x.node].tasks]


_HISTORY_PG = (
    "SELECT p.node_id, p.name, p.dtype, h.ts, h.value_num, h.value_text, h.quality "
    "FROM unnest(%b::integer[], %b::bigint[]) AS c(pid, ts) "
    "JOIN twin_history h ON h.property_id = c.pid AND h.ts = c.ts JOIN twin_properties p ON p.id = c.pid"
)
_HISTORY_SQLITE = (
    "SELECT p.node_id, p.name, p.dtype, h.ts, h.value_num, h.value_text, h.quality "
    "FROM twin_history h JOIN twin_properties p ON p.id = h.property_id WHERE {keys}"
)
_DIAGNOSES_PG = text(
    "SELECT d.* FROM unnest(CAST(:nodes AS text[]), CAST(:tasks AS text[]), CAST(:ts AS bigint[])) "
    "AS c(node, task, ts) JOIN twin_diagnoses d ON d.node_id = c.node AND d.task = c.task AND d.ts = c.ts"
)


_FEED_PG = "SELECT id, property_ids, ts, stored_at FROM alert_feed ORDER BY id LIMIT %s"
_FEED_SQLITE = "SELECT id, property_ids, ts, stored_at FROM alert_feed ORDER BY id LIMIT ?"


def _feed_rows(session: Session, limit: int, postgres: bool) -> list[tuple[int, list[int], list[int], int]]:
    """The oldest ``limit`` feed rows: (id, property ids, source times, stored at)."""
    rows = _raw(session, _FEED_PG if postgres else _FEED_SQLITE, [limit])
    if postgres:
        return [(r[0], r[1], r[2], r[3]) for r in rows]
    return [(r[0], json.loads(r[1]), json.loads(r[2]), r[3]) for r in rows]


_WAITING_PG = (
    "SELECT u.pid, u.ts FROM alert_feed f CROSS JOIN LATERAL unnest(f.property_ids, f.ts) AS u(pid, ts) "
    "JOIN twin_properties p ON p.id = u.pid AND p.ts = u.ts"
)
_WAITING_SQLITE = (
    "SELECT a.value, b.value FROM alert_feed f, json_each(f.property_ids) a, json_each(f.ts) b, twin_properties p "
    "WHERE a.key = b.key AND p.id = a.value AND p.ts = b.value"
)


def _waiting_latest(session: Session) -> list[tuple[int, int]]:
    """The (property id, source time) of every latest state the feed still holds (the database scans the feed:
    a backlog of hours is not read into memory)."""
    postgres = session.get_bind().dialect.name == "postgresql"
    return [(r[0], r[1]) for r in _raw(session, _WAITING_PG if postgres else _WAITING_SQLITE)]


def _delete_rows(session: Session, ids: list[int], postgres: bool) -> None:
    if not ids:
        return
    if postgres:
        _raw(session, "DELETE FROM alert_feed WHERE id = ANY(%b::bigint[])", [ids])
    else:
        _raw(session, "DELETE FROM alert_feed WHERE id IN (SELECT value FROM json_each(?))", [json.dumps(ids)])


def _history_at(session: Session, keys: list[tuple[int, int]], postgres: bool) -> list[tuple[Any, ...]]:
    """The history rows at each (property id, source time) key, with their property's names: plain tuples from
    the driver, as a busy leader reads thousands a second."""
    if postgres:
        return _raw(session, _HISTORY_PG, [[k[0] for k in keys], [k[1] for k in keys]])
    where = " OR ".join(["(h.property_id = ? AND h.ts = ?)"] * len(keys))
    return _raw(session, _HISTORY_SQLITE.format(keys=where), [x for k in keys for x in k])


def _raw(session: Session, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    driver = session.connection().connection.dbapi_connection
    assert driver is not None
    cur = driver.cursor()
    try:
        cur.execute(sql, params or [])
        return list(cur.fetchall()) if cur.description is not None else []
    finally:
        cur.close()


def _diagnoses_at(session: Session, keys: list[tuple[str, str, int]], postgres: bool) -> Iterable[Any]:
    """The diagnoses at each (node, task, window end) key."""
    d = DiagnosisRecord
    if postgres:
        pick = select(d).from_statement(_DIAGNOSES_PG)
        return session.scalars(
            pick, {"nodes": [k[0] for k in keys], "tasks": [k[1] for k in keys], "ts": [k[2] for k in keys]}
        )
    return session.scalars(select(d).where(or_(*(and_(d.node_id == n, d.task == t, d.ts == ts) for n, t, ts in keys))))


def _diagnoses(rows: Iterable[DiagnosisRecord]) -> Iterator[Diagnosis]:
    for r in rows:
        try:
            yield diagnosis_of(r)
        except (ValidationError, TypeError) as exc:
            log.warning(
                "stored_diagnosis_skipped",
                node_id=r.node_id,
                task=r.task,
                ts=r.ts,
                error=str(exc).splitlines()[0],
            )


def _min(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
