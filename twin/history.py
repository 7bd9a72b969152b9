"""History at scale: where twin_history lives, how long it is kept, and its 1-minute and 1-hour rollups.

One repository, three storages, chosen when the schema is created (migrations/versions/0003) and recorded in
``twin_history_state``:

- ``timescaledb``: PostgreSQL with the extension; twin_history is a hypertable, old chunks dropped by
  ``drop_chunks`` and, with ``TWIN_HISTORY_COMPRESS_AFTER_DAYS``, chunks older than that compressed
  (segmented by property, newest first; the store's idempotent insert still works on them, only slower);
- ``partitioned``: plain PostgreSQL; twin_history is range-partitioned on ``ts`` (µs). Partitions live in the
  schema ``twin_partitions`` (out of the way of schema comparisons), are created ``partitions_ahead`` spans
  ahead of now and dropped once wholly older than the retention. A DEFAULT partition catches what no
  partition covers (far back-fills), so no write ever fails for want of a partition;
- ``plain``: SQLite; one table, retention by DELETE.

The primary key (property_id, ts) holds the partition key, so the store's idempotent insert
(``ON CONFLICT DO NOTHING``, twin/bulk.py) works unchanged on every storage.

Rollups (numeric values only) are tables on every storage, refreshed by ``HistoryJob``: the 1-minute one from
raw rows, the 1-hour one from the 1-minute one. ``rollup_to`` marks how far they are complete; reads take
buckets before it from the tables and compute the rest from raw rows on the fly, so a read is never stale
about the recent past. Each refresh recomputes the last ``LATE_WINDOW_US`` too (late data), and the ingest
process reports older writes through ``HistoryJob.note_written``.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import structlog
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from plant.wire import UplinkBatch, now_us
from twin import audit
from twin.config import TwinSettings
from twin.store import ApplyResult

log = structlog.get_logger(__name__)

Storage = Literal["timescaledb", "partitioned", "plain"]
Resolution = Literal["1m", "1h"]

PARTITION_SCHEMA = "twin_partitions"
_DEFAULT = f"{PARTITION_SCHEMA}.twin_history_default"
MINUTE_US = 60_000_000
HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US
LATE_WINDOW_US = 5 * MINUTE_US  # each refresh also recomputes this much before the mark
MAX_REFRESH_SPAN_US = DAY_US  # raw rows aggregated per transaction when catching up
_LOCK_KEY = 0x7477696E  # pg advisory lock: one maintenance job at a time across ingest replicas
BUCKET_US: dict[Resolution, int] = {"1m": MINUTE_US, "1h": HOUR_US}
_TABLE: dict[Resolution, str] = {"1m": "twin_history_1m", "1h": "twin_history_1h"}


class RollupBucket(NamedTuple):
    """One rollup bucket of one property.

    Args:
        ts: bucket start, µs.
        vmin: smallest value.
        vmax: largest value.
        vmean: mean value.
        n: values in the bucket.
        vlast: the value with the newest timestamp.
    """

    ts: int
    vmin: float
    vmax: float
    vmean: float
    n: int
    vlast: float | None


@dataclass(frozen=True, slots=True)
class Maintenance:
    """What one maintenance run did.

    Args:
        storage: the history's storage.
        created: partitions created.
        dropped: partitions (or chunks) dropped.
        deleted: raw rows deleted one by one (SQLite, the DEFAULT partition).
        compressed: TimescaleDB chunks compressed (none on any other storage).
        rollup_to: rollups complete up to here, µs.
    """

    storage: Storage
    created: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    deleted: int = 0
    rollup_to: int = 0
    compressed: tuple[str, ...] = ()


def floor_to(ts: int, span: int) -> int:
    """``ts`` rounded down to a multiple of ``span``."""
    return ts - ts % span


# ---- storage and partitions --------------------------------------------------------------------------------


def storage_of(conn: Connection) -> Storage:
    """The history's storage, as recorded by the migration (``plain`` when nothing is recorded)."""
    row = conn.execute(text("SELECT note FROM twin_history_state WHERE name = 'storage'")).first()
    if row is None or row[0] not in ("timescaledb", "partitioned", "plain"):
        return "plain"
    return row[0]  # type: ignore[no-any-return]


