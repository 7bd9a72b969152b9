"""Every stored value judged exactly once, with four ingest worker processes on one PostgreSQL committing out of
order, a worker and the alert leader killed (SIGKILL) and restarted.

The test makes commits late through the database itself: a trigger it installs on ``twin_history`` sleeps in
the transaction of every batch holding a marker value, so batches stored after it commit before it. Half the
batches hold one excursion of p1.temp above its limit (100) followed by a normal value; every excursion must
raise its alert once (a raise or a reactivation), no more, and the feed must end empty. A worker killed in the
middle sends its batches again when restarted, as a broker redelivers what was not acknowledged.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from plant.wire import UplinkBatch, Value, now_us
from twin.db import make_engine

from .helpers import ROOT, SEC, alert_counts, prepare, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

WORKERS = 4
BATCHES = 64
PER = 10
MARK = 42.5  # p1.temp value whose batch commits late
SLOW_S = 0.8
KEY = "p1/temp-high/high"

SLOW_TRIGGER = f"""
CREATE FUNCTION test_commit_late() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.value_num = {MARK} THEN PERFORM pg_sleep({SLOW_S}); END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER test_commit_late BEFORE INSERT ON twin_history FOR EACH ROW EXECUTE FUNCTION test_commit_late();
"""

WORKER = """
import sys, time
from tests.production.test_exactly_once import batches
from twin.config import TwinSettings
from twin.db import make_engine
from twin.live import live_bus_for
from twin.store import TwinStore
url, worker, start = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
engine = make_engine(url)
store, bus = TwinStore(engine, TwinSettings()), live_bus_for(engine)
for k, b in enumerate(batches(start)):
    if k % {workers} == worker:
        bus.listener(b, store.apply(b))
        print("stored", k, flush=True)
        time.sleep(0.05)
print("done", flush=True)
""".replace("{workers}", str(WORKERS))

LEADER = """
import sys, time
from tests.production.helpers import alert_site
from twin.alerts.evaluator import AlertEvaluator
from twin.config import TwinSettings
from twin.db import make_engine
settings = TwinSettings(alert_tick_s=0.5, alert_sweep_s=2.0, alert_leader_retry_s=0.2)
AlertEvaluator(make_engine(sys.argv[1]), alert_site(), settings).start()
print("evaluating", flush=True)
time.sleep(3600)
"""


def batches(start: int) -> list[UplinkBatch]:
    """``BATCHES`` batches of p1.temp, 1 ms apart: every third holds the late-commit marker, every even one an
    excursion (150) followed by a normal value; each ends normal."""
    out = []
    for k in range(BATCHES):
        vals = [50.0] * PER
        if k % 3 == 0:
            vals[1] = MARK
        if k % 2 == 0:
            vals[5] = 150.0
        values = [
            Value(node="p1", prop="temp", value=v, ts=start + (k * PER + i) * 1000) for i, v in enumerate(vals)
        ]
        out.append(UplinkBatch(gateway="gw1", batch=f"x{k}", sent=start, values=values))
    return out


def _spawn(code: str, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TWIN_LOG_JSON": "true"}
    with log.open("ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def _kill(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
    p.wait(10)


def _scalar(url: str, sql: str) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(sql)).scalar() or 0)
    finally:
        engine.dispose()


def _printed(log: Path, needle: str) -> bool:
    return log.exists() and needle in log.read_text(errors="replace")


def test_out_of_order_commits_and_kills_judge_every_value_once(pg_url: str, tmp_path: Path) -> None:
    prepare(pg_url)
    engine = make_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text(SLOW_TRIGGER))
    engine.dispose()
    start = now_us() - 600 * SEC
    logs = [tmp_path / f"worker{w}.log" for w in range(WORKERS)]
    leader_log = tmp_path / "leader.log"
    leader = _spawn(LEADER, [pg_url], leader_log)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        wait_until(lambda: _printed(leader_log, "evaluating"), 60, "the leader started")
        workers = [_spawn(WORKER, [pg_url, str(w), str(start)], logs[w]) for w in range(WORKERS)]
        wait_until(lambda: _printed(logs[0], "stored 4"), 60, "worker 0 stored a few batches")
        _kill(workers[0])  # mid-run, maybe mid-transaction: restarted, it sends everything again
        workers[0] = _spawn(WORKER, [pg_url, "0", str(start)], logs[0])
        wait_until(lambda: _printed(logs[1], "stored 13"), 60, "worker 1 stored more")
        _kill(leader)  # the leader killed while batches are being stored and judged
        time.sleep(0.5)
        leader = _spawn(LEADER, [pg_url], leader_log)
        for w, p in enumerate(workers):
            assert p.wait(120) == 0, logs[w].read_text()
        wait_until(lambda: _scalar(pg_url, "SELECT count(*) FROM alert_feed") == 0, 60, "the feed drained")
        time.sleep(1.0)  # a pass that would judge something twice has had time to do so
    finally:
        for p in [*workers, leader]:
            _kill(p)
    stored = _scalar(pg_url, "SELECT count(*) FROM twin_history h JOIN twin_properties p ON p.id = h.property_id "
                             "WHERE p.node_id = 'p1' AND p.name = 'temp'")
    assert stored == BATCHES * PER
    excursions = BATCHES // 2
    assert alert_counts(pg_url)[KEY][1] == excursions  # each raised once: none missed, none judged twice
    assert _scalar(pg_url, "SELECT count(*) FROM alerts WHERE key = 'p1/temp-high/high' AND active") == 0
