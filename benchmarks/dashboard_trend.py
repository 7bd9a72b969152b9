"""A dashboard trend of a week of 1 s data: server-side min/max downsampling against reading every point.

    python benchmarks/dashboard_trend.py [--quick] [--pg URL]

One property with a week of 1 s values (604,800 rows; a day with --quick) on SQLite and PostgreSQL, at the
current schema, its rollups refreshed as the history job does. The baseline reads the whole range through the
paged history query (what a client without downsampling must fetch), once; the dashboard asks for 800 min/max
buckets (``twin.downsample``: merged from the rollups, ``trend_s``; from one GROUP BY over the raw rows on a
schema without rollups, ``trend_raw_s``), each the median of three calls after one on another range has
warmed the connection. Prints one JSON line: ``ratio`` is the lower of the two engines'
baseline/trend time, ``target`` the least speed-up accepted, and the absolute seconds (a trend must answer
within ``max_trend_s`` to keep the page responsive).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import structlog
from sqlalchemy import create_engine, insert, text

from migrations import run as migrations
from plant.wire import from_us
from twin import downsample as ds
from twin import queries
from twin.db import make_engine, make_sessionmaker
from twin.downsample import downsample
from twin.history import refresh_rollups
from twin.queries import MAX_LIMIT, SeriesQuery
from twin.tables import HistoryRow, TwinNode, TwinProperty

TARGET = 10.0
MAX_TREND_S = 1.5
BUCKETS = 800
PG_ADMIN = os.environ.get("FACTORY_TWIN_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
T0 = 1_700_000_000_000_000  # µs
SEC = 1_000_000
T = TypeVar("T")


def _seed(url: str, points: int) -> TwinProperty:
    migrations.upgrade(url)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as s:
        s.add(TwinNode(id="m", parent_id=None, path="/m/", kind="machine", name="m"))
        s.flush()
        prop = TwinProperty(node_id="m", name="v", unit="u")
        s.add(prop)
        s.commit()
        chunk = 50_000
        for start in range(0, points, chunk):
            rows = [
                {
                    "property_id": prop.id,
                    "ts": T0 + i * SEC,
                    "value_text": None,
                    "quality": 0,
                    "value_num": 5000.0 if i == points // 3 else float(i % 1000),
                }
                for i in range(start, min(points, start + chunk))
            ]
            s.connection().execute(insert(HistoryRow), rows)
        refresh_rollups(s.connection(), T0, T0 + points * SEC)
        s.commit()
        if engine.dialect.name == "postgresql":
            s.execute(text("ANALYZE twin_history"))
            s.commit()
    engine.dispose()
    return prop


def _median_time(call: Callable[[], T], repeat: int = 3) -> tuple[float, T]:
    """The median wall time of ``repeat`` calls, and the last call's result."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def _measure(url: str, points: int) -> dict[str, Any]:
    _seed(url, points)
    engine = make_engine(url)
    end = T0 + points * SEC
    try:
        with make_sessionmaker(engine)() as s:
            prop = s.query(TwinProperty).one()
            downsample(s, prop, T0, T0 + 3600 * SEC, BUCKETS)  # warm: connection, schema check, statements
            trend_s, (buckets, _, raw) = _median_time(lambda: downsample(s, prop, T0, end, BUCKETS))
            assert not raw
            assert max(b.max for b in buckets) == 5000.0  # the one spike survives
            url_key = engine.url.render_as_string(hide_password=True)
            ds._has_rollups[url_key] = False
            trend_raw_s, (plain, _, _) = _median_time(lambda: downsample(s, prop, T0, end, BUCKETS))
            assert max(b.max for b in plain) == 5000.0
            t = time.perf_counter()
            window = SeriesQuery(start=from_us(T0), end=from_us(end), limit=MAX_LIMIT)
            read = 0
            while True:
                page = queries.property_history(s, "m", "v", window)
                read += page.count
                if page.next_cursor is None:
                    break
                window = SeriesQuery(start=window.start, end=window.end, limit=MAX_LIMIT, cursor=page.next_cursor)
            raw_s = time.perf_counter() - t
            assert read == points
    finally:
        engine.dispose()
    return {
        "trend_s": round(trend_s, 3),
        "trend_raw_s": round(trend_raw_s, 3),
        "all_points_s": round(raw_s, 3),
        "ratio": round(raw_s / trend_s, 1),
    }


def main() -> None:
    """Run the benchmark and print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a day of data instead of a week")
    parser.add_argument("--pg", default=PG_ADMIN, help="PostgreSQL admin URL")
    args = parser.parse_args()
    logging.disable(logging.INFO)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    points = int(timedelta(days=1 if args.quick else 7).total_seconds())
    out: dict[str, Any] = {"name": "dashboard_trend", "points": points, "buckets": BUCKETS}
    with tempfile.TemporaryDirectory() as tmp:
        out["sqlite"] = _measure(f"sqlite:///{tmp}/bench.db", points)
    name = f"ft_bench_{uuid.uuid4().hex[:10]}"
    try:
        admin = create_engine(args.pg, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # no PostgreSQL here: say so, measure SQLite alone
        out["postgres"] = {"skipped": str(exc).splitlines()[0]}
        admin = None
    if admin is not None:
        try:
            out["postgres"] = _measure(args.pg.rsplit("/", 1)[0] + f"/{name}", points)
        finally:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    measured = [v for v in (out["sqlite"], out["postgres"]) if "ratio" in v]
    out["ratio"] = min(v["ratio"] for v in measured)
    out["target"] = TARGET
    out["max_trend_s"] = MAX_TREND_S
    out["ok"] = out["ratio"] >= TARGET and all(v["trend_s"] <= MAX_TREND_S for v in measured)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
