"""The agent's MQTT connection to the platform broker (paho-mqtt 2), bridged into asyncio.

paho runs its network loop on its own thread and reconnects by itself with a capped backoff; its callbacks
hand everything to the event loop with ``call_soon_threadsafe``. The session is persistent (clean_session
false), so acks the platform publishes while the link is briefly down are delivered on reconnect. paho errors
are translated into ConnectorError here.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge_agent import metrics
from edge_agent.errors import ConnectorError
from plant.mqtt import BrokerUrl

log = structlog.get_logger(__name__)


class PlatformLink:
    """One MQTT client towards the platform.

    Args:
        url: the broker.
        client_id: MQTT client id (stable, for the persistent session).
        subscriptions: topics subscribed (QoS 1) at every connect.
        on_message: called on the event loop with (topic, payload).
        ca_file: CA bundle for TLS.
        keepalive: MQTT keepalive seconds.
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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: mqtt.Client | None = None
        self.connects = 0

    async def start(self) -> None:
        """Start connecting in the background (returns at once; watch ``connected``)."""
        self._loop = asyncio.get_running_loop()
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        if self.url.username:
            c.username_pw_set(self.url.username, self.url.password)
        if self.url.tls:
            try:
                c.tls_set(ca_certs=self.ca_file, cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ValueError, ssl.SSLError) as exc:
                raise ConnectorError(f"platform broker TLS setup failed: {exc}") from exc
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.max_inflight_messages_set(64)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        self._client = c
        try:
            c.connect_async(self.url.host, self.url.port, keepalive=self.keepalive)
        except (OSError, ValueError) as exc:
            raise ConnectorError(f"cannot connect to {self.url.redacted()}: {exc}") from exc
        c.loop_start()

    async def stop(self) -> None:
        """Disconnect and stop the network thread."""
        c = self._client
        if c is None:
            return
        self._client = None
        self.connected.clear()  # an asked-for disconnect is not worth a warning
        c.disconnect()
        await asyncio.get_running_loop().run_in_executor(None, c.loop_stop)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Queue one message; ConnectorError when the link is down."""
        c = self._client
        if c is None or not self.connected.is_set():
            raise ConnectorError("platform link is not connected")
        info = c.publish(topic, payload, qos=qos)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectorError(f"publish failed: {mqtt.error_string(info.rc)}")

    def subscribe(self, topic: str) -> None:
        """Subscribe (QoS 1) now if connected, and at every later connect."""
        self.subscriptions.append(topic)
        c = self._client
        # paho marks itself connected before its on_connect runs: either that callback sees the topic in the
        # list, or the client says connected here (a second SUBSCRIBE of the same topic is harmless)
        if c is not None and c.is_connected():
            c.subscribe(topic, qos=1)

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        if rc.is_failure:
            self._call(self._went_down, f"connect refused: {rc}")
            return
        for topic in self.subscriptions:
            client.subscribe(topic, qos=1)
        self._call(self._came_up)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        self._call(self._went_down, str(rc))

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._call(self.on_message, msg.topic, msg.payload)

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
