"""MQTT side of the simulator against the machine's Mosquitto: topics, payload shape, QoS 1, timestamps."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from factory_twin.simulator import examples
from factory_twin.simulator.datasets import CNC_MILL
from factory_twin.simulator.errors import EndpointError, ScenarioError
from factory_twin.simulator.faults import parse_fault
from factory_twin.simulator.mqtt_publisher import MqttPublisher, parse_broker_url
from factory_twin.simulator.run import SimulatorConfig, SimulatorStats, run_simulator
from plant.site import Site, parse_site
from tests.edge.connectors.test_mqtt import cuttable_proxy
from tests.mqtt_peer import MqttPeer

pytestmark = pytest.mark.mosquitto

SPEED_BINDING = '              speed: {source: cell-opcua, node_id: "ns=2;s=pump-1.speed"}\n'


def _mqtt_site() -> Site:
    """The example plant without the pump's speed setpoint, the one thing of mill-1 and pump-1 served over
    OPC-UA: these tests start no OPC-UA server (tests/simulator/test_setpoints.py covers the setpoint)."""
    text = examples.example_site_path().read_text(encoding="utf-8")
    assert SPEED_BINDING in text, "the example plant's pump speed binding moved: update SPEED_BINDING"
    return parse_site(text.replace(SPEED_BINDING, ""))


SITE = _mqtt_site()
MILL = "plant/machining/line-1/mill-1/telemetry"
PUMP = "plant/utilities/pump-1/sensors"
MILL_KEYS = {"type", "air_temp_k", "process_temp_k", "speed_rpm", "torque_nm", "tool_wear_min", "ts"}
PUMP_KEYS = {"vib", "motor", "pressure_bar", "fluid_temperature", "flow_l_min", "ts"}

Received = list[tuple[str, dict[str, Any], int]]


@contextmanager
def subscriber(host: str, port: int, prefix: str) -> Iterator[MqttPeer]:
    """A plain client subscribed to everything under ``prefix``, at QoS 1."""
    with MqttPeer(host, port, [f"{prefix}/#"]) as peer:
        yield peer


def drain(peer: MqttPeer, expected: int, timeout_s: float = 5.0) -> Received:
    return [(m.topic, json.loads(m.payload), m.qos) for m in peer.drain(expected, timeout_s)]


def mqtt_config(broker: tuple[str, int], prefix: str, **kw: Any) -> SimulatorConfig:
    kw.setdefault("machines", frozenset({"mill-1", "pump-1"}))
    return SimulatorConfig(
        site=SITE,
        data_dir=examples.data_dir(),
        mqtt_url=f"mqtt://{broker[0]}:{broker[1]}",
        topic_prefix=prefix,
        speed=20.0,
        **kw,
    )


def run(config: SimulatorConfig, seconds: float) -> SimulatorStats:
    return asyncio.run(run_simulator(config, seconds))


def test_payload_shape_topics_and_qos(mqtt_broker: tuple[str, int], topic_prefix: str) -> None:
    with subscriber(*mqtt_broker, topic_prefix) as got:
        before_ms = time.time_ns() // 1_000_000
        stats = run(mqtt_config(mqtt_broker, topic_prefix), 0.2)  # ticks at 0, 50, 100, 150 ms
        after_ms = time.time_ns() // 1_000_000
        messages = drain(got, 8)
    assert stats.ticks == 4
    assert stats.mqtt_messages == stats.mqtt_acked == 8
    assert len(messages) == 8
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for topic, payload, qos in messages:
        assert qos == 1
        by_topic.setdefault(topic, []).append(payload)
    assert set(by_topic) == {f"{topic_prefix}/{MILL}", f"{topic_prefix}/{PUMP}"}

    mills = by_topic[f"{topic_prefix}/{MILL}"]
    assert all(set(m) == MILL_KEYS for m in mills)
    assert mills[0]["type"] in {"L", "M", "H"}
    first_rows = CNC_MILL.load(examples.data_dir())[:2]  # the slice's first rows, in order
    assert [m["tool_wear_min"] for m in mills[:2]] == [float(r["Tool wear [min]"]) for r in first_rows]

    pumps = by_topic[f"{topic_prefix}/{PUMP}"]
    assert all(set(p) == PUMP_KEYS for p in pumps)
    assert set(pumps[0]["vib"]) == {"acc1_rms", "acc2_rms"}
    assert set(pumps[0]["motor"]) == {"current", "voltage", "temperature"}
    assert 0 < pumps[0]["pressure_bar"] < 1  # SKAB's bar, unconverted

    stamps = [m["ts"] for m in mills + pumps]
    assert all(isinstance(ts, int) for ts in stamps)
    assert all(before_ms - 1000 <= ts <= after_ms + 1000 for ts in stamps)  # epoch milliseconds, now
    assert [m["ts"] for m in mills] == sorted(m["ts"] for m in mills)


def test_faults_and_clock_skew(mqtt_broker: tuple[str, int], topic_prefix: str) -> None:
    config = mqtt_config(
        mqtt_broker,
        topic_prefix,
        faults=(parse_fault("mill-1.torque:high"), parse_fault("pump-1.current:stale")),
        clock_skew_s={"plant-mqtt": -3600.0},
    )
    with subscriber(*mqtt_broker, topic_prefix) as got:
        now_ms = time.time_ns() // 1_000_000
        run(config, 0.1)
        messages = drain(got, 4)
    mills = [p for t, p, _ in messages if t.endswith(MILL)]
    pumps = [p for t, p, _ in messages if t.endswith(PUMP)]
    assert [m["torque_nm"] for m in mills] == [120.0, 120.0]  # range 0..80: high + half the span
    assert all("current" not in p["motor"] for p in pumps)
    assert all("voltage" in p["motor"] for p in pumps)
    for payload in mills + pumps:
        assert abs(payload["ts"] - (now_ms - 3_600_000)) < 5_000


def test_bad_clock_stamps_year_2000(mqtt_broker: tuple[str, int], topic_prefix: str) -> None:
    config = mqtt_config(
        mqtt_broker, topic_prefix, bad_clock=frozenset({"*"}), machines=frozenset({"mill-1"})
    )
    with subscriber(*mqtt_broker, topic_prefix) as got:
        run(config, 0.05)
        ((_, payload, _),) = drain(got, 1)
    assert 946_684_800_000 <= payload["ts"] < 946_684_800_000 + 60_000  # 2000-01-01, in ms


def test_publisher_prefix_and_counts(mqtt_broker: tuple[str, int], topic_prefix: str) -> None:
    async def scenario() -> MqttPublisher:
        async with MqttPublisher(
            f"mqtt://{mqtt_broker[0]}:{mqtt_broker[1]}", topic_prefix=topic_prefix
        ) as pub:
            assert pub.topic("a/b") == f"{topic_prefix}/a/b"
            for i in range(50):
                assert await pub.publish("a/b", {"i": i})
            assert await pub.flush(5.0)
        return pub

    with subscriber(*mqtt_broker, topic_prefix) as got:
        pub = asyncio.run(scenario())
        messages = drain(got, 50)
    assert pub.status() == {"sent": 50, "acked": 50, "dropped": 0, "pending": 0}
    assert [p["i"] for _, p, _ in messages] == list(range(50))


def test_publisher_keeps_messages_while_the_broker_is_away(mqtt_broker: tuple[str, int], topic_prefix: str) -> None:
    async def scenario() -> MqttPublisher:
        async with cuttable_proxy(*mqtt_broker) as (port, cut):
            async with MqttPublisher(f"mqtt://127.0.0.1:{port}", topic_prefix=topic_prefix, max_queued=8) as pub:
                for i in range(3):
                    assert await pub.publish("a", {"i": i})
                assert await pub.flush(5.0)
                cut()  # a network loss: the next messages wait for the reconnect
                await asyncio.sleep(0.1)
                results = [await pub.publish("a", {"i": i}) for i in range(3, 13)]
                assert results == [True] * 8 + [False] * 2  # kept up to max_queued, then dropped
                assert await pub.flush(10.0)
            await asyncio.sleep(0.2)  # the proxy's pipes see the DISCONNECT through and close
            return pub

    with subscriber(*mqtt_broker, topic_prefix) as got:
        pub = asyncio.run(scenario())
        messages = drain(got, 11)
    assert pub.status() == {"sent": 11, "acked": 11, "dropped": 2, "pending": 0}
    assert sorted({p["i"] for _, p, _ in messages}) == list(range(11))  # in order per connection, none lost


def test_payload_that_is_not_json(mqtt_broker: tuple[str, int], topic_prefix: str) -> None:
    async def scenario() -> None:
        async with MqttPublisher(
            f"mqtt://{mqtt_broker[0]}:{mqtt_broker[1]}", topic_prefix=topic_prefix
        ) as pub:
            with pytest.raises(ScenarioError, match="cannot be sent as JSON"):
                await pub.publish("x", {"v": float("nan")})
            assert pub.sent == 0

    asyncio.run(scenario())


def test_unreachable_broker_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed

    async def scenario() -> None:
        await MqttPublisher(f"mqtt://127.0.0.1:{port}", connect_timeout_s=2).connect()

    with pytest.raises(EndpointError, match=f"cannot reach MQTT broker at 127.0.0.1:{port}"):
        asyncio.run(scenario())


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:1883", "must start with mqtt://"),
        ("mqtt://", "has no host"),
        ("mqtt://host:99999", "port"),
    ],
)
def test_bad_broker_urls(url: str, reason: str) -> None:
    with pytest.raises(ScenarioError, match=reason):
        parse_broker_url(url)


def test_broker_url_parts() -> None:
    addr = parse_broker_url("mqtts://user:p%40ss@broker.example:8884")
    assert (addr.host, addr.port, addr.tls, addr.username, addr.password) == (
        "broker.example",
        8884,
        True,
        "user",
        "p@ss",
    )
    assert parse_broker_url("mqtt://10.0.0.1").port == 1883