def partition_name(start_us: int) -> str:
    """The name of the partition starting at ``start_us``: ``twin_history_p`` and its UTC start."""
    from plant.wire import from_us

    return "twin_history_p" + from_us(start_us).strftime("%Y%m%d%H")


_BOUNDS = re.compile(r"FROM \('?(-?\d+)'?\) TO \('?(-?\d+)'?\)")


def partitions(conn: Connection) -> dict[str, tuple[int, int]]:
    """The range partitions of twin_history by name, with their [from, to) bounds in µs (DEFAULT left out)."""
    rows = conn.execute(text(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'public.twin_history'::regclass"
    )).all()
    out: dict[str, tuple[int, int]] = {}
    for name, bound in rows:
        m = _BOUNDS.search(bound or "")
        if m:
            out[name] = (int(m.group(1)), int(m.group(2)))
    return out


def create_partition(conn: Connection, lo: int, hi: int) -> str:
    """Create and attach the partition [lo, hi), moving any rows the DEFAULT partition held for that range."""
    name = partition_name(lo)
    q = f"{PARTITION_SCHEMA}.{name}"
    conn.execute(text(f"CREATE TABLE {q} (LIKE public.twin_history INCLUDING DEFAULTS)"))
    # rows written before the partition existed went to DEFAULT; ATTACH would refuse while they are there
    conn.execute(text(
        f"WITH moved AS (DELETE FROM {_DEFAULT} WHERE ts >= :lo AND ts < :hi "  # noqa: S608 (our names)
        f"RETURNING *) INSERT INTO {q} SELECT * FROM moved"
    ), {"lo": lo, "hi": hi})
    conn.execute(text(
        f"ALTER TABLE public.twin_history ATTACH PARTITION {q} FOR VALUES FROM ({lo}) TO ({hi})"
    ))
    return name


def ensure_partitions(
    conn: Connection, now: int, span_us: int, ahead: int, since: int | None = None
) -> list[str]:
    """Create the partitions missing from ``since`` (default: now) to ``ahead`` spans past now."""
    have = list(partitions(conn).values())
    if since is None:
        since = now
        ends = [hi for _lo, hi in have if hi <= now]
        if ends and not any(lo <= now < hi for lo, hi in have):
            # the job was away past the last partition: rows since then wait in DEFAULT, give them theirs
            oldest = conn.execute(text(f"SELECT min(ts) FROM {_DEFAULT} WHERE ts >= :a AND ts < :b"),  # noqa: S608
                                  {"a": max(ends), "b": now}).scalar()
            since = int(oldest) if oldest is not None else now
    start = floor_to(since, span_us)
    created = []
    for lo in range(start, floor_to(now, span_us) + (ahead + 1) * span_us, span_us):
        hi = lo + span_us
        if any(a < hi and lo < b for a, b in have):
            continue  # covered (a partition made with another span may overlap: keep it)
        created.append(create_partition(conn, lo, hi))
        have.append((lo, hi))
    return created


def drop_partitions_before(conn: Connection, cutoff: int) -> list[str]:
    """Drop the partitions wholly older than ``cutoff``; returns their names."""
    dropped = []
    for name, (_lo, hi) in sorted(partitions(conn).items(), key=lambda kv: kv[1]):
        if hi <= cutoff:
            conn.execute(text(f"ALTER TABLE public.twin_history DETACH PARTITION {PARTITION_SCHEMA}.{name}"))
            conn.execute(text(f"DROP TABLE {PARTITION_SCHEMA}.{name}"))
            dropped.append(name)
    return dropped


# ---- rollups -----------------------------------------------------------------------------------------------

