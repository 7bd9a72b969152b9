"""plant's ThreadedClient against the machine's Mosquitto: manual acknowledgement (``on_delivery``, ``ack``) on a
persistent session, the connection each delivery came on, and why a connection failed."""

from __future__ import annotations

import asyncio
import queue
import uuid
from collections.abc import Iterator

import pytest

from plant.mqtt import Backoff, Delivery, MqttClient, MqttOptions, ThreadedClient
from tests.mqtt_peer import MqttPeer, forget_sessions

pytestmark = pytest.mark.mosquitto


@pytest.fixture
def client_id(mqtt_broker: tuple[str, int]) -> Iterator[str]:
    cid = f"threaded-{uuid.uuid4().hex[:10]}"
    yield cid
    forget_sessions(*mqtt_broker, [cid])


def _consumer(broker: tuple[str, int], cid: str, topic: str, got: queue.Queue[Delivery]) -> ThreadedClient:
    options = MqttOptions(*broker, cid, protocol="3.1.1", keepalive_s=5)
    c = ThreadedClient(options, [topic], backoff=Backoff(0.05, 0.2), name="test-consumer", on_delivery=got.put)
    assert c.start().wait_connected(5)
    return c


def _publish(broker: tuple[str, int], topic: str, *payloads: bytes) -> None:
    with MqttPeer(*broker) as peer:
        for payload in payloads:
            peer.publish(topic, payload)


def _take_over(broker: tuple[str, int], cid: str) -> None:
    """Connect once with ``cid`` and its session, acknowledging nothing: the broker drops the client holding it."""

    async def main() -> None:
        options = MqttOptions(*broker, cid, protocol="3.1.1")
        async with MqttClient(options, lambda *_message: None) as kicker:
            await asyncio.sleep(0.2)
            await kicker.disconnect()

    asyncio.run(main())


def _payloads(got: queue.Queue[Delivery], wait_s: float = 0.5) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(got.get(timeout=wait_s).payload)
        except queue.Empty:
            return out


def test_what_is_not_acknowledged_comes_again_and_what_is_does_not(
    mqtt_broker: tuple[str, int], client_id: str, topic_prefix: str
) -> None:
    topic = f"{topic_prefix}/data"
    got: queue.Queue[Delivery] = queue.Queue()
    first = _consumer(mqtt_broker, client_id, topic, got)
    _publish(mqtt_broker, topic, b"a", b"b")
    a, b = got.get(timeout=5), got.get(timeout=5)
    assert [(a.topic, a.payload, a.qos), (b.topic, b.payload)] == [(topic, b"a", 1), (topic, b"b")]
    assert first.ack([a]) == 1  # ended here
    first.stop()
    second = _consumer(mqtt_broker, client_id, topic, got)
    try:
        again = got.get(timeout=5)
        assert again.payload == b"b"
        assert again.connection == 1  # the second client's first connection
        assert second.ack([again]) == 1
        assert _payloads(got) == []
    finally:
        second.stop()
    third = _consumer(mqtt_broker, client_id, topic, got)
    third.stop()
    assert _payloads(got) == []


def test_a_delivery_of_a_lost_connection_is_not_acknowledged_on_the_next(
    mqtt_broker: tuple[str, int], client_id: str, topic_prefix: str
) -> None:
    """After a reconnect the broker sends the message again, likely under the same packet id: acknowledging the
    first delivery must not acknowledge the second."""
    topic = f"{topic_prefix}/data"
    got: queue.Queue[Delivery] = queue.Queue()
    c = _consumer(mqtt_broker, client_id, topic, got)
    try:
        _publish(mqtt_broker, topic, b"a")
        old = got.get(timeout=5)
        _take_over(mqtt_broker, client_id)
        new = got.get(timeout=10)  # the client reconnected by itself and got it again
        assert (new.payload, new.connection) == (b"a", old.connection + 1)
        assert c.ack([old]) == 0  # it ends with the delivery that came again: counted once, then
        assert _payloads(got) == []
    finally:
        c.stop()
    after = _consumer(mqtt_broker, client_id, topic, got)
    try:
        assert _payloads(got, 2.0) == [b"a"]
    finally:
        after.stop()


def test_why_the_last_connection_failed_is_kept_until_one_succeeds() -> None:
    options = MqttOptions("127.0.0.1", 1, "nobody", protocol="3.1.1", timeout_s=1.0)
    c = ThreadedClient(options, backoff=Backoff(0.05, 0.2), name="test-unreachable").start()
    try:
        assert not c.wait_connected(0.5)
        assert c.error is not None
        assert "127.0.0.1:1" in c.error
        assert not c.is_connected()
    finally:
        c.stop()
