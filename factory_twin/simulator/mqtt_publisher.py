"""The simulated devices' MQTT side: JSON messages published at QoS 1 through plant.mqtt's client.

One ``MqttClient`` per connection, on the simulator's event loop. Every QoS 1 message is kept until the broker
acknowledges it: while the broker is away the publisher reconnects (the shared ``Backoff``) and sends what is
kept again, in order, on the next connection; beyond ``max_queued`` new messages are dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Mapping
from typing import Any

import structlog

from factory_twin.simulator.errors import EndpointError, ScenarioError
from plant.errors import BrokerUrlError, MqttAuthError, MqttError
from plant.mqtt import Backoff, BrokerUrl, MqttClient, MqttOptions

log = structlog.get_logger(__name__)

ACK_WAIT_S = 30.0  # a connection whose broker takes longer to acknowledge a message is dropped and made again


def parse_broker_url(url: str) -> BrokerUrl:
    """The broker address of ``mqtt[s]://[user[:password]@]host[:port]``; ScenarioError if it is not one."""
    try:
        return BrokerUrl.parse(url)
    except BrokerUrlError as exc:
        raise ScenarioError(f"broker URL {url!r}: {exc}") from None


def _no_messages(_topic: bytes, _payload: bytes, _qos: int, _mid: int, _dup: bool) -> None:
    """The publisher subscribes to nothing."""


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
        self._options = MqttOptions.from_url(
            self.address, client_id or f"factory-twin-sim-{uuid.uuid4().hex[:8]}", protocol="3.1.1",
            persistent=False, keepalive_s=30, timeout_s=connect_timeout_s,
        )  # fmt: skip
        self._where = f"{self.address.host}:{self.address.port}"
        self._qos = qos
        self._max_queued = max_queued
        self._backoff = Backoff(initial=1.0, cap=10.0)
        self._task: asyncio.Task[None] | None = None
        self._client: MqttClient | None = None  # the current connection, None while the broker is away
        self._sending: set[asyncio.Task[None]] = set()
        self._pending: dict[int, tuple[str, bytes]] = {}  # kept until acknowledged, in the order sent
        self._seq = 0
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
        client = await self._open()
        self._task = asyncio.create_task(self._keep(client), name="simulator-mqtt")
        log.info("simulator_mqtt_connected", broker=self._where, client_id=self._options.client_id)

    async def publish(self, topic: str, payload: Mapping[str, Any]) -> bool:
        """Send ``payload`` as JSON on ``topic`` (prefixed); False if it was dropped (queue full)."""
        if self._task is None:
            raise EndpointError(f"publisher for {self.url} is not connected")
        try:
            data = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise ScenarioError(f"message for {topic} cannot be sent as JSON: {exc}") from exc
        if self._qos == 0:
            return self._publish_once(self.topic(topic), data)
        if len(self._pending) >= self._max_queued:
            self._drop(topic)
            return False
        self.sent += 1
        self._seq += 1
        self._pending[self._seq] = (self.topic(topic), data)
        self._drained.clear()
        if self._client is not None:
            self._send(self._client, self._seq)
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
        """Wait up to ``flush_s`` for acknowledgements, then disconnect."""
        task = self._task
        if task is None:
            return
        if flush_s > 0 and not await self.flush(flush_s):
            log.warning("simulator_mqtt_unacked_at_close", pending=len(self._pending))
        self._task = None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def status(self) -> dict[str, object]:
        """Counts for logs and summaries."""
        return {
            "sent": self.sent,
            "acked": self.acked,
            "dropped": self.dropped,
            "pending": len(self._pending),
        }

    def _publish_once(self, topic: str, data: bytes) -> bool:
        """QoS 0: sent now if connected, else dropped."""
        client = self._client
        if client is None:
            self._drop(topic)
            return False
        try:
            client.publish(topic, data, 0)
        except MqttError:
            self._drop(topic)
            return False
        self.sent += 1
        self.acked += 1
        return True

    def _drop(self, topic: str) -> None:
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.warning("simulator_mqtt_dropped", topic=topic, dropped=self.dropped, queued=self._max_queued)

    # The connection, kept up in a task of its own.

    async def _open(self) -> MqttClient:
        client = MqttClient(self._options, _no_messages)
        try:
            await client.connect()
        except asyncio.CancelledError:
            client.close()
            raise
        except MqttAuthError as exc:
            raise EndpointError(f"MQTT broker at {self._where} refused the connection: {exc}") from exc
        except MqttError as exc:
            raise EndpointError(f"cannot reach MQTT broker at {self._where}: {exc}") from exc
        return client

    async def _keep(self, client: MqttClient) -> None:
        try:
            while True:
                reason = await self._serve(client)
                client.close()
                log.warning("simulator_mqtt_disconnected", reason=reason, pending=len(self._pending))
                client = await self._reconnect()
        finally:
            await client.disconnect()

    async def _reconnect(self) -> MqttClient:
        while True:
            await self._backoff.sleep()
            try:
                client = await self._open()
            except EndpointError as exc:
                log.warning("simulator_mqtt_reconnect_failed", error=str(exc), pending=len(self._pending))
                continue
            self._backoff.reset()
            log.info("simulator_mqtt_reconnected", broker=self._where)
            return client

    async def _serve(self, client: MqttClient) -> str:
        """Send everything kept on this connection, then whatever comes, until it ends."""
        self._client = client
        try:
            for seq in list(self._pending):
                self._send(client, seq)
            return await client.disconnected
        finally:
            self._client = None
            for task in self._sending:
                task.cancel()

    def _send(self, client: MqttClient, seq: int) -> None:
        task = asyncio.create_task(self._deliver(client, seq))  # tasks start in order: so do the PUBLISHes
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _deliver(self, client: MqttClient, seq: int) -> None:
        topic, data = self._pending[seq]
        try:
            await client.publish_acked(topic, data, self._qos, ACK_WAIT_S)
        except MqttError:  # kept: sent again on the next connection
            if not client.disconnected.done():
                client.close()  # the broker took too long: a new connection sends it again
            return
        if self._pending.pop(seq, None) is not None:
            self.acked += 1
            if not self._pending:
                self._drained.set()
