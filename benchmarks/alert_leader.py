"""Alert evaluation by the leader (fed from the database) against evaluation in the ingest thread, on PostgreSQL;
and how fast a standby takes over.

    python benchmarks/alert_leader.py [--quick] [--machines N]

The same batches (every machine's two watched properties per batch, a few excursions above the limit) are
stored twice, in two fresh databases. Baseline: the engine judges each batch's ``ApplyResult`` in the storing
thread, as a single-process platform could; its cost is the CPU time of ``AlertEngine.process`` and of the alert
clock's ticks. Leader: the
batches are stored and announced on the live bus (NOTIFY) while an ``AlertEvaluator`` holding the leader lock
hears them, reads what moved and judges it; its cost is the CPU time of its process, as the batches are stored
by a process of their own (an ingest process). CPU time, because wall time would also count waiting for a
database and cores busy with the storing process (both figures are printed). ``ratio`` = baseline cost /
leader cost (target 0.5: reading from the database may cost up to twice as much). Both must write the same
alerts. Then two evaluators on one database: the leader's lock connection is cut (as when its process is
killed) and, separately, the leader is stopped; the time until the standby leads is reported for each.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import structlog
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from migrations import run
from plant.site import Site, parse_site
from plant.wire import UplinkBatch, Value, now_us
from twin.alerts import AlertEngine
from twin.alerts.evaluator import AlertEvaluator
from twin.config import TwinSettings
from twin.db import make_engine
from twin.live import live_bus_for
from twin.store import TwinStore

TARGET = 0.5
PG_ADMIN = os.environ.get("FACTORY_TWIN_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SEC = 1_000_000
SETTINGS = TwinSettings(alert_tick_s=1.0, alert_sweep_s=600.0, alert_leader_retry_s=0.5)


def make_site(machines: int) -> Site:
    """``machines`` pumps under one area, each with a limit rule on temp and one on vib."""
    nodes = "\n".join(f"          - {{id: m{i}, kind: machine, type: pump}}" for i in range(machines))
    return parse_site(
        f"""
site: {{id: bench}}
asset_types:
  pump:
    properties:
      temp: {{unit: degC}}
      vib: {{unit: g}}
    alerts:
      - {{id: temp-high, kind: limit, property: temp, hi: 100, severity: high}}
      - {{id: vib-high, kind: limit, property: vib, hi: 1.0, severity: medium}}
nodes:
  - id: bench
    kind: site
    children:
      - id: hall
        kind: area
        children:
{nodes}
""",
        "<bench>",
    )


def make_batches(machines: int, n: int, start: int) -> list[UplinkBatch]:
    """``n`` batches with every machine's temp and vib; machine i runs hot in batches 10i..10i+4 (mod n)."""
    out = []
    for b in range(n):
        ts = start + b * SEC
        values = []
        for i in range(machines):
            hot = (b - 10 * i) % n < 5
            values.append(Value(node=f"m{i}", prop="temp", value=110.0 if hot else 60.0 + i % 7, ts=ts))
            values.append(Value(node=f"m{i}", prop="vib", value=0.3, ts=ts))
        out.append(UplinkBatch(gateway="bench", batch=f"b{b}", sent=ts, values=values))
    return out


def fresh_database() -> str:
    """A fresh PostgreSQL database at the current schema."""
    name = f"ft_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    run.upgrade(url)
    return url


def drop(url: str) -> None:
    """Drop a benchmark database."""
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    admin.dispose()


def alert_keys(engine: Engine) -> list[tuple[str, int]]:
    """Alerts written: key and activations."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT a.key, count(t.id) FROM alerts a JOIN alert_transitions t ON t.alert_id = a.id "
                "AND t.action IN ('raise', 'reactivate') GROUP BY a.key ORDER BY a.key"
            )
        ).all()
    return [(r[0], int(r[1])) for r in rows]


def baseline(url: str, site: Site, batches: list[UplinkBatch]) -> dict[str, Any]:
    """The engine on each batch's ApplyResult, in the storing thread."""
    engine = make_engine(url)
    store = TwinStore(engine, SETTINGS)
    store.sync_site(site)
    alerts = AlertEngine(site)
    spent, cpu, next_tick = 0.0, 0.0, time.monotonic() + SETTINGS.alert_tick_s
    try:
        for b in batches:
            result = store.apply(b)
            t, c = time.perf_counter(), time.thread_time()
            with Session(engine) as s, s.begin():
                alerts.process(s, result.changes, result.diagnoses)
                if time.monotonic() >= next_tick:  # the alert clock, as often as the leader's
                    alerts.tick(s)
                    next_tick = time.monotonic() + SETTINGS.alert_tick_s
            spent += time.perf_counter() - t
            cpu += time.thread_time() - c
        return {"seconds": spent, "cpu_s": cpu, "alerts": alert_keys(engine)}
    finally:
        engine.dispose()


