"""What the alert leader reads: every stored change of the properties and diagnoses the rules watch, whichever
process stored it, from a cursor per property (its newest source time judged so far).

    catch_up(session)         the latest state of every watched property and the newest diagnosis of every
                              watched task: where judging starts when a process becomes the leader
    since(session, wanted)    every value stored after its property's cursor (twin_history) and every diagnosis
                              newer than its task's cursor (twin_diagnoses), oldest first; moves the cursors

The live bus says which properties moved (``wanted``): a pass reads only those, by primary key, so its cost
follows what changed, not the size of the plant. Everything in history is read, not only the latest state, so
a value overtaken before the leader reads (a one-batch excursion, a fault diagnosis followed by a healthy one)
is still judged. A value stored late, older than its property's cursor, is history only, as for the latest
state (twin/store.py). With several ingest workers that includes a batch committed after a newer batch of the
same property (shared subscriptions give no order across workers; likeliest in an outbox drain): its values
are in history but not judged. Catch-up reads the latest state only: what happened while no process led (the
seconds of a takeover) is judged on where it ended.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import structlog
from pydantic import ValidationError
from sqlalchemy import and_, func, or_, select, text
from sqlalchemy.orm import Session

from plant.wire import Diagnosis, Scalar
from twin.alerts.engine import Watched
from twin.live import LiveEvent
from twin.queries import decode_value, diagnosis_of
from twin.tables import DiagnosisRecord, TwinProperty

log = structlog.get_logger(__name__)

CHUNK = 200  # properties (or node tasks) per query
CURSORS_PER_QUERY = 5_000  # PostgreSQL: cursors travel as arrays
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
        stored_at: the oldest storing time (µs) among the latest states of the properties that moved.
    """

    changes: list[StoredValue] = field(default_factory=list)
    diagnoses: list[Diagnosis] = field(default_factory=list)
    stored_at: int | None = None

    def steps(self) -> Iterator[tuple[list[StoredValue], list[Diagnosis]]]:
        """The changes and diagnoses by source time, oldest first: the engine judges each moment in turn, so a
        value overtaken by a newer one still counts (one ``process`` call judges only where its input ends)."""
        moments: dict[int, tuple[list[StoredValue], list[Diagnosis]]] = {}
        for c in self.changes:
            moments.setdefault(c.ts, ([], []))[0].append(c)
        for d in self.diagnoses:
            moments.setdefault(d.ts, ([], []))[1].append(d)
        for ts in sorted(moments):
            yield moments[ts]


@dataclass(frozen=True)
class Wanted:
    """Which cursors a pass moves.

    Args:
        props: (node, property) pairs whose new values to read.
        tasks: (node, task) pairs whose new diagnoses to read.
    """

    props: frozenset[Key]
    tasks: frozenset[Key]

    def __bool__(self) -> bool:
        return bool(self.props or self.tasks)


class ChangeFeed:
    """Cursors over the watched properties and diagnosis tasks of a site.

    Args:
        watched: what the rules read, by asset (``AlertEngine.watched``).
    """

    def __init__(self, watched: dict[str, Watched]) -> None:
        self.watched = watched
        self.everything = Wanted(
            frozenset((n, p) for n, w in watched.items() for p in w.props),
            frozenset((n, t) for n, w in watched.items() for t in w.tasks),
        )
        self._ids: dict[Key, int] = {}  # property ids, learned at catch-up
        self._seen: dict[Key, int] = {}  # cursors: newest source time judged

    def wanted(self, events: Iterable[LiveEvent]) -> Wanted:
        """The cursors live events concern; everything after ``RESYNC`` (events may have been lost)."""
        props: set[Key] = set()
        tasks: set[Key] = set()
        for e in events:
            if not e.node:
                return self.everything
            w = self.watched.get(e.node)
            if w is None:
                continue
            moved = w.props if not e.props else w.props.intersection(e.props)  # no names: the node's all
            props.update((e.node, p) for p in moved)
            if not e.props or any(p.startswith("diag.") for p in e.props):  # a stored diagnosis moves diag.*
                tasks.update((e.node, t) for t in w.tasks)
        return Wanted(frozenset(props), frozenset(tasks))

    def catch_up(self, session: Session) -> Read:
        """Forget the cursors; the latest state and newest diagnoses of everything watched, cursors set there."""
        self._ids.clear()
        self._seen.clear()
        out = Read()
        nodes = sorted(self.watched)
        for chunk in _chunks(nodes, CHUNK):
            p = TwinProperty
            names = sorted({n for node in chunk for n in self.watched[node].props})
            latest = select(p.id, p.node_id, p.name, p.dtype, p.value_num, p.value_text, p.ts, p.quality, p.stored_ts)
            for row in session.execute(latest.where(p.node_id.in_(chunk), p.name.in_(names))):
                key = (row.node_id, row.name)
                if row.name not in self.watched[row.node_id].props:
                    continue
                self._ids[key] = row.id
                if row.ts is not None and self._advance(key, row.ts):
                    value = decode_value(row.dtype, row.value_num, row.value_text)
                    out.changes.append(StoredValue(row.node_id, row.name, value, row.ts, row.quality or 0))
                    out.stored_at = _min(out.stored_at, row.stored_ts)
            newest = self._newest_diagnoses(session, chunk)
            out.diagnoses += [d for d in newest if self._advance((d.node, d.task), d.ts)]
        return out

    def since(self, session: Session, wanted: Wanted) -> Read:
        """Every value and diagnosis stored after the cursors of ``wanted``, oldest first."""
        out = Read()
        props = sorted(k for k in wanted.props if k in self._ids)
        postgres = session.get_bind().dialect.name == "postgresql"
        seen, oldest = self._seen, out.stored_at
        for chunk in _chunks(props, CURSORS_PER_QUERY if postgres else CHUNK):
            cursors = [(self._ids[k], seen.get(k, -1)) for k in chunk]
            for node, name, dtype, stored, ts, num, txt, quality in _history_since(session, cursors, postgres):
                out.changes.append(StoredValue(node, name, decode_value(dtype, num, txt), ts, quality or 0))
                if ts > seen.get((node, name), -1):  # rows come by property, in no promised order
                    seen[(node, name)] = ts
                if stored is not None and (oldest is None or stored < oldest):
                    oldest = stored
        out.stored_at = oldest
        for chunk in _chunks(sorted(wanted.tasks), CURSORS_PER_QUERY if postgres else CHUNK):
            task_cursors = [(n, t, self._seen.get((n, t), -1)) for n, t in chunk]
            for diagnosis in _diagnoses(_diagnoses_since(session, task_cursors, postgres)):
                out.diagnoses.append(diagnosis)
                self._advance((diagnosis.node, diagnosis.task), diagnosis.ts)
        return out

    def _advance(self, key: Key, ts: int) -> bool:
        if ts <= self._seen.get(key, -1):
            return False
        self._seen[key] = ts
        return True

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


