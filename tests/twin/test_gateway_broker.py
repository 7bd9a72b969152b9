"""A rogue gateway with its own valid login cannot write another gateway's assets, on either broker.

Two gateways own one pump each (``gateway:`` in the site file). gw-b, logged in with its own credential,
forges a batch on gw-a's uplink topic (the broker drops it: its ACL) and sends gw-a's pump values on its own
uplink (the platform refuses them: ``not_owner``). Run on a Mosquitto of this test's own, configured by the
files `factory-twin gateways files` writes, and on the embedded broker.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# paho on purpose: a foreign client's view of the broker's refusals (CONNACK, SUBACK codes, dropped publishes)
import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import select
from sqlalchemy.orm import Session

from factory_twin.cli import cli
from migrations import run as migrations
from plant.mqtt import BrokerUrl
from plant.wire import TOPIC_ROOT, Ack, UplinkBatch, ack_topic, decode_ack, uplink_topic
from twin import gateways
from twin.broker import BrokerAccess, EmbeddedBroker, free_port
from twin.db import make_engine
from twin.gateways import active_credentials
from twin.ingest import Ingestor
from twin.store import TwinStore
from twin.tables import HistoryRow, TwinProperty
from twin.topic_access import TopicRules

from .store_helpers import NOW, SITE_YAML, batch, site, value

# the test plant, each pump owned by one gateway
OWNED_SITE = SITE_YAML.replace("type: pump, attributes", "type: pump, gateway: gw-a, attributes").replace(
    "{id: p2, kind: machine, type: pump}", "{id: p2, kind: machine, type: pump, gateway: gw-b}"
)
FORGED = 99.0


@dataclass
class Plant:
    """The platform's database with two gateways, and their credentials."""

    url: str
    store: TwinStore
    credentials: dict[str, str]


@pytest.fixture
def plant(tmp_path: Path) -> Iterator[Plant]:
    url = f"sqlite:///{tmp_path / 'twin.db'}"
    migrations.upgrade(url)
    engine = make_engine(url)
    store = TwinStore(engine)
    store.sync_site(site(OWNED_SITE))
    with Session(engine) as session:
        creds = {gw: gateways.add_gateway(session, gw) for gw in ("gw-a", "gw-b")}
    yield Plant(url, store, creds)
    engine.dispose()


@dataclass
class Broker:
    host: str
    port: int
    platform: tuple[str, str]


def _mosquitto(plant: Plant, tmp_path: Path) -> Iterator[Broker]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        pytest.skip("mosquitto is not installed")
    auth = tmp_path / "auth"
    env = {"MQTT_PLATFORM_PASSWORD": "platform-password-for-test"}
    result = CliRunner().invoke(cli, ["gateways", "files", "--out", str(auth), "--database-url", plant.url], env=env)
    assert result.exit_code == 0, result.output
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {auth / 'passwd'}\n"
        f"acl_file {auth / 'acl'}\npersistence false\n"
        + ("user root\n" if os.geteuid() == 0 else "")  # else it drops to a user that cannot read tmp_path
    )
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.05)
        yield Broker("127.0.0.1", port, ("platform", env["MQTT_PLATFORM_PASSWORD"]))
    finally:
        proc.terminate()
        proc.wait(10)


def _embedded(plant: Plant) -> Iterator[Broker]:
    engine = plant.store.engine
    access = BrokerAccess(TopicRules(TOPIC_ROOT), lambda: active_credentials(engine), refresh_s=0.0)
    with EmbeddedBroker(port=0, access=access) as broker:
        yield Broker(broker.host, broker.port, (TopicRules(TOPIC_ROOT).platform_user, access.platform_password))


@pytest.fixture(params=["mosquitto", "embedded"])
def broker(request: pytest.FixtureRequest, plant: Plant, tmp_path: Path) -> Iterator[Broker]:
    yield from _mosquitto(plant, tmp_path) if request.param == "mosquitto" else _embedded(plant)


