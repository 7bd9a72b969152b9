"""Scale-out and faults with the real engines: two workers on a shared subscription racing, PostgreSQL
connections cut under load, the broker restarted. Nothing acknowledged is lost, nothing is stored twice,
latest state never moves backwards, and the workers recover on their own."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import text

from plant.mqtt import BrokerUrl
from plant.wire import UplinkBatch, now_us
from tests.mqtt_peer import forget_sessions
from twin.config import TwinSettings
from twin.db import make_engine
from twin.ingest import Ingestor
from twin.store import TwinStore

from .helpers import (
    SEC,
    Sender,
    history_rows,
    latest_ts,
    make_batches,
    prepared_store,
    private_mosquitto,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def store(pg_url: str) -> Iterator[TwinStore]:
    with prepared_store(pg_url, TwinSettings()) as store:
        yield store


def _ingestor(store: TwinStore, host: str, port: int, root: str, cid: str) -> Ingestor:
    return Ingestor(store, BrokerUrl(host, port), client_id=cid, workers=2, share_group=f"g{cid}",
                    topic_root=root)


@contextmanager
def _two_workers(
    store: TwinStore, mqtt_broker: tuple[str, int], root: str
) -> Iterator[tuple[Ingestor, Sender]]:
    """Two ingest workers on a shared subscription and a gateway's sender, for the block; afterwards both
    stopped and their broker sessions forgotten."""
    host, port = mqtt_broker
    cid = f"ft-{uuid.uuid4().hex[:8]}"
    ing = _ingestor(store, host, port, root, cid).start()
    sender = Sender(host, port, root, "gw1")
    try:
        yield ing, sender
    finally:
        sender.close()
        ing.stop()
        forget_sessions(host, port, [f"{cid}-0", f"{cid}-1"])


@pytest.mark.mosquitto
def test_two_workers_race_latest_never_moves_backwards(
    store: TwinStore, pg_url: str, mqtt_broker: tuple[str, int], topic_prefix: str
) -> None:
    with _two_workers(store, mqtt_broker, topic_prefix) as (ing, sender):
        start = now_us() - 2 * 3600 * SEC
        batches = make_batches("gw1", 60, 50, start)
        random.Random(7).shuffle(batches)  # newer and older values reach the two workers in any order
        again = batches[::3]  # and a third is sent twice: the copy may go to the other worker
        for b in batches + again:
            sender.publish(b)
        sender.deliver(batches, timeout=60)
        deadline = time.monotonic() + 10
        while ing.stats().batches < len(batches) + len(again) and time.monotonic() < deadline:
            time.sleep(0.05)
    stats = ing.stats()
    assert stats.values == 3000
    assert stats.duplicates >= len(again) * 50
    assert history_rows(pg_url) == (3000, 3000)
    assert latest_ts(pg_url) == {"p1": start + 1499 * SEC, "p2": start + 1499 * SEC}


def _terminate_backends(url: str, rounds: int, stop: threading.Event) -> int:
    """Cut every connection to the test database now and then, as a PostgreSQL restart would."""
    admin = make_engine(url)
    killed = 0
    try:
        for _ in range(rounds):
            if stop.wait(0.4):
                break
            with admin.connect() as conn:
                killed += len(conn.execute(text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()")).all())
                conn.commit()
    finally:
        admin.dispose()
    return killed


@pytest.mark.mosquitto
def test_database_connections_cut_under_load(
    store: TwinStore, pg_url: str, mqtt_broker: tuple[str, int], topic_prefix: str
) -> None:
    stop = threading.Event()
    killed: list[int] = []
    cutter = threading.Thread(target=lambda: killed.append(_terminate_backends(pg_url, 5, stop)))
    with _two_workers(store, mqtt_broker, topic_prefix) as (_, sender):
        try:
            start = now_us() - 2 * 3600 * SEC
            batches = make_batches("gw1", 80, 100, start)
            cutter.start()
            sender.deliver(batches, timeout=60, resend_after=2.0, pace=0.02)
        finally:
            stop.set()
            cutter.join()
    assert killed[0] > 0
    assert history_rows(pg_url) == (8000, 8000)
    assert latest_ts(pg_url) == {"p1": start + 3999 * SEC, "p2": start + 3999 * SEC}


def test_broker_restarted_mid_stream(store: TwinStore, pg_url: str, topic_prefix: str) -> None:
    with private_mosquitto() as broker:
        cid = f"ft-{uuid.uuid4().hex[:8]}"
        ing = _ingestor(store, "127.0.0.1", broker.port, topic_prefix, cid).start()
        sender = Sender("127.0.0.1", broker.port, topic_prefix, "gw1")
        try:
            start = now_us() - 2 * 3600 * SEC
            batches: list[UplinkBatch] = make_batches("gw1", 60, 100, start)
            for b in batches[:30]:
                sender.publish(b)
            time.sleep(0.3)
            broker.stop()  # persistence on: sessions and queued messages are saved
            time.sleep(0.5)
            broker.start()
            for b in batches[30:]:
                sender.publish(b)
            sender.deliver(batches, timeout=60, resend_after=3.0)
            deadline = time.monotonic() + 10
            while ing.consuming() < ing.workers and time.monotonic() < deadline:
                time.sleep(0.05)
            assert ing.consuming() == ing.workers  # both reconnected and subscribed again by themselves
        finally:
            sender.close()
            ing.stop()
    assert history_rows(pg_url) == (6000, 6000)
    assert latest_ts(pg_url) == {"p1": start + 2999 * SEC, "p2": start + 2999 * SEC}


@pytest.mark.mosquitto
def test_a_worker_removed_for_good_leaves_its_share_to_the_others(
    store: TwinStore, pg_url: str, mqtt_broker: tuple[str, int], topic_prefix: str
) -> None:
    """Mosquitto hands shared-subscription messages in turn to offline members with a session: a worker
    scaled down must leave (TWIN_INGEST_LEAVE_ON_STOP), or half the traffic waits for agents to resend."""
    host, port = mqtt_broker
    a_id, b_id = f"fta-{uuid.uuid4().hex[:8]}", f"ftb-{uuid.uuid4().hex[:8]}"
    broker = BrokerUrl(host, port)
    group = f"g{a_id}"
    a = Ingestor(store, broker, client_id=a_id, share_group=group, topic_root=topic_prefix).start()
    b = Ingestor(store, broker, client_id=b_id, share_group=group, topic_root=topic_prefix).start()
    sender = Sender(host, port, topic_prefix, "gw1")
    try:
        b.stop(leave=True)  # scaled down for good
        start = now_us() - 2 * 3600 * SEC
        batches = make_batches("gw1", 20, 50, start)
        # resending only after 30 s: every batch must reach the remaining worker first time
        sender.deliver(batches, timeout=15, resend_after=30)
        assert a.stats().batches == 20
    finally:
        sender.close()
        a.stop()
        forget_sessions(host, port, [a_id, b_id])
    assert history_rows(pg_url) == (1000, 1000)
