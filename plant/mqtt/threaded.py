"""The MQTT client for threaded code: ``MqttClient`` on an event loop of its own thread, reconnecting by itself.

Same connection, URL, TLS, errors and reconnect policy (``Backoff``) as the async client; calls from other
threads are handed to its loop. Received messages are acknowledged on receipt and passed to ``on_message`` on
the client's thread; or, given ``on_delivery`` instead, passed on unacknowledged as ``Delivery`` items that
their user acknowledges with ``ack`` once each is handled (what is not acknowledged, the broker delivers again
to a persistent session at the next connection).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import NamedTuple

import structlog

from plant.errors import MqttError
from plant.mqtt.backoff import Backoff
from plant.mqtt.client import MqttClient, MqttOptions

log = structlog.get_logger(__name__)


class Delivery(NamedTuple):
    """A message received by a ``ThreadedClient`` with ``on_delivery``, not yet acknowledged.

    Args:
        topic: its topic (a topic that is not UTF-8 is decoded with replacement characters).
        payload: its payload.
        qos: its QoS.
        mid: its packet id on the connection it came on.
        connection: which of the client's connections it came on: a packet id means nothing on another.
    """

    topic: str
    payload: bytes
    qos: int
    mid: int
    connection: int


class ThreadedClient:
    """One connection at a time to a broker, kept up by a thread of its own.

    Args:
        options: where and how to connect.
        subscriptions: filters subscribed (QoS 1) at every connect.
        on_message: called on the client's thread with (topic, payload, QoS) of each message received.
        backoff: delays between connection attempts.
        name: the thread's name.
        on_delivery: instead of ``on_message``: called on the client's thread with each message received,
            unacknowledged; acknowledge it with ``ack``.
    """

    def __init__(
        self,
        options: MqttOptions,
        subscriptions: list[str] | None = None,
        on_message: Callable[[str, bytes, int], None] | None = None,
        backoff: Backoff | None = None,
        name: str = "mqtt",
        *,
        on_delivery: Callable[[Delivery], None] | None = None,
    ) -> None:
        self.options = options
        self.subscriptions = list(subscriptions or [])
        self.on_message = on_message
        self.on_delivery = on_delivery
        self.error: str | None = None  # why the last connection attempt failed; None once connected
        self._connection = 0  # connections made so far: the current one's number
        self._stopping = False
        self.backoff = backoff or Backoff(initial=1.0, cap=10.0)
        self._name = name
        self._connected = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: MqttClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> ThreadedClient:
        """Start the thread; it connects (and reconnects) in the background: watch ``is_connected``."""
        ready = threading.Event()
        self._thread = threading.Thread(target=self._main, args=(ready,), name=self._name, daemon=True)
        self._thread.start()
        ready.wait()
        return self

    def is_connected(self) -> bool:
        """Whether the client is connected now."""
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        """Wait until connected and subscribed; False when ``timeout_s`` passed first."""
        return self._connected.wait(timeout_s)

    def publish(self, topic: str, payload: bytes, qos: int = 0, timeout_s: float = 5.0, *, acked: bool = False) -> None:
        """Queue one message (from any thread); MqttError when not connected or the message is refused.

        ``acked``: return only once the broker took it (PUBACK at QoS 1), within ``timeout_s``.
        """
        loop = self._loop
        if loop is None or not self._connected.is_set():
            raise MqttError("MQTT publish: not connected")
        done = asyncio.run_coroutine_threadsafe(self._publish(topic, payload, qos, timeout_s if acked else 0), loop)
        try:
            done.result(timeout_s + 1)
        except concurrent.futures.TimeoutError as exc:
            raise MqttError("MQTT publish: the client's thread did not answer in time") from exc

    def publish_many(self, messages: Sequence[tuple[str, bytes]], qos: int = 0) -> None:
        """Queue several messages (from any thread) without waiting; one that cannot be queued is logged.

        Messages queued here and acknowledgements (``ack``) go out in the order they were handed over.
        """
        if messages:
            self._call_soon(self._publish_now, list(messages), qos)

    def ack(self, deliveries: Sequence[Delivery]) -> int:
        """Acknowledge messages received through ``on_delivery`` (from any thread), without waiting.

        Those that came on an earlier connection are skipped: the broker delivers them again. Returns how many
        of ``deliveries`` end here (QoS 0 ones, never delivered again, and those of the current connection).
        """
        current = self._connection
        if deliveries:
            self._call_soon(self._ack_now, list(deliveries))
        return sum(1 for d in deliveries if not d.qos or d.connection == current)

    def stop(self) -> None:
        """Disconnect and end the thread."""
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
                asyncio.run_coroutine_threadsafe(self._stop(task), loop).result(10)
        if self._thread is not None:
            self._thread.join(10)

    async def _publish(self, topic: str, payload: bytes, qos: int, acked_within_s: float) -> None:
        if self._client is None:
            raise MqttError("MQTT publish: not connected")
        if acked_within_s > 0:
            await self._client.publish_acked(topic, payload, qos, acked_within_s)
        else:
            self._client.publish(topic, payload, qos)

    def _call_soon(self, fn: Callable[..., None], *args: object) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop ended: nothing is connected to send on
                loop.call_soon_threadsafe(fn, *args)

    def _publish_now(self, messages: list[tuple[str, bytes]], qos: int) -> None:
        client = self._client
        for topic, payload in messages:
            try:
                if client is None:
                    raise MqttError("MQTT publish: not connected")
                client.publish(topic, payload, qos)
            except MqttError as exc:
                log.warning("mqtt_publish_failed", topic=topic[:200], error=str(exc))

    def _ack_now(self, deliveries: list[Delivery]) -> None:
        client = self._client
        if client is not None:
            client.ack_many([d.mid for d in deliveries if d.qos and d.connection == self._connection])

    async def _stop(self, task: asyncio.Task[None]) -> None:
        self._stopping = True
        self._connected.clear()
        if self._client is not None:
            await self._client.disconnect()
        task.cancel()

    def _main(self, ready: threading.Event) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()
            ready.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._run()

        asyncio.run(main())

    async def _run(self) -> None:
        while True:
            self._connection += 1
            try:
                # known before the CONNACK: a persistent session's messages may come with it, and their acks need it
                self._client = client = MqttClient(self.options, self._on_publish)
                async with client:
                    await client.subscribe(self.subscriptions)
                    self.backoff.reset()
                    self.error = None
                    self._connected.set()
                    reason = await client.disconnected
                if not self._stopping:
                    log.warning("mqtt_disconnected", broker=f"{self.options.host}:{self.options.port}",
                                reason=reason)
            except MqttError as exc:
                self.error = str(exc)
                log.warning("mqtt_connect_failed", broker=f"{self.options.host}:{self.options.port}", error=str(exc))
            finally:
                self._connected.clear()
                self._client = None
            await self.backoff.sleep()

    def _on_publish(self, topic: bytes, payload: bytes, qos: int, mid: int, _dup: bool) -> None:
        if self.on_delivery is not None:
            self.on_delivery(Delivery(topic.decode(errors="replace"), payload, qos, mid, self._connection))
            return
        client = self._client
        if client is not None and qos:
            client.ack(mid, qos)
        if self.on_message is not None:
            self.on_message(topic.decode(errors="replace"), payload, qos)
