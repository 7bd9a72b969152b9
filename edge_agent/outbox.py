"""The durable local outbox: SQLite in WAL mode, written before anything is acknowledged upstream.

Items (values, frames, diagnoses) are stored as JSON in chunks of up to a few hundred items of one kind, one
row per chunk: a burst of readings costs one transaction and a handful of rows, not a row per value. A chunk
leaves only when the platform acknowledges the batch that carried it. Rows are never updated, so a crash
leaves either the whole transaction or none of it.

Durability: ``synchronous=FULL`` by default. In WAL mode NORMAL already survives a killed process (the WAL is
in the OS page cache), but a power cut can roll back the last commits, and those were already acknowledged
upstream (the MQTT PUBACK went out after COMMIT), so they would be lost. FULL fsyncs the WAL at every commit;
group commit makes that one fsync per burst, not per message.

Disk budget: the logical size (bytes of JSON plus a per-row overhead) is tracked. Past the budget the policy
drops whole chunks: ``drop_oldest_raw`` (default) drops the oldest raw values first and touches frames and
diagnoses only when no raw values are left; ``drop_oldest`` drops the oldest chunks of any kind.

Delivered messages: the fingerprints of the source messages whose items a transaction holds are written in
that same transaction (table ``delivered``, a bounded window by age and count), so after a crash between
COMMIT and PUBACK the pipeline can tell a broker's redelivery from new data (see pipeline.py).

Every method runs on one private thread that owns the connection; ``Outbox`` is the asyncio face of it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import structlog
from pydantic import TypeAdapter

from edge_agent import metrics
from edge_agent.errors import OutboxError
from edge_agent.sample import Sample
from plant.wire import Diagnosis, Frame, Value

log = structlog.get_logger(__name__)

KINDS = ("value", "frame", "diagnosis")
VALUE, FRAME, DIAGNOSIS = 0, 1, 2
ROW_OVERHEAD = 64
_DROP_LOG_EVERY_S = 10.0
_ADAPTERS: tuple[TypeAdapter[Any], ...] = (
    TypeAdapter(list[Value]),
    TypeAdapter(list[Frame]),
    TypeAdapter(list[Diagnosis]),
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunk (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a late duplicate ack cannot delete a newer chunk
    kind INTEGER NOT NULL,
    n INTEGER NOT NULL,
    created INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunk_kind ON chunk (kind, id);
CREATE TABLE IF NOT EXISTS delivered (
    fp BLOB PRIMARY KEY,  -- fingerprint of a source message whose items are committed
    at INTEGER NOT NULL   -- commit time, µs: the window is pruned by age
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS delivered_at ON delivered (at);
CREATE TABLE IF NOT EXISTS clock (
    domain TEXT PRIMARY KEY,  -- "source/node": the correction in use, so a restart stamps redeliveries alike
    offset_us INTEGER NOT NULL
);
"""
_OLDEST = "SELECT id, kind, n, bytes FROM chunk ORDER BY id LIMIT 64"
_OLDEST_OF_KIND = "SELECT id, kind, n, bytes FROM chunk WHERE kind = ? ORDER BY id LIMIT 64"
T = TypeVar("T")


@dataclass(slots=True, frozen=True)
class Chunk:
    """One outbox row: ``n`` items of one kind, ``body`` their JSON objects joined by commas.

    Args:
        id: row id, increasing with insertion.
        kind: 0 value, 1 frame, 2 diagnosis.
        n: number of items.
        created: insertion time, µs.
        body: the items' JSON, without the surrounding brackets.
    """

    id: int
    kind: int
    n: int
    created: int
    body: bytes


@dataclass(slots=True)
class Dropped:
    """Items removed by the disk-budget policy in one write, per kind."""

    counts: list[int]

    def __bool__(self) -> bool:
        return any(self.counts)


def encode(kind: int, items: Sequence[Any]) -> bytes:
    """Items of one kind as a chunk body (their JSON objects joined by commas)."""
    if kind == VALUE and all(type(i) is Sample for i in items):
        return ",".join([i.to_json() for i in items]).encode()
    return _ADAPTERS[kind].dump_json([i.to_value() if type(i) is Sample else i for i in items])[1:-1]


