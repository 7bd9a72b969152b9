"""MQTT connector: plain JSON topics or Sparkplug B, QoS 1, persistent session, PUBACK only once durable.

Each received message is decoded on the spot (on the loop thread, inside the client's read callback); all messages
read in one socket-read burst become one ``ReadingBatch`` whose ``ack`` sends their PUBACKs, so the sink is
awaited once per burst, not once per message. Un-acked messages stay in the broker's session and are
redelivered after a reconnect with the same client id: a crash between receipt and the outbox loses nothing.
Each message also carries a fingerprint (topic and payload hash) and its DUP flag, with which the pipeline
recognises a redelivery of a message it already committed (see pipeline.py).
The queue towards the sink is bounded: when it is full the connector stops reading the socket, the broker's
receive-maximum window fills, and the broker holds further messages.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from typing import Protocol

import structlog

from edge_agent.connectors import Sink
from edge_agent.connectors.reconnect import ReconnectingConnector
from edge_agent.errors import ConnectorError, SecurityError
from edge_agent.reading import Reading, ReadingBatch
from plant.errors import MqttAuthError, MqttError
from plant.mqtt import Backoff, MqttClient, MqttOptions

log = structlog.get_logger(__name__)

Rejection = tuple[str, str]


class Decoder(Protocol):
    """What the connector needs of a payload format (plain JSON, Sparkplug B)."""

    commands: list[tuple[str, bytes]]  # messages the decoder wants published (Sparkplug rebirth requests)

    def filters(self) -> list[str]:
        """Topic filters to subscribe to."""
        ...

    def on_connect(self) -> None:
        """Called after every (re)connect, before messages flow."""
        ...

    def decode(self, topic: str, payload: bytes, recv_ts: int) -> tuple[list[Reading], list[Rejection]]:
        """Readings and rejections of one message; never raises on bad input."""
        ...


class MqttConnector(ReconnectingConnector):
    """Subscribes to a broker and delivers each message's readings as a batch; reconnects on its own.

    Args:
        source_id: the site source id.
        options: broker address, credentials, client id.
        decoder: turns payloads into readings.
        queue_size: batches (socket-read bursts, up to 256 messages each) waiting before reading pauses.
        backoff: reconnect delays.
    """

    def __init__(
        self,
        source_id: str,
        options: MqttOptions,
        decoder: Decoder,
        *,
        queue_size: int = 2000,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__("mqtt", source_id, backoff)
        self.options = options
        self.decoder = decoder
        self.queue_size = queue_size
        self._queue: asyncio.Queue[ReadingBatch] = asyncio.Queue()
        self._client: MqttClient | None = None
        self._messages = 0
        self._rejected = 0
        self._burst_readings: list[Reading] = []
        self._burst_rejected: list[Rejection] = []
        self._burst_mids: list[int] = []
        self._burst_messages: list[tuple[bytes, bool, int]] = []

    def status(self) -> dict[str, object]:
        """Connected or not, last error and counts."""
        return {
            "source": self.source_id,
            "kind": "mqtt",
            "connected": self._connected,
            "last_error": self._last_error,
            "messages": self._messages,
            "values": self._values,
            "rejected": self._rejected,
            "reconnects": self._reconnects,
            "queued": self._queue.qsize(),
        }

    def _log_lost(self, exc: ConnectorError) -> None:
        log.warning("mqtt_disconnected", source=self.source_id, error=str(exc))

    async def _connect(self) -> tuple[MqttClient, bool]:
        """Connect, with plant's MQTT errors as the agent's (refused credentials are a SecurityError)."""
        try:
            return await self._connect_any()
        except MqttAuthError as exc:
            raise SecurityError(str(exc)) from exc
        except MqttError as exc:
            raise ConnectorError(str(exc)) from exc

    async def _connect_any(self) -> tuple[MqttClient, bool]:
        """Connect; in "auto" mode a broker refusing MQTT 5 (amqtt, older brokers) is retried with 3.1.1."""
        auto = self.options.protocol == "auto"
        # a broker that does not speak MQTT 5 may just hang up or stay silent: do not wait long for it
        first = self.options.with_protocol("auto", min(self.options.timeout_s, 3.0)) if auto else self.options
        client = MqttClient(first, self._on_publish, self._on_burst_end, stream=True)
        self._client = client
        try:
            present = await client.connect()
            if auto:
                self.options = self.options.with_protocol("5")
            return client, present
        except MqttAuthError:
            raise
        except MqttError as first:
            if not auto:
                raise
            client.close()
            options = self.options.with_protocol("3.1.1")
            fallback = MqttClient(options, self._on_publish, self._on_burst_end, stream=True)
            self._client = fallback
            try:
                present = await fallback.connect()
            except MqttError:
                fallback.close()
                raise first from None
            self.options = fallback.options  # remember: this broker speaks 3.1.1
            log.info("mqtt_protocol_fallback", source=self.source_id, protocol="3.1.1")
            return fallback, present

    async def _session(self) -> None:
        try:
            client, present = await self._connect()
        except BaseException:
            self._client = None
            raise
        try:
            try:
                await client.subscribe(self.decoder.filters())
            except MqttError as exc:
                raise ConnectorError(str(exc)) from exc
            self._set_connected(True)
            self.backoff.reset()
            log.info("mqtt_connected", source=self.source_id, host=self.options.host, session_present=present)
            self.decoder.on_connect()
            self._flush_commands(client)
            reason = await client.disconnected
            raise ConnectorError(f"MQTT connection lost: {reason}")
        finally:
            self._client = None
            client.close()

    def _on_publish(self, topic_raw: bytes, payload: bytes, qos: int, mid: int, dup: bool) -> None:
        recv_ts = time.time_ns() // 1000
        try:
            readings, rejected = self.decoder.decode(topic_raw.decode(), payload, recv_ts)
        except UnicodeDecodeError:  # a topic that is not UTF-8
            readings, rejected = [], [("unknown_topic", repr(topic_raw[:100]))]
        if readings:
            self._burst_readings.extend(readings)
            self._values += len(readings)
        if rejected:
            self._burst_rejected.extend(rejected)
            self._rejected += len(rejected)
        self._messages += 1
        if qos > 0:
            self._burst_mids.append(mid)
        self._burst_messages.append((fingerprint(topic_raw, payload), dup, len(readings)))

    def _on_burst_end(self) -> None:
        """One batch (one ack, one sink call) for every message read in this socket-read burst."""
        messages = self._burst_messages
        if not messages:
            return
        client = self._client
        readings, rejected, mids = self._burst_readings, self._burst_rejected, self._burst_mids
        self._burst_readings, self._burst_rejected, self._burst_mids = [], [], []
        self._burst_messages = []
        ack: Callable[[], None] | None = None
        if mids and client is not None:
            ack = _acker(client, mids)
        self._queue.put_nowait(ReadingBatch(readings, ack, rejected, messages))
        if readings:
            self._m_values.inc(len(readings))
        if client is not None:
            if self.decoder.commands:
                self._flush_commands(client)
            if self._queue.qsize() >= self.queue_size:
                client.pause_reading()

    def _flush_commands(self, client: MqttClient) -> None:
        for topic, payload in self.decoder.commands:
            client.publish(topic, payload, qos=0)
        self.decoder.commands.clear()

    async def _consume(self, sink: Sink) -> None:
        queue = self._queue
        low = self.queue_size // 2
        while True:
            batch = await queue.get()
            try:
                await sink(batch)
            except Exception:
                if self._client is not None:  # end the session: run() then re-raises for the agent to see
                    self._client.close()
                raise
            client = self._client
            if client is not None and queue.qsize() <= low:
                client.resume_reading()


def _acker(client: MqttClient, mids: list[int]) -> Callable[[], None]:
    def ack() -> None:
        client.ack_many(mids, 1)  # QoS 2 is never subscribed: every acked message is QoS 1

    return ack


def fingerprint(topic: bytes, payload: bytes) -> bytes:
    """A message's identity for redelivery checks: 16 bytes of BLAKE2b over topic and payload."""
    if len(topic) <= 64:  # the topic as the key: no concatenation of a large payload
        return hashlib.blake2b(payload, digest_size=16, key=topic).digest()
    return hashlib.blake2b(topic + b"\0" + payload, digest_size=16).digest()