class Gateway:
    """An MQTT client logged in as a gateway: publishes, collects what it receives."""

    def __init__(self, broker: Broker, user: str | None, password: str | None, listen: str | None = None) -> None:
        self.received: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connected: queue.Queue[bool] = queue.Queue()
        self.subscribed: queue.Queue[list[int]] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{user}-{os.urandom(3).hex()}")
        if user is not None:
            self.client.username_pw_set(user, password)
        self.client.on_connect = lambda _c, _u, _f, rc, _p: self.connected.put(not rc.is_failure)
        self.client.on_message = lambda _c, _u, m: self.received.put((m.topic, m.payload))
        self.client.on_subscribe = lambda _c, _u, _m, codes, _p: self.subscribed.put([c.value for c in codes])
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.ok = self.connected.get(timeout=5)
        if self.ok and listen:
            self.client.subscribe(listen, qos=1)
            self.subscribed.get(timeout=5)

    def publish(self, topic: str, b: UplinkBatch) -> None:
        info = self.client.publish(topic, b.model_dump_json(), qos=1)
        with contextlib.suppress(RuntimeError, ValueError):
            info.wait_for_publish(3)

    def ack(self, timeout: float = 10.0) -> Ack:
        return decode_ack(self.received.get(timeout=timeout)[1])

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _history(plant: Plant, node: str) -> list[float]:
    with Session(plant.store.engine) as session:
        rows = session.execute(
            select(HistoryRow.value_num).join(TwinProperty, TwinProperty.id == HistoryRow.property_id)
            .where(TwinProperty.node_id == node)
        ).scalars()
        return sorted(v for v in rows if v is not None)


@pytest.mark.slow
def test_forged_batches_of_another_gateway_are_not_stored(plant: Plant, broker: Broker) -> None:
    user, password = broker.platform
    ingest = Ingestor(plant.store, BrokerUrl(broker.host, broker.port, username=user, password=password),
                      client_id=f"ingest-{os.urandom(3).hex()}").start()
    a = Gateway(broker, "gw-a", plant.credentials["gw-a"], listen=ack_topic("gw-a"))
    b = Gateway(broker, "gw-b", plant.credentials["gw-b"], listen=ack_topic("gw-b"))
    spy = Gateway(broker, "gw-b", plant.credentials["gw-b"])
    try:
        assert a.ok
        assert b.ok
        # gw-b may not even listen to gw-a's acks (Mosquitto grants the subscription and delivers nothing)
        spy.client.subscribe(ack_topic("gw-a"), qos=1)
        spy.subscribed.get(timeout=5)
        # 1. forged on gw-a's uplink topic with gw-b's login: the broker drops it
        b.publish(uplink_topic("gw-a"), batch(value("p1", v=FORGED, ts=NOW), name="forged-1", gateway="gw-a"))
        # 2. gw-a's pump sent on gw-b's own uplink: the platform refuses it as not gw-b's, keeps gw-b's own
        b.publish(uplink_topic("gw-b"), batch(value("p1", v=FORGED, ts=NOW + 1), value("p2", v=7.0, ts=NOW),
                                              name="forged-2", gateway="gw-b"))
        refused = b.ack()
        assert (refused.batch, refused.stored, refused.accepted) == ("forged-2", True, 1)
        assert [(r.index, r.reason) for r in refused.rejected] == [(0, "not_owner")]
        # gw-a's own values keep arriving and are stored
        a.publish(uplink_topic("gw-a"), batch(value("p1", v=20.0, ts=NOW + 2), name="real", gateway="gw-a"))
        assert a.ack().batch == "real"  # never "forged-1": that batch reached nobody
        time.sleep(0.5)
        assert _history(plant, "p1") == [20.0]
        assert _history(plant, "p2") == [7.0]
        assert spy.received.empty()  # gw-a's ack of "real" went to gw-a alone
        assert ingest.stats().rejected == {"not_owner": 1}
    finally:
        for c in (a, b, spy):
            c.close()
        ingest.stop()


def test_unknown_logins_and_anonymous_clients_get_nothing(plant: Plant, broker: Broker) -> None:
    assert not Gateway(broker, "gw-a", "wrong-password").ok
    assert not Gateway(broker, "nobody", plant.credentials["gw-a"]).ok
    assert not Gateway(broker, "platform", "guess").ok
    anonymous = Gateway(broker, None, None)
    if anonymous.ok:  # the embedded broker admits anonymous clients, to the plant's topics only
        anonymous.client.subscribe(f"{TOPIC_ROOT}/#", qos=1)
        assert anonymous.subscribed.get(timeout=5) == [0x80]
        anonymous.client.subscribe("plant/#", qos=1)
        assert anonymous.subscribed.get(timeout=5) == [1]
        anonymous.close()


def test_a_revoked_gateway_is_refused_by_the_embedded_broker(plant: Plant) -> None:
    for embedded in _embedded(plant):
        assert Gateway(embedded, "gw-a", plant.credentials["gw-a"]).ok
        with Session(plant.store.engine) as session:
            gateways.revoke_gateway(session, "gw-a")
        assert not Gateway(embedded, "gw-a", plant.credentials["gw-a"]).ok