# one index range scan per cursor: (property, ts > cursor), the cursors sent as two arrays
_HISTORY_PG = (
    "SELECT p.node_id, p.name, p.dtype, p.stored_ts, h.ts, h.value_num, h.value_text, h.quality "
    "FROM unnest(%b::integer[], %b::bigint[]) AS c(pid, since) "
    "JOIN twin_history h ON h.property_id = c.pid AND h.ts > c.since JOIN twin_properties p ON p.id = c.pid"
)
_HISTORY_SQLITE = (
    "SELECT p.node_id, p.name, p.dtype, p.stored_ts, h.ts, h.value_num, h.value_text, h.quality "
    "FROM twin_history h JOIN twin_properties p ON p.id = h.property_id WHERE {after}"
)
_DIAGNOSES_PG = text(
    "SELECT d.* FROM unnest(CAST(:nodes AS text[]), CAST(:tasks AS text[]), CAST(:since AS bigint[])) "
    "AS c(node, task, since) JOIN twin_diagnoses d ON d.node_id = c.node AND d.task = c.task AND d.ts > c.since"
)


def _history_since(session: Session, cursors: list[tuple[int, int]], postgres: bool) -> list[tuple[Any, ...]]:
    """History rows after each (property id, source time) cursor, with their property's names: plain tuples from
    the driver, as a busy leader reads thousands a second."""
    driver = session.connection().connection.dbapi_connection
    assert driver is not None
    cur = driver.cursor()
    try:
        if postgres:
            cur.execute(_HISTORY_PG, ([c[0] for c in cursors], [c[1] for c in cursors]))
        else:
            after = " OR ".join(["(h.property_id = ? AND h.ts > ?)"] * len(cursors))
            cur.execute(_HISTORY_SQLITE.format(after=after), [x for c in cursors for x in c])
        return list(cur.fetchall())
    finally:
        cur.close()


def _diagnoses_since(session: Session, cursors: list[tuple[str, str, int]], postgres: bool) -> Iterable[Any]:
    """Diagnoses after each (node, task, window end) cursor."""
    d = DiagnosisRecord
    if postgres:
        pick = select(d).from_statement(_DIAGNOSES_PG)
        return session.scalars(
            pick, {"nodes": [c[0] for c in cursors], "tasks": [c[1] for c in cursors], "since": [c[2] for c in cursors]}
        )
    after = or_(*(and_(d.node_id == n, d.task == t, d.ts > ts) for n, t, ts in cursors))
    return session.scalars(select(d).where(after))


def _diagnoses(rows: Iterable[DiagnosisRecord]) -> Iterator[Diagnosis]:
    for r in rows:
        try:
            yield diagnosis_of(r)
        except (ValidationError, TypeError) as exc:
            log.warning(
                "stored diagnosis unreadable, skipped",
                node=r.node_id,
                task=r.task,
                ts=r.ts,
                error=str(exc).splitlines()[0],
            )


def _min(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