# the value with the newest timestamp of each bucket: a join back on the primary key (property_id, ts);
# "property_id IN (...)" lets both databases read each property's range through the primary key instead of
# scanning the whole table (or today's partition) for a few minutes of rows
_REFRESH_1M = """
INSERT INTO twin_history_1m (property_id, bucket, vmin, vmax, vmean, n, vlast, last_ts)
SELECT a.property_id, a.bucket, a.vmin, a.vmax, a.vmean, a.n, h.value_num, a.last_ts
FROM (
    SELECT property_id, (ts / 60000000) * 60000000 AS bucket, min(value_num) AS vmin, max(value_num) AS vmax,
           avg(value_num) AS vmean, count(*) AS n, max(ts) AS last_ts
    FROM twin_history
    WHERE property_id IN (SELECT id FROM twin_properties) AND ts >= :lo AND ts < :hi AND value_num IS NOT NULL
    GROUP BY property_id, (ts / 60000000) * 60000000
) AS a JOIN twin_history AS h ON h.property_id = a.property_id AND h.ts = a.last_ts
WHERE true
ON CONFLICT (property_id, bucket) DO UPDATE SET vmin = excluded.vmin, vmax = excluded.vmax,
    vmean = excluded.vmean, n = excluded.n, vlast = excluded.vlast, last_ts = excluded.last_ts
"""

_REFRESH_1H = """
INSERT INTO twin_history_1h (property_id, bucket, vmin, vmax, vmean, n, vlast, last_ts)
SELECT a.property_id, a.bucket, a.vmin, a.vmax, a.vmean, a.n, m.vlast, a.last_ts
FROM (
    SELECT property_id, (bucket / 3600000000) * 3600000000 AS bucket, min(vmin) AS vmin, max(vmax) AS vmax,
           sum(vmean * n) / sum(n) AS vmean, sum(n) AS n, max(last_ts) AS last_ts
    FROM twin_history_1m WHERE bucket >= :lo AND bucket < :hi
    GROUP BY property_id, (bucket / 3600000000) * 3600000000
) AS a JOIN twin_history_1m AS m
    ON m.property_id = a.property_id AND m.bucket = (a.last_ts / 60000000) * 60000000
WHERE true
ON CONFLICT (property_id, bucket) DO UPDATE SET vmin = excluded.vmin, vmax = excluded.vmax,
    vmean = excluded.vmean, n = excluded.n, vlast = excluded.vlast, last_ts = excluded.last_ts
"""

# a bucket computed from raw rows, for the part the tables do not hold yet
_LIVE = """
SELECT a.bucket, a.vmin, a.vmax, a.vmean, a.n, h.value_num
FROM (
    SELECT (ts / {b}) * {b} AS bucket, min(value_num) AS vmin, max(value_num) AS vmax,
           avg(value_num) AS vmean, count(*) AS n, max(ts) AS last_ts
    FROM twin_history WHERE property_id = :p AND ts >= :lo AND ts < :hi AND value_num IS NOT NULL
    GROUP BY (ts / {b}) * {b}
) AS a JOIN twin_history AS h ON h.property_id = :p AND h.ts = a.last_ts
ORDER BY a.bucket {order} LIMIT :limit
"""


def rollup_to(conn: Connection) -> int:
    """How far the 1-minute rollup is complete (µs, minute-aligned; 0 before the first refresh)."""
    row = conn.execute(text("SELECT value FROM twin_history_state WHERE name = 'rollup_to'")).first()
    return int(row[0]) if row else 0


def _set_state(conn: Connection, name: str, value: int, note: str = "") -> None:
    conn.execute(text(
        "INSERT INTO twin_history_state (name, value, note) VALUES (:n, :v, :note) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value, note = excluded.note"
    ), {"n": name, "v": value, "note": note})


