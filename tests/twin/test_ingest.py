"""Ingest through the real Mosquitto: batch → store → Ack, duplicates, bad input, database down, restart.

Hostile uplinks (every kind of bad input at the wire) are in test_ingest_hostile.py."""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select, text

from plant.mqtt import BrokerUrl
from tests.mqtt_peer import forget_sessions
from twin.errors import BrokerError
from twin.ingest import Ingestor
from twin.store import ApplyResult, TwinStore
from twin.tables import DeadLetter

from .store_helpers import NOW, batch, history_count, make_store, prop, value
from .uplink_client import GW, UplinkClient

pytestmark = pytest.mark.mosquitto


@pytest.fixture
def store(sqlite_url: str) -> Iterator[TwinStore]:
    s = make_store(sqlite_url)
    yield s
    s.engine.dispose()


@pytest.fixture
def broker(mqtt_broker: tuple[str, int]) -> BrokerUrl:
    return BrokerUrl(*mqtt_broker)


def _ingestor(store: TwinStore, broker: BrokerUrl, root: str) -> Ingestor:
    return Ingestor(store, broker, client_id=f"{root}-ingest", topic_root=root)


@pytest.fixture
def ingest(store: TwinStore, broker: BrokerUrl, root: str) -> Iterator[Ingestor]:
    ing = _ingestor(store, broker, root).start()
    yield ing
    ing.stop()
    forget_sessions(broker.host, broker.port, [f"{root}-ingest"])


def test_batch_is_stored_then_acknowledged(ingest: Ingestor, uplink: UplinkClient, store: TwinStore) -> None:
    seen: list[ApplyResult] = []
    ingest.add_listener(lambda _b, result: seen.append(result))
    uplink.send(batch(value(v=1.0, ts=NOW), value("p2", "count", 3, ts=NOW), value("zz", ts=NOW), gateway=GW))
    ack = uplink.ack()
    assert (ack.gateway, ack.batch, ack.stored, ack.accepted, ack.duplicates) == (GW, "b1", True, 2, 0)
    assert [r.reason for r in ack.rejected] == ["unknown_node"]
    assert prop(store.engine, "p2", "count").value_num == 3
    assert len(seen) == 1
    assert {c.node for c in seen[0].changes} == {"p1", "p2"}
    stats = ingest.stats()
    assert (stats.batches, stats.values, stats.nodes_updated) == (1, 2, 2)
    assert stats.rejected == {"unknown_node": 1}


def test_duplicate_batch_stores_nothing_twice(ingest: Ingestor, uplink: UplinkClient, store: TwinStore) -> None:
    b = batch(value(v=1.0, ts=NOW), value(v=2.0, ts=NOW + 1), gateway=GW)
    uplink.send(b)
    assert uplink.ack().accepted == 2
    uplink.send(b)
    again = uplink.ack()
    assert (again.stored, again.accepted, again.duplicates) == (True, 0, 2)
    assert history_count(store.engine) == 2
    assert ingest.stats().duplicates == 2


def test_malformed_payloads_are_counted_and_the_next_batch_lands(
    ingest: Ingestor, uplink: UplinkClient, store: TwinStore
) -> None:
    uplink.send(b"not json at all")
    uplink.send(json.dumps({"gateway": GW, "values": []}).encode())  # no batch id
    uplink.send(b"\xff\xfe")
    uplink.send(batch(value(v=4.0, ts=NOW), name="good", gateway=GW))
    ack = uplink.ack()
    assert (ack.batch, ack.stored, ack.accepted) == ("good", True, 1)
    assert ingest.stats().undecodable == 3
    deadline = time.monotonic() + 10
    while ingest.stats().messages < 4 and time.monotonic() < deadline:  # dead letters written, then acknowledged
        time.sleep(0.02)
    assert ingest.stats().dead_letters == {"undecodable": 3}
    with store.engine.connect() as conn:
        rows = conn.execute(select(DeadLetter.reason, DeadLetter.gateway, DeadLetter.payload)).all()
    assert rows == [("undecodable", GW, b"not json at all"), ("undecodable", GW, b'{"gateway": "gw1", "values": []}'),
                    ("undecodable", GW, b"\xff\xfe")]
    with pytest.raises(queue.Empty):
        uplink.ack(timeout=0.3)  # nothing answered for the bad ones


def test_database_failure_is_answered_stored_false(ingest: Ingestor, uplink: UplinkClient, store: TwinStore) -> None:
    with store.engine.begin() as conn:
        conn.execute(text("DROP TABLE twin_history"))
    uplink.send(batch(value(v=1.0, ts=NOW), gateway=GW))
    ack = uplink.ack()
    assert (ack.stored, ack.accepted) == (False, 0)
    assert ack.error
    assert "could not store" in ack.error
    assert ingest.stats().failed == 1


def test_batches_sent_while_stopped_arrive_after_restart(
    store: TwinStore, broker: BrokerUrl, root: str, uplink: UplinkClient
) -> None:
    first = _ingestor(store, broker, root).start()
    first.stop()
    try:
        # kept for the ingest client by its persistent session
        uplink.send(batch(value(v=9.0, ts=NOW), name="while-down", gateway=GW))
        second = _ingestor(store, broker, root).start()
        try:
            ack = uplink.ack()
            assert (ack.batch, ack.stored, ack.accepted) == ("while-down", True, 1)
        finally:
            second.stop()
    finally:
        forget_sessions(broker.host, broker.port, [f"{root}-ingest"])
    assert prop(store.engine, "p1", "temp").value_num == 9.0


def test_unreachable_broker_is_a_clear_error(store: TwinStore, root: str) -> None:
    ing = Ingestor(store, BrokerUrl("127.0.0.1", 1), client_id=f"{root}-x", topic_root=root)
    with pytest.raises(BrokerError, match=r"127\.0\.0\.1:1"):
        ing.start(timeout=1.0)


def test_from_settings(store: TwinStore) -> None:
    from twin.config import TwinSettings
    from twin.errors import ConfigError

    with pytest.raises(ConfigError, match="TWIN_MQTT_URL"):
        Ingestor.from_settings(store, TwinSettings(mqtt_url=None))
    with pytest.raises(ConfigError, match="mqtt://"):
        Ingestor.from_settings(store, TwinSettings(mqtt_url="http://h"))
    ing = Ingestor.from_settings(store, TwinSettings(mqtt_url="mqtt://h:1884", ingest_workers=2))
    assert ing.broker == BrokerUrl("h", 1884)
    assert [w.topic for w in ing._workers] == ["$share/ingest/factory-twin/v1/+/uplink"] * 2


def test_each_worker_connects_with_the_whole_broker_url(store: TwinStore) -> None:
    """Login, TLS and CA bundle reach every worker; a client id in the URL is the base of the workers' ids."""
    from twin.config import TwinSettings

    url = "mqtts://u:p%40ss@broker:8884?ca_file=/etc/ca.pem&client_id=site-ingest"
    ing = Ingestor.from_settings(store, TwinSettings(mqtt_url=url, ingest_workers=2))
    assert ing.broker == BrokerUrl("broker", 8884, True, "u", "p@ss", "/etc/ca.pem", "site-ingest")
    got = [(o.client_id, o.host, o.port, o.tls, o.username, o.password, o.ca_file, o.protocol, o.persistent)
           for o in (w.client.options for w in ing._workers)]
    assert got == [(f"site-ingest-{n}", "broker", 8884, True, "u", "p@ss", "/etc/ca.pem", "3.1.1", True)
                   for n in range(2)]
