"""A plain MQTT peer on the test broker, on plant.mqtt's client: publishes, and collects what arrives.

    with MqttPeer(host, port, ["p/#"]) as peer:
        peer.publish("p/1", b"{}")
        message = peer.get()  # .topic, .payload, .qos

With ``on_message`` the messages go to that function instead, on a thread of the peer's own (so it may publish).
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import NamedTuple

from plant.mqtt import MqttOptions, ThreadedClient


class Message(NamedTuple):
    """One message received: its topic, payload and the QoS it arrived at."""

    topic: str
    payload: bytes
    qos: int


class MqttPeer:
    """One connection to the test broker, subscribed (QoS 1) to ``filters``, its messages in a queue.

    Args:
        host: broker host.
        port: broker port.
        filters: topic filters to collect, subscribed before the constructor returns.
        client_id: fixed client id (default: ``peer-`` and a random suffix).
        username: broker login, if the broker asks for one.
        password: its password.
        ca_file: connect with TLS, trusting this CA bundle.
        connect_s: how long to wait for the broker.
        on_message: called with each ``Message``, in order, on a thread of its own.
    """

    def __init__(
        self,
        host: str,
        port: int,
        filters: list[str] | None = None,
        *,
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        ca_file: str | None = None,
        connect_s: float = 5.0,
        on_message: Callable[[Message], None] | None = None,
    ) -> None:
        options = MqttOptions(
            host, port, client_id or f"peer-{uuid.uuid4().hex[:10]}", tls=ca_file is not None, ca_file=ca_file,
            username=username, password=password, protocol="3.1.1", persistent=False, timeout_s=connect_s,
        )  # fmt: skip
        self.messages: queue.Queue[Message] = queue.Queue()
        self._handler: threading.Thread | None = None
        if on_message is not None:
            self._handler = threading.Thread(target=self._handle, args=(on_message,), name="mqtt-peer-on-message",
                                             daemon=True)
            self._handler.start()
        got = self.messages.put
        self.client = ThreadedClient(options, filters, lambda t, p, q: got(Message(t, p, q)), name="mqtt-peer")
        if not self.client.start().wait_connected(connect_s):
            self.close()
            raise AssertionError(f"the broker at {host}:{port} did not take the test peer")

    def __enter__(self) -> MqttPeer:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, *, acked: bool = True) -> None:
        """Publish and return once the broker took it (its PUBACK at QoS 1), or once queued if not ``acked``."""
        raw = payload.encode() if isinstance(payload, str) else payload
        self.client.publish(topic, raw, qos, acked=acked)

    def get(self, timeout: float = 5.0) -> Message:
        """The next message received; queue.Empty after ``timeout`` seconds."""
        return self.messages.get(timeout=timeout)

    def drain(self, expected: int, timeout: float = 5.0) -> list[Message]:
        """Up to ``expected`` messages, waiting at most ``timeout`` seconds in all."""
        out: list[Message] = []
        deadline = time.monotonic() + timeout
        while len(out) < expected:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                out.append(self.messages.get(timeout=min(left, 0.1)))
            except queue.Empty:
                continue
        return out

    def close(self) -> None:
        """End the handler's thread (after what it was given: it may still publish), then disconnect."""
        if self._handler is not None:
            self.messages.put(_END)
            self._handler.join(10)
        self.client.stop()

    def _handle(self, on_message: Callable[[Message], None]) -> None:
        while (message := self.messages.get()) is not _END:
            on_message(message)


_END = Message("", b"", 0)  # the handler's thread ends here (an empty topic never arrives)


def forget_sessions(host: str, port: int, client_ids: list[str], connect_s: float = 2.0) -> None:
    """Drop the persistent sessions these client ids left in the broker (a clean-session connect each)."""
    for cid in client_ids:
        try:
            MqttPeer(host, port, client_id=cid, connect_s=connect_s).close()
        except AssertionError:  # the broker is gone, and its sessions with it unless persisted
            continue
