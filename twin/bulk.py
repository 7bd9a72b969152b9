"""The store's hot path per database: history rows in bulk, latest state per property, never backwards.

Each writer takes the rows ``twin.validation`` admitted and runs inside the caller's transaction on the raw
DBAPI connection (SQLAlchemy's statement layer costs more than the writes here). The latest state moves only
forward: the UPDATE's ``WHERE ts IS NULL OR ts < new`` decides in the database, so it holds with several
ingest workers or processes at once, and ``RETURNING`` says exactly which properties moved.

Both add the history keys that were new (not duplicates) as one row of ``alert_feed`` per batch, in the same
transaction: what the alert evaluator judges (twin/alerts/feed.py). A batch stored again adds nothing to judge.

A writer takes the history rows of one or several batches (an ingest worker stores the batches it has in hand
in one transaction) and the newest row of each property over all of them: the latest state is updated once
per transaction, in property id order, so concurrent transactions lock the properties in the same order, and
a property is not rewritten once per batch.

SQLite: ``executemany`` of ``INSERT ... ON CONFLICT DO NOTHING`` (the new rows, when some were duplicates, are
the last rowids: the transaction holds the write lock), then one ``UPDATE ... FROM (VALUES ...) RETURNING``
(SQLite 3.35+).

PostgreSQL: one statement. The rows travel as binary arrays (``unnest`` of ``%b`` parameters) into an
``INSERT ... ON CONFLICT DO NOTHING``, the feed row and an ``UPDATE ... FROM`` joined in one WITH query. ``COPY`` into a
temporary staging table followed by ``INSERT ... SELECT`` and the UPDATE is slower for batches of about a
thousand rows: the extra round trips cost more than COPY saves (docs/scaling.md has the figures).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from itertools import chain
from typing import Any, Protocol

from sqlalchemy import Connection

from twin.pg_arrays import Kind, pack, register
from twin.validation import Row


class BulkWriter(Protocol):
    """Writes admitted rows for one dialect."""

    def write(
        self, conn: Connection, histories: Sequence[list[Row]], latest: list[Row], stored_ts: int
    ) -> tuple[list[int], set[int]]:
        """Insert each batch's ``histories`` (known keys skipped) and move each property to its ``latest`` row
        if newer.

        Returns how many history rows of each batch were new and the ids of the properties whose latest state
        moved.
        """
        ...


def latest_rows(rows: list[Row]) -> list[Row]:
    """The newest row of each property, by property id; on equal timestamps the first wins, like history."""
    best: dict[int, Row] = {}
    for r in rows:
        cur = best.get(r[0])
        if cur is None or r[1] > cur[1]:
            best[r[0]] = r
    # in id order (PostgreSQL locks the property rows in this order first: concurrent writers cannot deadlock)
    return [best[k] for k in sorted(best)]


def _driver(conn: Connection) -> Any:
    return conn.connection.driver_connection


_SQLITE_INSERT = (
    "INSERT INTO twin_history (property_id, ts, value_num, value_text, quality) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT DO NOTHING"
)
# the rows one statement inserted, under the write lock: the last rowids (each new row takes the largest + 1)
_SQLITE_ADDED = "SELECT property_id, ts FROM twin_history WHERE rowid > (SELECT max(rowid) FROM twin_history) - ?"
_SQLITE_FEED = "INSERT INTO alert_feed (property_ids, ts, stored_at) VALUES (?, ?, ?)"
_SQLITE_CHUNK = 1000  # rows per UPDATE: 8,000 parameters, well under SQLite's 32,766
# VALUES columns are named column1..column8, in Row order
_SQLITE_UPDATE = (
    "UPDATE twin_properties SET value_num = s.column3, value_text = s.column4, ts = s.column2, "
    "quality = s.column5, server_ts = s.column6, recv_ts = s.column7, flags = s.column8, stored_ts = ? "
    "FROM (VALUES {values}) AS s WHERE twin_properties.id = s.column1 "
    "AND (twin_properties.ts IS NULL OR twin_properties.ts < s.column2) RETURNING twin_properties.id"
)


class SqliteWriter:
    """SQLite: executemany on the sqlite3 connection, then one UPDATE per thousand properties."""

    def write(
        self, conn: Connection, histories: Sequence[list[Row]], latest: list[Row], stored_ts: int
    ) -> tuple[list[int], set[int]]:
        """Insert history rows and move latest state forward; returns (new rows per batch, ids moved)."""
        cur = _driver(conn).cursor()
        try:
            counts = [self._insert(cur, history, stored_ts) for history in histories]
            moved: set[int] = set()
            for start in range(0, len(latest), _SQLITE_CHUNK):
                chunk = latest[start : start + _SQLITE_CHUNK]
                values = ",".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk))
                cur.execute(_SQLITE_UPDATE.format(values=values), [stored_ts, *chain.from_iterable(chunk)])
                moved.update(r[0] for r in cur.fetchall())
            return counts, moved
        finally:
            cur.close()

    @staticmethod
    def _insert(cur: Any, history: list[Row], stored_ts: int) -> int:
        """One batch's history rows and its feed row; returns how many rows were new."""
        if not history:
            return 0
        cur.executemany(_SQLITE_INSERT, [r[:5] for r in history])
        inserted = int(cur.rowcount)
        if inserted:
            if inserted == len(history):  # no duplicates: every row is new
                pids, stamps = [r[0] for r in history], [r[1] for r in history]
            else:
                cur.execute(_SQLITE_ADDED, (inserted,))
                pids, stamps = map(list, zip(*cur.fetchall(), strict=True))
            cur.execute(_SQLITE_FEED, (json.dumps(pids), json.dumps(stamps), stored_ts))
        return inserted