class OutboxDB:
    """The outbox on one SQLite connection; use it from one thread only.

    Args:
        path: the database file (created with its folder when missing).
        budget_bytes: logical size past which the drop policy acts.
        policy: ``drop_oldest_raw`` or ``drop_oldest``.
        synchronous: ``FULL`` (power-cut safe) or ``NORMAL``.
        chunk_items: items per row at most.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        budget_bytes: int = 1 << 30,
        policy: Literal["drop_oldest_raw", "drop_oldest"] = "drop_oldest_raw",
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        chunk_items: int = 256,
    ) -> None:
        self.path = Path(path)
        self.budget_bytes = budget_bytes
        self.policy = policy
        self.chunk_items = chunk_items
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.executescript(_SCHEMA)
            check = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise OutboxError(f"{self.path}: outbox is damaged: {check}")
            self.depth = [0, 0, 0]
            self.bytes = 0
            for kind, n, b, rows in self._db.execute(
                "SELECT kind, sum(n), sum(bytes), count(*) FROM chunk GROUP BY kind"
            ):
                self.depth[kind] = n
                self.bytes += b + rows * ROW_OVERHEAD
        except sqlite3.Error as exc:
            raise OutboxError(f"{self.path}: cannot open outbox: {exc}") from exc

    def close(self) -> None:
        """Checkpoint the WAL and close."""
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            log.warning("outbox_checkpoint_failed", path=str(self.path))
        self._db.close()

    def put(
        self,
        values: Sequence[Value | Sample] = (),
        frames: Sequence[Frame] = (),
        diagnoses: Sequence[Diagnosis] = (),
        clocks: dict[str, int] | None = None,
        delivered: Sequence[bytes] = (),
    ) -> Dropped:
        """Store items, clock offsets and delivered-message fingerprints in one durable transaction.

        Returns what the budget policy dropped.
        """
        now = time.time_ns() // 1000
        rows = []
        step = self.chunk_items
        for kind, items in ((VALUE, values), (FRAME, frames), (DIAGNOSIS, diagnoses)):
            for i in range(0, len(items), step):
                part = items[i : i + step]
                body = encode(kind, part)
                rows.append((kind, len(part), now, len(body), body))
        return self.put_encoded(rows, clocks, delivered)

    def put_encoded(
        self,
        rows: Sequence[tuple[int, int, int, int, bytes]],
        clocks: dict[str, int] | None = None,
        delivered: Sequence[bytes] = (),
    ) -> Dropped:
        """Store pre-encoded rows (kind, n, created, bytes, body), clock offsets and fingerprints at once."""
        dropped = Dropped([0, 0, 0])
        if not rows and not clocks and not delivered:
            return dropped
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if clocks:
                    self._db.executemany(
                        "INSERT INTO clock (domain, offset_us) VALUES (?, ?)"
                        " ON CONFLICT (domain) DO UPDATE SET offset_us = excluded.offset_us",
                        list(clocks.items()),
                    )
                self._db.executemany(
                    "INSERT INTO chunk (kind, n, created, bytes, body) VALUES (?,?,?,?,?)", rows
                )
                if delivered:
                    now = time.time_ns() // 1000
                    self._db.executemany(
                        "INSERT OR REPLACE INTO delivered (fp, at) VALUES (?, ?)", [(f, now) for f in delivered]
                    )
                added = sum(r[3] + ROW_OVERHEAD for r in rows)
                if self.bytes + added > self.budget_bytes:
                    dropped = self._enforce_budget(self.bytes + added)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise OutboxError(f"{self.path}: cannot write outbox: {exc}") from exc
        for kind, n, _, b, _ in rows:
            self.depth[kind] += n
            self.bytes += b + ROW_OVERHEAD
        for kind, n in enumerate(dropped.counts):
            self.depth[kind] -= n
        return dropped

    def _enforce_budget(self, size: int) -> Dropped:
        dropped = Dropped([0, 0, 0])
        kinds = (VALUE, FRAME, DIAGNOSIS) if self.policy == "drop_oldest_raw" else (None,)
        for kind in kinds:
            while size > self.budget_bytes:
                if kind is None:
                    victims = self._db.execute(_OLDEST).fetchall()
                else:
                    victims = self._db.execute(_OLDEST_OF_KIND, (kind,)).fetchall()
                if not victims:
                    break
                freed = 0
                for vid, vkind, n, b in victims:
                    if size - freed <= self.budget_bytes:
                        break
                    self._db.execute("DELETE FROM chunk WHERE id = ?", (vid,))
                    dropped.counts[vkind] += n
                    freed += b + ROW_OVERHEAD
                size -= freed
                self.bytes -= freed
        return dropped

    def take(self, max_items: int, exclude: Sequence[int] = (), live_share: float = 0.0) -> list[Chunk]:
        """Chunks to send: oldest first, and up to ``live_share`` of the room from the newest end."""
        ex = json.dumps(list(exclude))
        q = (
            "SELECT id, kind, n, created, body FROM chunk"
            " WHERE id NOT IN (SELECT value FROM json_each(?)) ORDER BY id"
        )
        out: list[Chunk] = []
        room = max_items
        head_room = max_items - int(max_items * live_share) if live_share > 0 else max_items
        try:
            for row in self._db.execute(q, (ex,)):
                if out and sum(c.n for c in out) + row[2] > head_room:
                    break
                out.append(Chunk(*row))
            room -= sum(c.n for c in out)
            if room > 0 and live_share > 0:
                taken = {c.id for c in out}
                for row in self._db.execute(q + " DESC", (ex,)):
                    if row[0] in taken or row[2] > room:
                        break
                    out.append(Chunk(*row))
                    room -= row[2]
        except sqlite3.Error as exc:
            raise OutboxError(f"{self.path}: cannot read outbox: {exc}") from exc
        return out

    def delete(self, ids: Sequence[int]) -> int:
        """Remove acknowledged chunks (ids already gone are ignored); returns items removed."""
        if not ids:
            return 0
        try:
            self._db.execute("BEGIN IMMEDIATE")
            gone = self._db.execute(
                "DELETE FROM chunk WHERE id IN (SELECT value FROM json_each(?)) RETURNING kind, n, bytes",
                (json.dumps(list(ids)),),
            ).fetchall()
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise OutboxError(f"{self.path}: cannot remove acknowledged items: {exc}") from exc
        for kind, n, b in gone:
            self.depth[kind] -= n
            self.bytes -= b + ROW_OVERHEAD
        return sum(g[1] for g in gone)

    def oldest_created(self) -> int | None:
        """Insertion time (µs) of the oldest chunk, or None when empty."""
        row = self._db.execute("SELECT created FROM chunk ORDER BY id LIMIT 1").fetchone()
        return None if row is None else int(row[0])

    def delivered(self, since_us: int) -> list[tuple[bytes, int]]:
        """Fingerprints of messages committed at or after ``since_us``, oldest first, with their commit time."""
        try:
            rows = self._db.execute(
                "SELECT fp, at FROM delivered WHERE at >= ? ORDER BY at", (since_us,)
            ).fetchall()
        except sqlite3.Error as exc:
            raise OutboxError(f"{self.path}: cannot read delivered messages: {exc}") from exc
        return [(bytes(fp), int(at)) for fp, at in rows]

    def prune_delivered(self, before_us: int, keep: int) -> None:
        """Forget fingerprints committed before ``before_us``, and all but the newest ``keep``."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM delivered WHERE at < ?", (before_us,))
            self._db.execute(
                "DELETE FROM delivered WHERE fp NOT IN (SELECT fp FROM delivered ORDER BY at DESC LIMIT ?)",
                (keep,),
            )
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise OutboxError(f"{self.path}: cannot prune delivered messages: {exc}") from exc

    def clock_offsets(self) -> dict[str, int]:
        """The clock corrections in use when last written, per domain."""
        return {d: int(o) for d, o in self._db.execute("SELECT domain, offset_us FROM clock")}

    def count(self) -> int:
        """Items stored, all kinds."""
        return sum(self.depth)

    def last_id(self) -> int:
        """The newest chunk id ever written (0 for a new outbox): marks where a backlog ends."""
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'chunk'").fetchone()
        return 0 if row is None else int(row[0])

    def items_upto(self, last_id: int) -> int:
        """Items still stored in chunks with id at most ``last_id`` (what is left of a backlog)."""
        row = self._db.execute("SELECT coalesce(sum(n), 0) FROM chunk WHERE id <= ?", (last_id,)).fetchone()
        return int(row[0])


