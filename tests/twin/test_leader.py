"""One alert evaluator per database: the advisory lock on PostgreSQL, the evaluator fed from the database.

Two evaluators on one database (as two platform processes) and a third party storing values (as an ingest
process does): one leads, every fault alerts once, the standby takes over when the leader stops or its lock's
connection is cut, and what was stored while nobody listened is caught up from the database.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
import structlog
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from plant.wire import Diagnosis, now_us
from tests.production.helpers import ALERT_SITE_YAML, alert_active, alert_counts, alert_site, wait_until
from tests.twin.store_helpers import batch, site, value
from twin.alerts.evaluator import AlertEvaluator
from twin.config import TwinSettings
from twin.db import make_engine
from twin.errors import LeadershipLost
from twin.leader import LeaderLock, lock_key
from twin.live import RESYNC, LiveBus, LiveEvent, ThreadReader, live_bus_for
from twin.store import TwinStore

FAST = TwinSettings(alert_tick_s=0.3, alert_sweep_s=30.0, alert_leader_retry_s=0.2)
KEY_P1_TEMP = "p1/temp-high/high"


def _engines(url: str) -> Iterator[list[Engine]]:
    from migrations import run

    run.upgrade(url)
    made = [make_engine(url) for _ in range(3)]
    TwinStore(made[2]).sync_site(alert_site())
    yield made
    asyncio.run(live_bus_for(made[0]).aclose())  # the writer's NOTIFY connection, opened by its first announce
    for e in made:
        e.dispose()


@pytest.fixture
def engines(db_url: str) -> Iterator[list[Engine]]:
    """Three engines on one migrated database with the alert test plant: two evaluators and a writer."""
    yield from _engines(db_url)


@pytest.fixture
def pg_engines(pg_url: str) -> Iterator[list[Engine]]:
    """The same on PostgreSQL only."""
    yield from _engines(pg_url)


class Writer:
    """Stores batches and announces them on the live bus, as an ingest process does after each batch."""

    def __init__(self, engine: Engine) -> None:
        self.store = TwinStore(engine, TwinSettings())
        self.bus = live_bus_for(engine)

    def put(self, node: str, prop: str, v: float, announce: bool = True) -> None:
        b = batch(value(node, prop, v, ts=now_us()), name=f"b-{now_us()}")
        result = self.store.apply(b)
        if announce:
            self.bus.listener(b, result)


def _evaluator(engine: Engine, settings: TwinSettings = FAST) -> AlertEvaluator:
    return AlertEvaluator(engine, alert_site(), settings).start()


def test_lock_keys_are_stable_and_distinct() -> None:
    assert lock_key("alert-evaluator") == lock_key("alert-evaluator")
    assert lock_key("alert-evaluator") != lock_key("something-else")
    assert -(2**63) <= lock_key("alert-evaluator") < 2**63


def test_on_sqlite_the_process_leads_and_one_lock_holder_in_it(sqlite_url: str) -> None:
    engine, again = make_engine(sqlite_url), make_engine(sqlite_url)
    a, b = LeaderLock(engine, "r"), LeaderLock(again, "r")
    try:
        assert a.acquire()  # no other process to ask
        assert not b.acquire()  # but one holder in the process
        with a.transaction() as session:
            assert session.execute(text("SELECT 1")).scalar() == 1
        with pytest.raises(LeadershipLost), b.transaction():
            pass
        a.release()
        assert not a.held
        assert b.acquire()
    finally:
        a.release()
        b.release()
        engine.dispose()
        again.dispose()


_HOLD = """
import sys, time
from twin.db import make_engine
from twin.leader import LeaderLock
lock = LeaderLock(make_engine(sys.argv[1]), "r")
print(lock.acquire(), flush=True)
time.sleep(60)
"""


def test_on_sqlite_a_second_process_stands_by_until_the_first_is_gone(sqlite_url: str) -> None:
    # Two platform processes on one SQLite file by mistake: one leads, or every alert is raised twice.
    other = subprocess.Popen([sys.executable, "-c", _HOLD, sqlite_url], stdout=subprocess.PIPE, text=True)
    engine = make_engine(sqlite_url)
    lock = LeaderLock(engine, "r")
    try:
        assert other.stdout is not None
        assert other.stdout.readline().strip() == "True"
        with structlog.testing.capture_logs() as logs:
            assert not lock.acquire()
            assert not lock.acquire()  # a standby retries every few seconds: said once
        assert [e["event"] for e in logs] == ["leader_lock_held_elsewhere"]
        assert not lock.held
        other.kill()  # the OS frees a dead holder's file lock
        other.wait(10)
        wait_until(lock.acquire, 5, "this process leads once the other is gone")
    finally:
        other.kill()
        other.wait(10)
        if other.stdout is not None:
            other.stdout.close()
        lock.release()
        engine.dispose()


@pytest.mark.postgres
def test_advisory_lock_one_holder_released_on_stop_and_freed_when_its_connection_dies(pg_url: str) -> None:
    e1, e2 = make_engine(pg_url), make_engine(pg_url)
    a, b, other = LeaderLock(e1, "r"), LeaderLock(e2, "r"), LeaderLock(e2, "another-role")
    try:
        assert a.acquire()
        assert not b.acquire()
        assert a.acquire()  # already held: still the leader
        with a.transaction() as session:  # a vanished holder is noticed in seconds, not TCP's minutes
            assert session.execute(text("SHOW tcp_keepalives_idle")).scalar() == "5"
            assert session.execute(text("SHOW tcp_user_timeout")).scalar() == "15000"
        assert other.acquire()  # one lock per role
        a.release()  # graceful stop
        assert not a.held
        assert b.acquire()
        assert not a.acquire()
        # the holder's connection dies (process killed, host gone): the server frees the lock
        with e1.connect() as conn:
            killed = conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name = 'factory-twin leader r'"
                )
            ).scalar()
            conn.commit()
        assert killed == 1
        wait_until(a.acquire, 5, "the standby takes the lock of a dead holder")
        # and the old holder cannot write any more: its writes went through the dead connection
        with pytest.raises(OperationalError), b.transaction() as session:
            session.execute(text("SELECT 1"))
        assert not b.held
        with pytest.raises(LeadershipLost), b.transaction():
            pass
        assert not b.acquire()
    finally:
        for lock in (a, b, other):
            lock.release()
        e1.dispose()
        e2.dispose()


def test_one_leader_alerts_once_per_fault_and_a_standby_takes_over(engines: list[Engine]) -> None:
    writer = Writer(engines[2])
    first, second = _evaluator(engines[0]), _evaluator(engines[1])
    evaluators = [first, second]
    url = engines[0].url.render_as_string(hide_password=False)
    try:
        assert [e.leading for e in evaluators].count(True) == 1
        leader = first if first.leading else second
        standby = second if leader is first else first
        writer.put("p1", "temp", 50.0)
        writer.put("p1", "temp", 110.0)  # a fault stored by neither evaluator's process
        wait_until(lambda: KEY_P1_TEMP in alert_counts(url), 10, "the fault on p1 alerts")
        leader.stop()  # releases the lock
        assert not leader.leading
        wait_until(lambda: standby.leading, 5, "the standby takes over")
        writer.put("p2", "temp", 115.0)
        wait_until(lambda: "p2/temp-high/high" in alert_counts(url), 10, "a fault after the takeover alerts")
        threading.Event().wait(1.0)  # time for a second evaluation, were there one
        assert alert_counts(url) == {KEY_P1_TEMP: (1, 1), "p2/temp-high/high": (1, 1)}
        assert leader.stats().terms + standby.stats().terms == 2
    finally:
        for e in evaluators:
            e.stop()


def test_values_stored_while_nobody_listened_are_caught_up(engines: list[Engine]) -> None:
    url = engines[0].url.render_as_string(hide_password=False)
    writer = Writer(engines[2])
    writer.put("p1", "count", 9, announce=False)  # stored before any evaluator ran
    evaluator = _evaluator(engines[0], TwinSettings(alert_tick_s=0.3, alert_sweep_s=1.0, alert_leader_retry_s=0.2))
    try:
        assert evaluator.leading
        assert alert_counts(url) == {"p1/count-high/high": (1, 1)}  # caught up before start() returned
        writer.put("p2", "count", 8, announce=False)  # a notification its publisher failed to send
        wait_until(lambda: "p2/count-high/high" in alert_counts(url), 5, "the sweep finds the unannounced fault")
        assert evaluator.stats().lag_s > 0.0  # stored, then found by the sweep a little later
        assert evaluator.stats().batches == 2  # both stored batches judged, from the feed, once each
    finally:
        evaluator.stop()
    # a restart takes up the open alerts: the same conditions are not raised again
    again = _evaluator(engines[1])
    try:
        writer.put("p1", "count", 10)
        threading.Event().wait(1.0)
        assert alert_counts(url) == {"p1/count-high/high": (1, 1), "p2/count-high/high": (1, 1)}
    finally:
        again.stop()


def test_a_site_loaded_while_values_keep_coming_has_its_rules_taken_up(engines: list[Engine]) -> None:
    """Values heard more often than the sweep must not postpone the leader's look at the stored sites: a site
    loaded while the first one keeps sending has its rules judged within a sweep or two."""
    url = engines[0].url.render_as_string(hide_password=False)
    annex = site(ALERT_SITE_YAML.replace("id: plant", "id: annex").replace("id: hall", "id: annex-hall")
                 .replace("id: p1", "id: q1").replace("id: p2", "id: q2"))
    writer = Writer(engines[2])
    stop, loaded = threading.Event(), threading.Event()

    def keep_sending() -> None:  # one thread stores everything: the writer's catalog is not shared
        sent = 0
        while not stop.is_set():
            writer.put("p1", "temp", 50.0)  # every 0.1 s, five times a sweep
            sent += 1
            if sent == 10:
                writer.store.sync_site(annex)
                loaded.set()
            if loaded.is_set():
                writer.put("q1", "temp", 110.0)
            stop.wait(0.1)

    evaluator = _evaluator(engines[0], TwinSettings(alert_tick_s=0.3, alert_sweep_s=0.5, alert_leader_retry_s=0.2))
    sender = threading.Thread(target=keep_sending, name="sender")
    sender.start()
    try:
        assert loaded.wait(10)
        wait_until(lambda: "q1/temp-high/high" in alert_counts(url), 5, "the loaded site's limit alert")
    finally:
        stop.set()
        sender.join(10)
        evaluator.stop()


def test_values_and_diagnoses_overtaken_before_the_leader_reads_are_still_judged(engines: list[Engine]) -> None:
    url = engines[0].url.render_as_string(hide_password=False)
    writer = Writer(engines[2])
    evaluator = _evaluator(engines[0])
    try:
        # a one-batch excursion and a fault diagnosis, both overtaken before the leader hears of them
        t = now_us()
        for name, v, label in (("x1", 120.0, "bearing"), ("x2", 40.0, "none")):
            diagnosis = Diagnosis(
                node="p1", task="faults", ts=t, model="m", version="1", confidence=0.9, label=label, probability=0.9
            )
            writer.store.apply(batch(value("p1", "temp", v, ts=t), name=name, diagnoses=[diagnosis]))
            t += 1_000_000
        writer.bus.publish({"p1": ["temp", "diag.faults.label"]})  # one late hint for both batches
        wait_until(lambda: len(alert_counts(url)) == 2, 10, "the overtaken excursion and fault alert")
        wait_until(lambda: not any(alert_active(url).values()), 10, "and return")
        assert alert_counts(url) == {KEY_P1_TEMP: (1, 1), "p1/pump-fault": (1, 1)}
    finally:
        evaluator.stop()


def test_a_leader_whose_lock_connection_is_cut_steps_down_and_leadership_moves(pg_engines: list[Engine]) -> None:
    engines = pg_engines
    url = engines[0].url.render_as_string(hide_password=False)
    writer = Writer(engines[2])
    first, second = _evaluator(engines[0]), _evaluator(engines[1])
    try:
        assert first.leading != second.leading
        with engines[2].connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name = 'factory-twin leader alert-evaluator'"
                )
            )
            conn.commit()
        # the old leader notices at its next write (the clock ticks every 0.3 s); either may lead after
        wait_until(
            lambda: first.stats().terms + second.stats().terms == 2 and first.leading != second.leading,
            10,
            "one leader again, in a new term",
        )
        writer.put("p1", "temp", 111.0)
        wait_until(lambda: KEY_P1_TEMP in alert_counts(url), 10, "a fault after the cut alerts")
        threading.Event().wait(1.0)
        assert alert_counts(url) == {KEY_P1_TEMP: (1, 1)}
    finally:
        first.stop()
        second.stop()


def test_thread_readers_hear_the_in_process_bus_and_resync_when_overrun() -> None:
    bus = LiveBus()
    reader = bus.reader()
    small = bus.reader()
    assert isinstance(small, ThreadReader)
    small.maxsize = 1
    bus.publish({"p1": ["temp"], "p2": ["count"]})
    assert reader.wait(1) == [LiveEvent("p1", ("temp",)), LiveEvent("p2", ("count",))]
    assert small.wait(1) == [RESYNC]  # two events for room for one: re-read everything
    assert reader.wait(0.05) == []
    reader.close()
    small.close()
    bus.publish({"p1": ["temp"]})
    assert reader.wait(0.05) == []
    asyncio.run(bus.aclose())


@pytest.mark.postgres
def test_notify_reader_hears_other_processes_and_resyncs_after_a_lost_connection(pg_url: str) -> None:
    engine = make_engine(pg_url)
    bus = live_bus_for(engine)
    reader = bus.reader()
    try:
        bus.publish({"p1": ["temp"]})
        assert reader.wait(5) == [LiveEvent("p1", ("temp",))]
        with engine.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
                )
            )
            conn.commit()
        for _ in range(20):
            if RESYNC in reader.wait(0.5):
                break
        else:
            raise AssertionError("no RESYNC after the LISTEN connection came back")
        bus.publish({"p2": ["count"]})
        assert reader.wait(5) == [LiveEvent("p2", ("count",))]
    finally:
        reader.close()
        asyncio.run(bus.aclose())
        engine.dispose()


CLOCK_SITE = """
site: {id: s}
asset_types:
  pump:
    properties:
      temp: {unit: degC}
      mode: {dtype: string}
    alerts:
      - {id: mode-stale, kind: stale, property: mode, after_s: 10, grace_s: 30}
      - {id: temp-rate, kind: rate, property: temp, max_rate: 1.0, window_s: 10}
