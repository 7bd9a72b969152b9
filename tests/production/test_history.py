"""History at scale: partitions ahead and behind, retention, rollups kept up to date, the history API's
resolutions; the same repository on SQLite (plain table) and PostgreSQL (native partitions)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from plant.wire import Value, from_us
from tests.twin.store_helpers import batch
from twin.api.app import create_app
from twin.auth import Role, create_key
from twin.config import TwinSettings
from twin.db import make_engine, make_sessionmaker
from twin.history import (
    DAY_US,
    HOUR_US,
    MINUTE_US,
    HistoryJob,
    floor_to,
    partitions,
    read_buckets,
    rollup_to,
    storage_of,
)
from twin.store import TwinStore

from .helpers import SEC, prepare, prepared_store

NOW = floor_to(1_790_000_000_000_000, DAY_US) + 12 * HOUR_US  # noon, some day in 2026


def _settings(**kw: object) -> TwinSettings:
    return TwinSettings(max_future_s=10 * 365 * 86400, **kw)  # type: ignore[arg-type]


@pytest.fixture
def store(db_url: str) -> Iterator[TwinStore]:
    with prepared_store(db_url, _settings()) as store:
        yield store


def _values(start: int, n: int, step: int, node: str = "p1") -> list[Value]:
    return [Value(node=node, prop="temp", value=float(i % 60), ts=start + i * step) for i in range(n)]


def _pid(store: TwinStore) -> int:
    with store.engine.connect() as conn:
        q = text("SELECT id FROM twin_properties WHERE node_id = 'p1' AND name = 'temp'")
        return int(conn.execute(q).scalar_one())


def test_storage_is_partitioned_on_postgres_plain_on_sqlite(store: TwinStore) -> None:
    with store.engine.connect() as conn:
        storage = storage_of(conn)
        if store.engine.dialect.name == "postgresql":
            assert storage == "partitioned"
            assert len(partitions(conn)) >= 4  # today and three ahead
        else:
            assert storage == "plain"


def test_rollups_match_the_raw_values_and_stay_current(store: TwinStore) -> None:
    start = NOW - 3 * HOUR_US
    values = _values(start, 3 * 3600 // 5, 5 * SEC)  # every 5 s for three hours
    for i in range(0, len(values), 500):
        store.apply(batch(*values[i : i + 500], name=f"b{i}"), now_us=NOW)
    pid = _pid(store)
    with store.engine.connect() as conn:  # before any refresh: computed on the fly
        fly = read_buckets(conn, pid, "1m", start, NOW, "asc", 1000)
    job = HistoryJob(store.engine, _settings())
    report = job.run_once(now=NOW)
    assert report is not None
    assert report.rollup_to == NOW
    with store.engine.connect() as conn:
        assert rollup_to(conn) == NOW
        stored = read_buckets(conn, pid, "1m", start, NOW, "asc", 1000)
        hours = read_buckets(conn, pid, "1h", start, NOW, "asc", 10)
        q = text("SELECT count(*) FROM twin_history_1m WHERE property_id = :p")
        assert conn.execute(q, {"p": pid}).scalar_one() == 180
    assert stored == fly
    assert len(stored) == 180
    first = stored[0]
    assert (first.vmin, first.vmax, first.n, first.vlast) == (0.0, 11.0, 12, 11.0)
    assert first.vmean == pytest.approx(5.5)
    assert [h.n for h in hours] == [720, 720, 720]
    assert hours[0].vlast == float((720 - 1) % 60)
    # a late value inside an already rolled-up minute: the next pass recomputes it
    late = Value(node="p1", prop="temp", value=1000.0, ts=start + 2 * SEC)
    store.apply(batch(late, name="late"), now_us=NOW)
    job.note_written(late.ts)
    job.run_once(now=NOW + MINUTE_US)
    with store.engine.connect() as conn:
        again = read_buckets(conn, pid, "1m", start, start + MINUTE_US, "asc", 10)
        hour = read_buckets(conn, pid, "1h", start, start + HOUR_US, "asc", 10)
    assert (again[0].vmax, again[0].n) == (1000.0, 13)
    assert (hour[0].vmax, hour[0].n) == (1000.0, 721)


def test_history_api_resolutions(store: TwinStore) -> None:
    now = floor_to(_now_us(), HOUR_US)
    start = now - 2 * DAY_US
    values = _values(start, 2 * 24 * 60, MINUTE_US)  # one a minute for two days
    for i in range(0, len(values), 1000):
        store.apply(batch(*values[i : i + 1000], name=f"b{i}"), now_us=now)
    HistoryJob(store.engine, _settings()).run_once(now=now - 6 * HOUR_US)  # the last 6 h stay on the fly
    app = create_app(_settings(), store.engine)
    with make_sessionmaker(store.engine)() as s:
        key = create_key(s, Role.VIEWER, "t")
    client = TestClient(app, headers={"Authorization": f"Bearer {key}"})
    url = "/api/v1/nodes/p1/properties/temp/history"
    iso = lambda us: from_us(us).isoformat()  # noqa: E731
    raw = client.get(url, params={"start": iso(start), "limit": 5}).json()
    assert raw["resolution"] == "raw"
    assert set(raw["items"][0]) == {"ts", "value", "quality"}
    hourly = client.get(url, params={"start": iso(start), "end": iso(now), "resolution": "1h"}).json()
    assert hourly["resolution"] == "1h"
    assert hourly["count"] == 48
    assert sum(b["count"] for b in hourly["items"]) == 2 * 24 * 60
    assert hourly["items"][0] == {"ts": hourly["items"][0]["ts"], "value": 59.0, "min": 0.0, "max": 59.0,
                                  "mean": 29.5, "count": 60}
    # auto: a week → 1-minute buckets; pages of 1,000 walk the whole range, nothing lost or repeated
    auto = {"start": iso(now - 7 * DAY_US), "end": iso(now), "resolution": "auto", "limit": 1000}
    seen: list[str] = []
    page = client.get(url, params=auto).json()
    assert page["resolution"] == "1m"
    while True:
        seen += [b["ts"] for b in page["items"]]
        if page["next_cursor"] is None:
            break
        page = client.get(url, params={**auto, "cursor": page["next_cursor"]}).json()
    assert len(seen) == len(set(seen)) == 2 * 24 * 60
    desc = client.get(url, params={**auto, "order": "desc", "limit": 3}).json()
    assert [b["ts"] for b in desc["items"]] == sorted(seen)[-1:-4:-1]
    six_hours = {"start": iso(now - 5 * HOUR_US), "end": iso(now), "resolution": "auto"}
    assert client.get(url, params=six_hours).json()["resolution"] == "raw"
    month = {"start": iso(now - 30 * DAY_US), "end": iso(now), "resolution": "auto"}
    assert client.get(url, params=month).json()["resolution"] == "1h"
    # bad input: clear errors
    assert client.get(url, params={"resolution": "5m"}).status_code == 422
    text_url = "/api/v1/nodes/p1/properties/mode/history"
    bad = client.get(text_url, params={"resolution": "1m"})
    assert bad.status_code == 422
    assert "numeric" in bad.json()["detail"]
    assert client.get(text_url, params={"resolution": "auto", "start": iso(start)}).status_code == 200
    cursor = client.get(url, params={"resolution": "1h", "limit": 1}).json()["next_cursor"]
    assert client.get(url, params={"resolution": "1m", "cursor": cursor}).status_code == 422


def test_retention_drops_old_partitions_and_rows(store: TwinStore) -> None:
    old = NOW - 10 * DAY_US
    store.apply(batch(*_values(old, 10, SEC), name="old"), now_us=NOW)
    store.apply(batch(*_values(NOW - HOUR_US, 10, SEC), name="new"), now_us=NOW)
    pg = store.engine.dialect.name == "postgresql"
    if pg:  # the old rows predate every partition: they wait in DEFAULT until their partition is made
        with store.engine.begin() as conn:
            from twin.history import ensure_partitions

            made = ensure_partitions(conn, NOW, DAY_US, 3, since=old)
            assert len(made) >= 10
            default = conn.execute(text("SELECT count(*) FROM twin_partitions.twin_history_default"))
            assert default.scalar_one() == 0
    job = HistoryJob(store.engine, _settings(history_retention_days=7, rollup_retention_days=30,
                                             history_compress_after_days=1))
    report = job.run_once(now=NOW)
    assert report is not None
    assert report.storage != "timescaledb"  # without the extension, the compression switch is skipped cleanly
    assert report.compressed == ()
    if pg:
        assert report.dropped  # whole partitions go, no row-by-row delete
        with store.engine.connect() as conn:
            assert min(lo for lo, _ in partitions(conn).values()) >= NOW - 8 * DAY_US
    with store.engine.connect() as conn:
        left = conn.execute(text("SELECT min(ts), count(*) FROM twin_history")).one()
    assert left == (NOW - HOUR_US, 10)
    # and the idempotent insert still holds across partitions: the same batch again is all duplicates
    again = store.apply(batch(*_values(NOW - HOUR_US, 10, SEC), name="new"), now_us=NOW)
    assert (again.accepted, again.duplicates) == (0, 10)


def test_partitions_are_made_ahead_and_writes_never_fail_for_want_of_one(pg_url: str) -> None:
    prepare(pg_url)
    engine = make_engine(pg_url)
    try:
        store = TwinStore(engine, _settings())
        far = NOW + 400 * DAY_US  # beyond every partition: lands in DEFAULT, stored all the same
        assert store.apply(batch(*_values(far, 5, SEC), name="far"), now_us=far).accepted == 5
        job = HistoryJob(engine, _settings(history_partition_hours=6, history_partitions_ahead=2))
        report = job.run_once(now=far)
        assert report is not None
        assert len(report.created) == 3  # the current 6-hour span and two ahead
        with engine.connect() as conn:
            default = text("SELECT count(*) FROM twin_partitions.twin_history_default")
            assert conn.execute(default).scalar() == 0
            moved = text("SELECT count(*) FROM twin_history WHERE ts >= :f")
            assert conn.execute(moved, {"f": far}).scalar() == 5
        assert job.run_once(now=far).created == ()  # nothing more to make
        # the job was away for two days: rows past the last partition waited in DEFAULT, and get theirs
        later = far + 2 * DAY_US
        assert store.apply(batch(*_values(later, 5, SEC), name="later"), now_us=later).accepted == 5
        report = job.run_once(now=later + HOUR_US)
        assert report is not None
        assert len(report.created) == 3
        with engine.connect() as conn:
            default = text("SELECT count(*) FROM twin_partitions.twin_history_default")
            assert conn.execute(default).scalar() == 0
    finally:
        engine.dispose()


def _now_us() -> int:
    return int(datetime.now(UTC).timestamp() * 1e6)

