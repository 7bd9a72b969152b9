"""The agent's MQTT connection to the platform broker, on plant's MQTT client.

One task connects, subscribes and waits for the connection to end, then reconnects after a backoff with jitter.
The session is persistent (MQTT 3.1.1, clean_session false, stable client id), so acks the platform publishes
while the link is briefly down are delivered on reconnect; what the link receives is acknowledged on receipt.
MQTT errors are translated into ConnectorError here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable

import structlog

from edge_agent import metrics
from edge_agent.errors import ConnectorError
from plant.errors import MqttError
from plant.mqtt import Backoff, BrokerUrl, MqttClient, MqttOptions

log = structlog.get_logger(__name__)


class PlatformLink:
    """One MQTT client towards the platform.

    Args:
        url: the broker.
        client_id: MQTT client id (stable, for the persistent session).
        subscriptions: topics subscribed (QoS 1) at every connect.
        on_message: called on the event loop with (topic, payload).
        ca_file: CA bundle for TLS (the URL's ``ca_file`` when None).
        keepalive: MQTT keepalive seconds.
        backoff: delays between connection attempts.
    """

    def __init__(
        self,
        url: BrokerUrl,
        client_id: str,
        subscriptions: list[str],
        on_message: Callable[[str, bytes], None],
        *,
        ca_file: str | None = None,
        keepalive: int = 30,
        backoff: Backoff | None = None,
    ) -> None:
        self.url = url
        self.client_id = client_id
        self.subscriptions = subscriptions
        self.on_message = on_message
        self.ca_file = ca_file
        self.keepalive = keepalive
        self.connected = asyncio.Event()
        self.disconnected = asyncio.Event()
        self.disconnected.set()
        self.backoff = backoff or Backoff(initial=1.0, cap=30.0)
        self._client: MqttClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._subscribing: set[asyncio.Task[None]] = set()
        self.connects = 0

    async def start(self) -> None:
        """Start connecting in the background (returns at once; watch ``connected``)."""
        options = MqttOptions.from_url(self.url, self.client_id, keepalive_s=self.keepalive, protocol="3.1.1",
                                       max_inflight=64)  # fmt: skip
        if self.ca_file is not None:
            options = dataclasses.replace(options, ca_file=self.ca_file)
        self._task = asyncio.create_task(self._run(options), name="platform-link")

    async def stop(self) -> None:
        """Disconnect and stop connecting."""
        task, client = self._task, self._client
        if task is None:
            return
        self._task = None
        self.connected.clear()  # an asked-for disconnect is not worth a warning
        if client is not None:
            await client.disconnect()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Queue one message; ConnectorError when the link is down."""
        c = self._client
        if c is None or not self.connected.is_set():
            raise ConnectorError("platform link is not connected")
        try:
            c.publish(topic, payload, qos=qos)
        except MqttError as exc:
            raise ConnectorError(str(exc)) from exc

    def subscribe(self, topic: str) -> None:
        """Subscribe (QoS 1) now if connected, and at every later connect."""
        self.subscriptions.append(topic)
        c = self._client
        if c is not None and self.connected.is_set():
            task = asyncio.get_running_loop().create_task(self._subscribe(c, [topic]))
            self._subscribing.add(task)
            task.add_done_callback(self._subscribing.discard)

    async def _subscribe(self, client: MqttClient, topics: list[str]) -> None:
        try:
            await client.subscribe(topics)
        except MqttError as exc:  # the next connect subscribes again
            log.warning("platform_subscribe_failed", broker=self.url.redacted(), error=str(exc))
            client.close()

    async def _run(self, options: MqttOptions) -> None:
        while True:
            try:
                await self._session(options)
            except MqttError as exc:
                self._went_down(str(exc))
            await self.backoff.sleep()

    async def _session(self, options: MqttOptions) -> None:
        async with MqttClient(options, self._on_publish) as client:
            self._client = client
            try:
                await client.subscribe(list(self.subscriptions))
                self.backoff.reset()
                self._came_up()
                reason = await client.disconnected
            finally:
                self._client = None
        raise MqttError(f"connection lost: {reason}")

    def _on_publish(self, topic: bytes, payload: bytes, qos: int, mid: int, _dup: bool) -> None:
        client = self._client
        if client is not None and qos:
            client.ack(mid, qos)
        self.on_message(topic.decode(errors="replace"), payload)

    def _came_up(self) -> None:
        self.connects += 1
        if self.connects > 1:
            metrics.RECONNECTS.labels("platform").inc()
        metrics.CONNECTED.labels("platform").set(1)
        log.info("platform_connected", broker=self.url.redacted(), connects=self.connects)
        self.disconnected.clear()
        self.connected.set()

    def _went_down(self, reason: str) -> None:
        if self.connected.is_set():
            log.warning("platform_disconnected", broker=self.url.redacted(), reason=reason)
        metrics.CONNECTED.labels("platform").set(0)
        self.connected.clear()
        self.disconnected.set()