def refresh_rollups(conn: Connection, lo: int, hi: int) -> None:
    """Recompute the 1-minute buckets of [lo, hi) from raw rows, then the 1-hour buckets they fall in."""
    lo, hi = floor_to(lo, MINUTE_US), floor_to(hi, MINUTE_US)
    if hi <= lo:
        return
    conn.execute(text(_REFRESH_1M), {"lo": lo, "hi": hi})
    conn.execute(text(_REFRESH_1H), {"lo": floor_to(lo, HOUR_US), "hi": floor_to(hi - 1, HOUR_US) + HOUR_US})


def read_buckets(
    conn: Connection, prop_id: int, res: Resolution, lo: int, hi: int, order: str, limit: int
) -> list[RollupBucket]:
    """Buckets of one property starting in [lo, hi): complete ones from the tables, the rest computed."""
    span = BUCKET_US[res]
    lo, hi = floor_to(lo, span), floor_to(hi - 1, span) + span
    boundary = floor_to(rollup_to(conn), span)  # buckets before it are complete in the table
    direction = "ASC" if order == "asc" else "DESC"
    stored: list[RollupBucket] = []
    if lo < boundary:
        stored = [RollupBucket(*r) for r in conn.execute(text(
            f"SELECT bucket, vmin, vmax, vmean, n, vlast FROM {_TABLE[res]} "  # noqa: S608 (our names)
            f"WHERE property_id = :p AND bucket >= :lo AND bucket < :hi "
            f"ORDER BY bucket {direction} LIMIT :limit"
        ), {"p": prop_id, "lo": lo, "hi": min(hi, boundary), "limit": limit})]
    live: list[RollupBucket] = []
    if hi > boundary:
        live = [RollupBucket(int(r[0]), *r[1:]) for r in conn.execute(
            text(_LIVE.format(order=direction, b=span)),
            {"p": prop_id, "lo": max(lo, boundary), "hi": hi, "limit": limit},
        )]
    merged = stored + live if order == "asc" else live + stored
    return merged[:limit]


# ---- the job -----------------------------------------------------------------------------------------------


