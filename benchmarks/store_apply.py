"""Twin-store batch apply rate against a raw bulk insert of the same rows, on SQLite and on PostgreSQL.

    python benchmarks/store_apply.py [--quick] [--pg URL]

Each engine gets two fresh databases at the current schema with the same twin (machines × properties). The
baseline writes each batch's history rows with the fastest plain statement (SQLite ``executemany``, PostgreSQL
``COPY``) and commits; the store applies the same batches with ``TwinStore.apply`` (validation, idempotent
history, latest state, commit). Prints one JSON line; ``ratio`` is the lower of the two engines' apply/raw.
PostgreSQL is skipped, with a note, when it cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import structlog
from sqlalchemy import Engine, create_engine, text

from migrations import run
from plant.site import Site
from plant.wire import Quality, UplinkBatch, Value
from twin.config import TwinSettings
from twin.db import make_engine
from twin.site_sync import sync_site
from twin.store import TwinStore

TARGET = 0.5
PG_ADMIN = os.environ.get("FACTORY_TWIN_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
T0 = 1_700_000_000_000_000  # µs, Nov 2023


def make_site(machines: int, props: int) -> Site:
    """A plant of ``machines`` machines with ``props`` float properties each."""
    return Site.model_validate({
        "site": {"id": "bench"},
        "asset_types": {"m": {"properties": {f"p{i}": {"unit": "u"} for i in range(props)}}},
        "nodes": [{"id": "bench", "kind": "site", "children": [{"id": "area", "kind": "area", "children": [
            {"id": f"m{j}", "kind": "machine", "type": "m"} for j in range(machines)]}]}],
    })


def make_batches(machines: int, props: int, batches: int, size: int) -> list[UplinkBatch]:
    """Batches of ``size`` values cycling over every property, timestamps moving forward."""
    keys = [(f"m{j}", f"p{i}") for j in range(machines) for i in range(props)]
    out, n = [], 0
    for b in range(batches):
        values = []
        for _ in range(size):
            node, prop = keys[n % len(keys)]
            ts = T0 + (n // len(keys)) * 1_000_000
            values.append(Value.model_construct(node=node, prop=prop, value=float(n % 997) * 0.5, ts=ts,
                                                server_ts=None, recv_ts=None, quality=Quality.GOOD, flags=()))
            n += 1
        out.append(UplinkBatch.model_construct(v=1, gateway="gw", batch=f"b{b}", sent=T0, values=values,
                                               frames=[], diagnoses=[]))
    return out


def prepare(url: str, site: Site) -> Engine:
    """Migrate a fresh database and load the twin."""
    run.upgrade(url)
    engine = make_engine(url)
    sync_site(engine, site, now=T0)
    return engine


def raw_rows(engine: Engine, batches: list[UplinkBatch]) -> list[list[tuple[Any, ...]]]:
    """The history rows of each batch, as the baseline writes them."""
    with engine.connect() as conn:
        ids = {(n, p): i for i, n, p in conn.execute(text("SELECT id, node_id, name FROM twin_properties"))}
    return [[(ids[(v.node, v.prop)], v.ts, v.value, None, 0) for v in b.values] for b in batches]


class RawWriter:
    """The baseline: a batch's history rows by the fastest plain bulk insert, one commit each."""

    def __init__(self, engine: Engine) -> None:
        self.conn = engine.connect()
        self.raw: Any = self.conn.connection.driver_connection
        self.sqlite = engine.dialect.name == "sqlite"

    def write(self, rows: list[tuple[Any, ...]]) -> None:
        """Insert and commit one batch."""
        if self.sqlite:
            self.raw.executemany("INSERT INTO twin_history (property_id, ts, value_num, value_text, quality) "
                                 "VALUES (?, ?, ?, ?, ?)", rows)
        else:
            with self.raw.cursor() as cur, cur.copy(
                "COPY twin_history (property_id, ts, value_num, value_text, quality) FROM STDIN"
            ) as copy:
                for r in rows:
                    copy.write_row(r)
        self.raw.commit()

    def close(self) -> None:
        """Give the connection back."""
        self.conn.close()