def _cpu() -> float:
    """CPU seconds of this process so far (the leader's: the batches are stored by another process)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write(url: str, machines: int, n: int, start: int) -> None:
    """Store and announce the batches, as an ingest process does (run in a process of its own)."""
    engine = make_engine(url)
    store, bus = TwinStore(engine, SETTINGS), live_bus_for(engine)
    for b in make_batches(machines, n, start):
        bus.listener(b, store.apply(b))
    engine.dispose()


def leader(url: str, site: Site, machines: int, n: int, start: int, expected: int) -> dict[str, Any]:
    """Stored and announced by another process, judged by the leader here."""
    engine = make_engine(url)
    TwinStore(engine, SETTINGS).sync_site(site)
    evaluator = AlertEvaluator(engine, site, SETTINGS).start()
    lags: list[float] = []
    try:
        assert evaluator.leading
        cpu = _cpu()
        writer = subprocess.Popen([sys.executable, __file__, "--write", url, str(machines), str(n), str(start)])
        passes = evaluator.stats().passes
        while writer.poll() is None:
            stats = evaluator.stats()
            if stats.passes > passes:  # the lag of each new pass
                lags.append(stats.lag_s)
                passes = stats.passes
            time.sleep(0.02)
        assert writer.returncode == 0, "the writer process failed"
        deadline = time.monotonic() + 60
        while len(alert_keys(engine)) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # the last notifications
        stats = evaluator.stats()
        lags.sort()
        return {
            "seconds": stats.busy_s,
            "cpu_s": _cpu() - cpu,
            "passes": stats.passes,
            "alerts": alert_keys(engine),
            "lag_p50_s": lags[len(lags) // 2],
            "lag_max_s": lags[-1],
        }
    finally:
        evaluator.stop()
        engine.dispose()


def takeover(url: str, site: Site) -> dict[str, float]:
    """Seconds until the standby leads: after the leader's lock connection is cut, and after a graceful stop."""
    engines = [make_engine(url), make_engine(url)]
    evaluators = [AlertEvaluator(e, site, SETTINGS).start() for e in engines]
    out = {}
    try:
        first = next(e for e in evaluators if e.leading)
        second = next(e for e in evaluators if e is not first)
        with engines[0].connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                    "current_database() AND application_name = 'factory-twin leader alert-evaluator'"
                )
            )
            conn.commit()
        t = time.monotonic()
        while not (second.leading or (first.leading and first.stats().terms == 2)):
            time.sleep(0.01)
        out["takeover_after_cut_s"] = round(time.monotonic() - t, 3)
        now_leading = second if second.leading else first
        other = first if now_leading is second else second
        t = time.monotonic()
        now_leading.stop()
        while not other.leading:
            time.sleep(0.01)
        out["takeover_after_stop_s"] = round(time.monotonic() - t, 3)
    finally:
        for e in evaluators:
            e.stop()
        for eng in engines:
            eng.dispose()
    return out


def main() -> None:
    """Run the benchmark and print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer machines and batches, under a minute")
    parser.add_argument("--machines", type=int, default=None)
    parser.add_argument("--write", nargs=4, metavar=("URL", "MACHINES", "N", "START"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write:
        url, machines_s, n_s, start_s = args.write
        write(url, int(machines_s), int(n_s), int(start_s))
        return
    # logs go to stderr, warnings only: stdout carries the one JSON line
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    machines = args.machines or (100 if args.quick else 500)
    n = 40 if args.quick else 200
    site = make_site(machines)
    start = now_us() - n * SEC
    batches = make_batches(machines, n, start)
    urls = [fresh_database() for _ in range(3)]
    try:
        base = baseline(urls[0], site, batches)
        lead = leader(urls[1], site, machines, n, start, len(base["alerts"]))
        TwinStore(make_engine(urls[2]), SETTINGS).sync_site(site)
        times = takeover(urls[2], site)
    finally:
        for u in urls:
            drop(u)
    values = sum(len(b.values) for b in batches)
    ratio = base["cpu_s"] / lead["cpu_s"] if lead["cpu_s"] else 0.0
    same = base["alerts"] == lead["alerts"]
    out = {
        "name": "alert_leader",
        "ratio": round(ratio, 3),
        "target": TARGET,
        "ok": ratio >= TARGET and same,
        "values": values,
        "batches": n,
        "machines": machines,
        "alerts": len(base["alerts"]),
        "same_alerts": same,
        "baseline_values_per_cpu_s": round(values / base["cpu_s"]),
        "leader_values_per_cpu_s": round(values / lead["cpu_s"]) if lead["cpu_s"] else None,
        "baseline_values_per_busy_s": round(values / base["seconds"]),
        "leader_values_per_busy_s": round(values / lead["seconds"]) if lead["seconds"] else None,
        "leader_passes": lead["passes"],
        "leader_lag_p50_s": round(lead["lag_p50_s"], 4),
        "leader_lag_max_s": round(lead["lag_max_s"], 4),
        **times,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