class Outbox:
    """The outbox for asyncio code: every call runs on the database's own thread.

    Args:
        db: an OutboxDB opened on that thread by ``Outbox.open``.
        executor: the single thread that owns ``db``.
    """

    def __init__(self, db: OutboxDB, executor: ThreadPoolExecutor) -> None:
        self.db = db
        self._ex = executor
        self.changed = asyncio.Event()
        self._logged_at = -_DROP_LOG_EVERY_S
        self._unlogged = [0, 0, 0]

    @classmethod
    async def open(cls, path: str | Path, **kwargs: Any) -> Outbox:
        """Open (or create) the outbox file on a fresh private thread."""
        ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        try:
            db = await asyncio.get_running_loop().run_in_executor(ex, partial(OutboxDB, path, **kwargs))
        except BaseException:
            ex.shutdown(wait=False)
            raise
        box = cls(db, ex)
        box.publish_metrics()
        return box

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._ex, fn, *args)

    async def put(
        self,
        values: Sequence[Value | Sample] = (),
        frames: Sequence[Frame] = (),
        diagnoses: Sequence[Diagnosis] = (),
        clocks: dict[str, int] | None = None,
        delivered: Sequence[bytes] = (),
    ) -> Dropped:
        """Store items durably; returns what the budget policy dropped (already counted and logged)."""
        dropped: Dropped = await self._run(self.db.put, values, frames, diagnoses, clocks, delivered)
        if dropped:
            self._report_drop(dropped)
        self.publish_metrics()
        self.changed.set()
        return dropped

    def _report_drop(self, dropped: Dropped) -> None:
        for kind, n in enumerate(dropped.counts):
            if n:
                metrics.DROPPED.labels(KINDS[kind], "disk_budget").inc(n)
                self._unlogged[kind] += n
        now = time.monotonic()
        if now - self._logged_at >= _DROP_LOG_EVERY_S:  # one line per interval, not one per write
            log.warning(
                "outbox_budget_drop",
                policy=self.db.policy,
                budget_bytes=self.db.budget_bytes,
                **{KINDS[k]: n for k, n in enumerate(self._unlogged) if n},
            )
            self._logged_at = now
            self._unlogged = [0, 0, 0]

    async def take(self, max_items: int, exclude: Sequence[int] = (), live_share: float = 0.0) -> list[Chunk]:
        """Chunks to send next, oldest first with a share for the newest."""
        chunks: list[Chunk] = await self._run(self.db.take, max_items, list(exclude), live_share)
        return chunks

    async def delete(self, ids: Sequence[int]) -> int:
        """Remove acknowledged chunks."""
        n: int = await self._run(self.db.delete, list(ids))
        self.publish_metrics()
        return n

    def publish_metrics(self) -> None:
        """Depth and bytes to the gauges (cheap: counters kept in memory)."""
        for kind, n in enumerate(self.db.depth):
            metrics.OUTBOX_DEPTH.labels(KINDS[kind]).set(n)
        metrics.OUTBOX_BYTES.set(self.db.bytes)

    async def publish_age(self) -> None:
        """The oldest item's age to its gauge."""
        oldest = await self._run(self.db.oldest_created)
        age = 0.0 if oldest is None else max(0.0, time.time() - oldest / 1e6)
        metrics.OUTBOX_OLDEST_AGE.set(age)

    async def delivered(self, since_us: int) -> list[tuple[bytes, int]]:
        """Fingerprints of messages committed since ``since_us`` (µs), oldest first."""
        rows: list[tuple[bytes, int]] = await self._run(self.db.delivered, since_us)
        return rows

    async def prune_delivered(self, before_us: int, keep: int) -> None:
        """Bound the delivered-message window by age and count."""
        await self._run(self.db.prune_delivered, before_us, keep)

    async def items_upto(self, last_id: int) -> int:
        """Items left of the backlog that ends at chunk ``last_id``."""
        n: int = await self._run(self.db.items_upto, last_id)
        return n

    async def close(self) -> None:
        """Close the database and its thread."""
        await self._run(self.db.close)
        self._ex.shutdown(wait=True)