_PG_NEW_ROWS = """h AS (
    INSERT INTO twin_history (property_id, ts, value_num, value_text, quality)
    SELECT * FROM unnest(%b::integer[], %b::bigint[], %b::float8[], %b::text[], %b::smallint[])
    ON CONFLICT DO NOTHING
    RETURNING property_id, ts
), f AS (
    INSERT INTO alert_feed (property_ids, ts, stored_at)
    SELECT array_agg(property_id), array_agg(ts), %b FROM h HAVING count(*) > 0
)"""
_PG_HISTORY = f"WITH {_PG_NEW_ROWS}\nSELECT count(*) FROM h"
_PG_LATEST = """l AS (
    UPDATE twin_properties AS p
    SET value_num = s.num, value_text = s.txt, ts = s.ts, quality = s.q,
        server_ts = s.sts, recv_ts = s.rts, flags = s.flags, stored_ts = %b
    FROM unnest(%b::integer[], %b::bigint[], %b::float8[], %b::text[], %b::smallint[],
                %b::bigint[], %b::bigint[], %b::text[]) AS s(id, ts, num, txt, q, sts, rts, flags)
    WHERE p.id = s.id AND (p.ts IS NULL OR p.ts < s.ts)
    RETURNING p.id
)"""
# the properties to update, locked in id order first: whatever plan the UPDATE gets (a hash join may lock them
# in the table's physical order), concurrent transactions then lock them in the same order and cannot deadlock
_PG_LOCK = "SELECT 1 FROM twin_properties WHERE id = ANY(%b::integer[]) ORDER BY id FOR NO KEY UPDATE"
# the last batch of a transaction: its history, its feed row and the latest state of every batch, in one statement
_PG_WRITE = f"WITH {_PG_NEW_ROWS}, {_PG_LATEST}\nSELECT (SELECT count(*) FROM h), ARRAY(SELECT id FROM l)"  # noqa: S608


class PostgresWriter:
    """PostgreSQL: a statement per batch, the last one with the latest-state update; rows passed as arrays."""

    def write(
        self, conn: Connection, histories: Sequence[list[Row]], latest: list[Row], stored_ts: int
    ) -> tuple[list[int], set[int]]:
        """Insert history rows and move latest state forward; returns (new rows per batch, ids moved)."""
        if not latest and not any(histories):
            return [0] * len(histories), set()
        counts: list[int] = []
        with _driver(conn).cursor() as cur:
            register(cur.adapters)
            for history in histories[:-1]:
                cur.execute(_PG_HISTORY, [*_columns(history, _HISTORY_KINDS), stored_ts])
                counts.append(int(cur.fetchone()[0]))
            if latest:
                cur.execute(_PG_LOCK, [_array([r[0] for r in latest], "int4")])
            last = histories[-1] if histories else []
            cur.execute(_PG_WRITE, [*_columns(last, _HISTORY_KINDS), stored_ts, stored_ts,
                                    *_columns(latest, _LATEST_KINDS)])
            count, ids = cur.fetchone()
        if histories:
            counts.append(int(count))
        return counts, set(ids)


# the array types of a Row's columns: history rows take the first five
_LATEST_KINDS: tuple[Kind, ...] = ("int4", "int8", "float8", "text", "int2", "int8", "int8", "text")
_HISTORY_KINDS = _LATEST_KINDS[:5]


def _columns(rows: list[Row], kinds: tuple[Kind, ...]) -> list[Any]:
    """The first ``len(kinds)`` columns of ``rows`` as array parameters."""
    if not rows:
        return [_array([], kind) for kind in kinds]
    return [_array(list(c), kind) for c, kind in zip(zip(*rows, strict=True), kinds, strict=False)]


def _array(values: list[Any], kind: Kind) -> Any:
    """An array parameter: packed at once when it can be (``twin.pg_arrays``), else the list for psycopg."""
    packed = pack(values, kind)
    return values if packed is None else packed


def writer_for(dialect: str) -> BulkWriter:
    """The writer for a SQLAlchemy dialect name."""
    if dialect == "sqlite":
        return SqliteWriter()
    if dialect == "postgresql":
        return PostgresWriter()
    raise ValueError(f"no bulk writer for database {dialect!r}")