class HistoryJob:
    """Keeps partitions ahead, drops what the retention lets go, refreshes the rollups; one thread.

    Args:
        engine: the twin's database.
        settings: retention, partition span, partitions ahead, interval.
    """

    def __init__(self, engine: Engine, settings: TwinSettings) -> None:
        self.engine = engine
        self.settings = settings
        self._dirty: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last: Maintenance | None = None  # the latest pass this process ran

    def note_written(self, oldest_ts: int) -> None:
        """Record that values as old as ``oldest_ts`` were stored, so their buckets are recomputed."""
        with self._lock:
            if self._dirty is None or oldest_ts < self._dirty:
                self._dirty = oldest_ts

    def listener(self, batch: UplinkBatch, result: ApplyResult) -> None:
        """An ``Ingestor`` listener: notes the oldest value of a batch that stored new values."""
        if result.values_accepted and batch.values:
            self.note_written(min(v.ts for v in batch.values))

    def run_once(self, now: int | None = None) -> Maintenance | None:
        """One maintenance pass; None when another process holds the job's lock."""
        now = now if now is not None else now_us()
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql" and not _try_lock(conn):
                return None
            storage = storage_of(conn)
            created, dropped, deleted = self._storage(conn, storage, now)
            compressed = self._compress(conn, storage, now)
        with self._lock:
            dirty, self._dirty = self._dirty, None
        try:
            done = self._refresh(now, dirty)
        except BaseException:
            if dirty is not None:  # keep the mark for the next pass
                self.note_written(dirty)
            raise
        self.last = Maintenance(storage, tuple(created), tuple(dropped), deleted, done, tuple(compressed))
        return self.last

    def _storage(self, conn: Connection, storage: Storage, now: int) -> tuple[list[str], list[str], int]:
        s = self.settings
        span = s.history_partition_hours * HOUR_US
        created: list[str] = []
        dropped: list[str] = []
        deleted = 0
        if storage == "partitioned":
            conn.execute(text("SET LOCAL lock_timeout = '5s'"))  # never stall ingest behind a DDL lock
            created = ensure_partitions(conn, now, span, s.history_partitions_ahead)
        if s.history_retention_days > 0:
            cutoff = now - int(s.history_retention_days * DAY_US)
            if storage == "partitioned":
                dropped = drop_partitions_before(conn, cutoff)
                old = text(f"DELETE FROM {_DEFAULT} WHERE ts < :c")  # noqa: S608 (our names)
                deleted = conn.execute(old, {"c": cutoff}).rowcount
            elif storage == "timescaledb":
                chunks = text("SELECT drop_chunks('twin_history', older_than => :c)")
                rows = conn.execute(chunks, {"c": cutoff})
                dropped = [str(r[0]) for r in rows]
            else:
                deleted = conn.execute(text("DELETE FROM twin_history WHERE ts < :c"), {"c": cutoff}).rowcount
        if s.rollup_retention_days > 0:
            cutoff = now - int(s.rollup_retention_days * DAY_US)
            for table in _TABLE.values():
                conn.execute(text(f"DELETE FROM {table} WHERE bucket < :c"), {"c": cutoff})  # noqa: S608
        return created, dropped, deleted

    def _compress(self, conn: Connection, storage: Storage, now: int) -> list[str]:
        """On TimescaleDB, compress the chunks older than the setting (compression switched on first)."""
        days = self.settings.history_compress_after_days
        if storage != "timescaledb" or days <= 0:
            return []
        enabled = conn.execute(text(
            "SELECT compression_enabled FROM timescaledb_information.hypertables "
            "WHERE hypertable_name = 'twin_history'")).scalar()
        if not enabled:
            conn.execute(text("ALTER TABLE twin_history SET (timescaledb.compress, timescaledb.compress_segmentby "
                              "= 'property_id', timescaledb.compress_orderby = 'ts DESC')"))
        rows = conn.execute(text(
            "SELECT compress_chunk(c, if_not_compressed => true) "
            "FROM show_chunks('twin_history', older_than => CAST(:c AS bigint)) AS c"),
            {"c": now - int(days * DAY_US)})
        return [str(r[0]) for r in rows if r[0] is not None]

    def _refresh(self, now: int, dirty: int | None) -> int:
        hi = floor_to(now, MINUTE_US)
        with self.engine.connect() as conn:
            mark = rollup_to(conn)
            if mark == 0:
                first = conn.execute(text("SELECT min(ts) FROM twin_history")).scalar()
                mark = int(first) if first is not None else hi
        lo = mark - LATE_WINDOW_US if dirty is None else min(mark - LATE_WINDOW_US, dirty)
        lo = max(floor_to(lo, MINUTE_US), 0)
        while lo < hi:  # in bounded steps, each committed with its mark: a big catch-up resumes where it was
            step = min(hi, lo + MAX_REFRESH_SPAN_US)
            with self.engine.begin() as conn:
                refresh_rollups(conn, lo, step)
                if step > rollup_to(conn):
                    _set_state(conn, "rollup_to", step)
            lo = step
        return hi

    def start(self) -> HistoryJob:
        """Run every ``history_maintenance_s`` seconds on a daemon thread until ``stop()``."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="history-job", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread after the pass in hand."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                report = self.run_once()
                if report is not None and (report.created or report.dropped or report.deleted):
                    log.info("history_maintained", **_fields(report))
                if self.settings.audit_retention_days > 0:  # the audit trail's retention, in the same housekeeping
                    with Session(self.engine) as session:
                        audit.purge(session, self.settings.audit_retention_days)
            except SQLAlchemyError as exc:  # the database may be away: try again next interval
                log.warning("history_maintenance_failed", error=str(exc).splitlines()[0])
            self._stop.wait(self.settings.history_maintenance_s)


def _try_lock(conn: Connection) -> bool:
    return bool(conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _LOCK_KEY}).scalar())


def _fields(m: Maintenance) -> dict[str, Any]:
    return {"storage": m.storage, "created": list(m.created), "dropped": list(m.dropped),
            "deleted": m.deleted}