nodes:
  - id: s
    kind: site
    children:
      - id: hall
        kind: area
        children:
          - {id: p1, kind: machine, type: pump}
"""


def test_a_new_leader_keeps_active_stale_and_rate_alerts_until_the_data_says_otherwise(sqlite_url: str) -> None:
    from sqlalchemy.orm import Session

    from plant.site import parse_site
    from tests.production.helpers import SEC
    from twin.alerts import AlertEngine, PropertyChange
    from twin.tables import Base

    t0, plant = 1_790_000_000 * SEC, parse_site(CLOCK_SITE, "<clock>")
    db = make_engine(sqlite_url)
    Base.metadata.create_all(db)
    url = db.url.render_as_string(hide_password=False)
    first = AlertEngine(plant, started=t0)
    with Session(db) as s, s.begin():
        first.process(
            s, [PropertyChange("p1", "temp", 20.0, t0 + SEC), PropertyChange("p1", "temp", 40.0, t0 + 2 * SEC)]
        )
        first.tick(s, t0 + 41 * SEC)  # mode never came: stale after the 30 s grace
    assert alert_counts(url) == {"p1/temp-rate": (1, 1), "p1/mode-stale": (1, 1)}
    # the leader dies; its successor starts later, takes up the open alerts and reads the latest temp only
    second = AlertEngine(plant, started=t0 + 50 * SEC)
    with Session(db) as s, s.begin():
        second.load(s)
        second.process(s, [PropertyChange("p1", "temp", 41.0, t0 + 51 * SEC)])  # one value: no rate yet
        second.tick(s, t0 + 52 * SEC)  # within the grace of its own start, but the data was already stale
    assert alert_counts(url) == {"p1/temp-rate": (1, 1), "p1/mode-stale": (1, 1)}
    assert alert_active(url) == {"p1/temp-rate": True, "p1/mode-stale": True}
    with Session(db) as s, s.begin():  # and the data still decides: a good mode, a calm temperature
        second.process(s, [PropertyChange("p1", "mode", "auto", t0 + 53 * SEC)])
        second.process(s, [PropertyChange("p1", "temp", 41.5, t0 + 60 * SEC)])
    assert alert_active(url) == {"p1/temp-rate": False, "p1/mode-stale": False}
    db.dispose()