def measure(
    name: str, urls: tuple[str, str], site: Site, batches: list[UplinkBatch]
) -> dict[str, Any]:
    """Apply and raw rates on one engine, batch by batch in turns so both see the same machine load."""
    values = sum(len(b.values) for b in batches)
    raw_engine, apply_engine = prepare(urls[0], site), prepare(urls[1], site)
    try:
        rows = raw_rows(raw_engine, batches)
        raw = RawWriter(raw_engine)
        store = TwinStore(apply_engine, TwinSettings())
        with apply_engine.connect() as conn:
            store.catalog.load(conn)  # as in a running server: the catalog is loaded once at start
        now = T0 + 86_400 * 1_000_000
        raw.write(rows[0])  # warm up both (connections, prepared statements), then start afresh
        store.apply(batches[0], now_us=now)
        for engine in (raw_engine, apply_engine):
            with engine.begin() as conn:
                conn.execute(text("DELETE FROM twin_history"))
                conn.execute(text("UPDATE twin_properties SET ts = NULL, value_num = NULL"))
        raw_s = apply_s = 0.0
        for batch, batch_rows in zip(batches, rows, strict=True):
            t0 = time.perf_counter()
            raw.write(batch_rows)
            t1 = time.perf_counter()
            result = store.apply(batch, now_us=now)
            t2 = time.perf_counter()
            raw_s, apply_s = raw_s + t1 - t0, apply_s + t2 - t1
            assert result.accepted == len(batch.values)
        raw.close()
    finally:
        raw_engine.dispose()
        apply_engine.dispose()
    raw_rate, apply_rate = values / raw_s, values / apply_s
    return {"engine": name, "values": values, "apply_values_per_s": round(apply_rate),
            "raw_values_per_s": round(raw_rate), "ratio": round(apply_rate / raw_rate, 3)}


def pg_databases() -> tuple[str, str] | None:
    """Two fresh PostgreSQL databases, or None when the server is unreachable."""
    try:
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        names = [f"ft_bench_{uuid.uuid4().hex[:10]}" for _ in range(2)]
        with admin.connect() as conn:
            for n in names:
                conn.execute(text(f'CREATE DATABASE "{n}"'))
        admin.dispose()
    except Exception:
        return None
    base = PG_ADMIN.rsplit("/", 1)[0]
    return f"{base}/{names[0]}", f"{base}/{names[1]}"


def drop_pg(urls: tuple[str, str]) -> None:
    """Drop the benchmark's databases."""
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for u in urls:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{u.rsplit("/", 1)[1]}" WITH (FORCE)'))
    admin.dispose()


def main() -> None:
    """Run the benchmark and print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer batches, under a minute")
    parser.add_argument("--machines", type=int, default=10)
    parser.add_argument("--props", type=int, default=30)
    parser.add_argument("--size", type=int, default=1000, help="values per batch")
    args = parser.parse_args()
    # logs go to stderr, warnings only: stdout carries the one JSON line
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
                        logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    batches_n = 60 if args.quick else 300
    site = make_site(args.machines, args.props)
    batches = make_batches(args.machines, args.props, batches_n, args.size)
    engines, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        engines.append(measure("sqlite", (f"sqlite:///{tmp}/raw.db", f"sqlite:///{tmp}/apply.db"),
                               site, batches))
    pg = pg_databases()
    if pg is None:
        notes.append(f"postgresql skipped: cannot reach {PG_ADMIN}")
    else:
        try:
            engines.append(measure("postgresql", pg, site, batches))
        finally:
            drop_pg(pg)
    ratio = min(e["ratio"] for e in engines)
    out = {"name": "store_apply", "ratio": ratio, "target": TARGET, "ok": ratio >= TARGET,
           "batch_size": args.size, "batches": batches_n, "properties": args.machines * args.props,
           "engines": {e.pop("engine"): e for e in engines}, "notes": notes}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
