"""The simulated devices' MQTT side: JSON messages published at QoS 1 through paho-mqtt 2.

paho runs its network loop on its own thread; its callbacks hand their news to the event loop with
``call_soon_threadsafe`` and all bookkeeping happens there, so no lock is shared with paho's thread (paho
calls ``on_publish`` while holding its own locks). While the broker is away paho keeps QoS 1 messages and
sends them after it reconnects by itself; beyond ``max_queued`` they are dropped and counted.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from factory_twin.simulator.errors import EndpointError, ScenarioError
from plant.errors import BrokerUrlError
from plant.mqtt import BrokerUrl

log = structlog.get_logger(__name__)


def parse_broker_url(url: str) -> BrokerUrl:
    """The broker address of ``mqtt[s]://[user[:password]@]host[:port]``; ScenarioError if it is not one."""
    try:
        return BrokerUrl.parse(url)
    except BrokerUrlError as exc:
        raise ScenarioError(f"broker URL {url!r}: {exc}") from None


class MqttPublisher:
    """Publishes JSON messages at QoS 1 to one broker; an async context manager.

    Args:
        url: ``mqtt://host[:port]`` or ``mqtts://host[:port]`` (TLS with the system's CAs).
        topic_prefix: put in front of every topic (``"t1"`` sends ``t1/plant/...``), so tests do not collide.
        client_id: MQTT client id; default ``factory-twin-sim-`` and a random suffix.
        qos: the QoS of every message.
        connect_timeout_s: how long ``connect`` waits for the broker.
        max_queued: QoS 1 messages kept while unacknowledged or while the broker is away.
    """

    def __init__(
        self,
        url: str,
        *,
        topic_prefix: str = "",
        client_id: str | None = None,
        qos: int = 1,
        connect_timeout_s: float = 5.0,
        max_queued: int = 10_000,
    ) -> None:
        self.url = url
        self.address = parse_broker_url(url)
        self.topic_prefix = topic_prefix.strip("/")
        self._client_id = client_id or f"factory-twin-sim-{uuid.uuid4().hex[:8]}"
        self._qos = qos
        self._timeout = connect_timeout_s
        self._max_queued = max_queued
        self._client: mqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected: asyncio.Future[None] | None = None
        self._pending: set[int] = set()
        self._drained = asyncio.Event()
        self.sent = 0
        self.acked = 0
        self.dropped = 0

    async def __aenter__(self) -> MqttPublisher:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def topic(self, topic: str) -> str:
        """The topic as published: with the prefix in front."""
        return f"{self.topic_prefix}/{topic}" if self.topic_prefix else topic

    async def connect(self) -> None:
        """Connect and wait for the broker's CONNACK; EndpointError if it is unreachable or refuses."""
        self._loop = asyncio.get_running_loop()
        self._connected = self._loop.create_future()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self._client_id)
        client.max_queued_messages_set(self._max_queued)
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        if self.address.username is not None:
            client.username_pw_set(self.address.username, self.address.password)
        if self.address.tls:
            client.tls_set()
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        where = f"{self.address.host}:{self.address.port}"
        try:
            # The TCP connect runs in a thread: it blocks, and its OSError says exactly what went wrong.
            await asyncio.wait_for(
                asyncio.to_thread(client.connect, self.address.host, self.address.port, 30), self._timeout
            )
        except (OSError, TimeoutError) as exc:
            raise EndpointError(f"cannot reach MQTT broker at {where}: {exc or 'timed out'}") from exc
        client.loop_start()
        self._client = client
        try:
            await asyncio.wait_for(asyncio.shield(self._connected), self._timeout)
        except TimeoutError:
            await self.close(flush_s=0)
            raise EndpointError(
                f"MQTT broker at {where} did not answer CONNECT in {self._timeout} s"
            ) from None
        except EndpointError:
            await self.close(flush_s=0)
            raise
        log.info("simulator_mqtt_connected", broker=where, client_id=self._client_id)

    async def publish(self, topic: str, payload: Mapping[str, Any]) -> bool:
        """Send ``payload`` as JSON on ``topic`` (prefixed); False if it was dropped (queue full)."""
        if self._client is None:
            raise EndpointError(f"publisher for {self.url} is not connected")
        try:
            data = json.dumps(payload, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ScenarioError(f"message for {topic} cannot be sent as JSON: {exc}") from exc
        info = self._client.publish(self.topic(topic), data, qos=self._qos)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "simulator_mqtt_dropped", topic=topic, dropped=self.dropped, queued=self._max_queued
                )
            return False
        self.sent += 1
        if self._qos == 0:
            self.acked += 1
        else:
            # paho's on_publish reaches the loop only after this coroutine yields, so the mid is here first.
            self._pending.add(info.mid)
            self._drained.clear()
        return True

    async def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until the broker acknowledged every message sent; False if some are still pending."""
        if not self._pending:
            return True
        try:
            await asyncio.wait_for(self._drained.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def close(self, flush_s: float = 5.0) -> None:
        """Wait up to ``flush_s`` for acknowledgements, then disconnect and stop paho's thread."""
        client = self._client
        if client is None:
            return
        if flush_s > 0 and not await self.flush(flush_s):
            log.warning("simulator_mqtt_unacked_at_close", pending=len(self._pending))
        self._client = None
        client.disconnect()
        await asyncio.to_thread(client.loop_stop)

    def status(self) -> dict[str, object]:
        """Counts for logs and summaries."""
        return {
            "sent": self.sent,
            "acked": self.acked,
            "dropped": self.dropped,
            "pending": len(self._pending),
        }

    # paho's thread: hand everything to the event loop.

    def _on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._connack, bool(reason.is_failure), str(reason))

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if self._client is not None:  # not our own disconnect in close()
            log.warning("simulator_mqtt_disconnected", reason=str(reason), pending=len(self._pending))

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, _r: Any, _p: Any) -> None:
        assert self._loop is not None
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._puback, mid)

    # The event loop's side.

    def _connack(self, failed: bool, reason: str) -> None:
        assert self._connected is not None
        if self._connected.done():
            if not failed:
                log.info("simulator_mqtt_reconnected", broker=f"{self.address.host}:{self.address.port}")
            return
        if failed:
            where = f"{self.address.host}:{self.address.port}"
            self._connected.set_exception(
                EndpointError(f"MQTT broker at {where} refused the connection: {reason}")
            )
        else:
            self._connected.set_result(None)

    def _puback(self, mid: int) -> None:
        if mid in self._pending:  # QoS 0 sends also call on_publish; they were counted already
            self._pending.discard(mid)
            self.acked += 1
            if not self._pending:
                self._drained.set()
