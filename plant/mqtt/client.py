"""An asyncio MQTT client over paho-mqtt 2's public API: the socket is driven by the event loop, like aiomqtt.

paho reads and writes on the loop thread (``add_reader``/``add_writer`` and ``loop_read``/``loop_write``), so its
callbacks already run on the loop; only ``connect`` runs in an executor (DNS, TCP and TLS handshakes block), and
whatever paho calls from there is handed to the loop with ``call_soon_threadsafe``. Messages are not queued here:
``on_publish`` is a plain callback that its user keeps short. Acknowledgements are manual (``ack``, ``ack_many``):
a message is PUBACKed when its user says it is stored, so the broker redelivers what was not.

Fast path: ``MqttClient(..., stream=True)`` hands the socket over to a ``Stream`` (stream.py) once the CONNACK is
read: paho is no longer called, packets are read in large chunks and framed there, and PUBACKs are merged into
one send. Should paho still have bytes to write at that moment, the client stays on paho's path.

Bursts: one readable event reads up to ``_BURST`` PUBLISH packets, then ``on_burst_end`` is called once, so a
user can hand a whole burst on as one batch. Errors are plant's ``MqttError`` (``MqttAuthError`` for refused
credentials).

    async with MqttClient(MqttOptions.from_url(url, "my-id"), on_publish) as client:
        await client.subscribe(["plant/#"])
        await client.disconnected
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from plant.errors import MqttAuthError, MqttError
from plant.mqtt.stream import DISCONNECT, Stream, publish_packet, subscribe_packet
from plant.mqtt.url import BrokerUrl

# topic (raw bytes), payload, QoS, packet id, DUP flag
PublishCallback = Callable[[bytes, bytes, int, int, bool], None]
Protocol = Literal["5", "3.1.1", "auto"]
_BURST = 256  # packets read per readable event at most: the loop must still serve others
_READS = 64  # socket reads per readable event at most on the fast path (a large packet takes several)

# CONNACK reason codes that mean "fix your credentials", not "try again later".
_AUTH_CODES = {"Not authorized", "Bad user name or password", "Banned", "Bad authentication method"}


@dataclass(frozen=True, slots=True)
class MqttOptions:
    """How to reach a broker.

    Args:
        host: broker host name.
        port: broker port.
        client_id: fixed id, so the broker keeps the session (and un-acked messages) across reconnects.
        tls: connect with TLS.
        ca_file: CA bundle for the broker's certificate (system CAs when None).
        username: user name, or None for anonymous.
        password: password for ``username``.
        keepalive_s: MQTT keepalive; a silent broker is noticed within about 1.5 times this.
        session_expiry_s: how long the broker keeps the session while we are away.
        receive_maximum: un-acked QoS 1 messages the broker may send before waiting for PUBACKs.
        timeout_s: limit for connect and subscribe.
        protocol: "5", "3.1.1", or "auto" (MQTT 5; its user falls back to 3.1.1 when the broker refuses 5).
        persistent: keep the session on the broker across connections (False: a clean session, for short-lived
            clients with a random id).
        max_inflight: QoS 1 messages we publish that may wait for their PUBACK at once.
    """

    host: str
    port: int
    client_id: str
    tls: bool = False
    ca_file: str | None = None
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 10
    session_expiry_s: int = 86_400
    receive_maximum: int = 1000
    timeout_s: float = 10.0
    protocol: str = "auto"
    persistent: bool = True
    max_inflight: int = 20

    @classmethod
    def from_url(cls, url: BrokerUrl | str, client_id: str, *, own_id: bool = False, **kwargs: Any) -> MqttOptions:
        """Options for the broker of ``url``: its client id, when it names one, wins over ``client_id`` unless
        ``own_id`` (a connection that must not take another's session, such as a numbered ingest worker's)."""
        u = BrokerUrl.parse(url) if isinstance(url, str) else url
        return cls(
            host=u.host, port=u.port, client_id=client_id if own_id else u.client_id or client_id, tls=u.tls,
            ca_file=u.ca_file, username=u.username, password=u.password, **kwargs,
        )  # fmt: skip

    def with_protocol(self, protocol: Protocol, timeout_s: float | None = None) -> MqttOptions:
        """The same options speaking ``protocol`` (and with another timeout, if given)."""
        return dataclasses.replace(
            self, protocol=protocol, timeout_s=self.timeout_s if timeout_s is None else timeout_s
        )


class MqttClient:
    """One connection to a broker: connect, subscribe, receive, ack, publish; then throw it away.

    Args:
        options: where and how to connect.
        on_publish: called on the loop thread for every PUBLISH received (topic, payload, QoS, packet id, DUP).
        on_burst_end: called on the loop thread after each socket read burst (once per readable event).
        stream: take the fast path once connected (module docstring): the client then subscribes, receives,
            acks, and publishes at QoS 0 only.
    """

    def __init__(
        self,
        options: MqttOptions,
        on_publish: PublishCallback,
        on_burst_end: Callable[[], None] | None = None,
        *,
        stream: bool = False,
    ) -> None:
        self.options = options
        self._on_burst_end = on_burst_end
        self._on_message = on_publish
        self._stream: Stream | None = None
        self._want_stream = stream
        self._mid = 0  # the last packet id this client chose (SUBSCRIBE on the fast path)
        self._received = 0
        self.v5 = options.protocol != "3.1.1"
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._connected: asyncio.Future[bool] = self._loop.create_future()
        self.disconnected: asyncio.Future[str] = self._loop.create_future()
        self._subacks: dict[int, asyncio.Future[list[bool]]] = {}  # refused, per filter
        self._pubacks: dict[int, asyncio.Future[None]] = {}
        self._misc: asyncio.Handle | None = None  # the next once-a-second housekeeping call
        self._sock: Any = None
        self._reading_paused = False
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=options.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if self.v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if self.v5 else not options.persistent,
            reconnect_on_failure=False,
            manual_ack=True,
        )
        client.max_inflight_messages_set(options.max_inflight)
        self._tls: _TrackingContext | None = None
        if options.tls:
            try:
                self._tls = _TrackingContext(options.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise MqttError(f"MQTT {options.host}:{options.port}: TLS setup failed: {exc}") from exc
            client.tls_set_context(self._tls)
        if options.username is not None:
            client.username_pw_set(options.username, options.password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_published

        def deliver(_c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
            self._received += 1
            try:
                topic = msg.topic.encode()
            except UnicodeDecodeError as exc:  # not UTF-8: the raw bytes, for the user to reject
                topic = bytes(exc.object)
            on_publish(topic, bytes(msg.payload), msg.qos, msg.mid, bool(msg.dup))

        client.on_message = deliver
        client.on_socket_open = lambda _c, _u, sock: self._in_loop(self._socket_open, sock)
        client.on_socket_close = lambda _c, _u, sock: self._in_loop(self._socket_close, sock)
        client.on_socket_register_write = lambda _c, _u, sock: self._in_loop(self._register_write, sock)
        client.on_socket_unregister_write = lambda _c, _u, sock: self._in_loop(self._unregister_write, sock)
        self._client = client

    @property
    def streaming(self) -> bool:
        """The connection is on its fast path (the socket handed over from paho)."""
        return self._stream is not None

    async def __aenter__(self) -> MqttClient:
        await self.connect()
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

    # --- connection ---------------------------------------------------------------------------------------

    async def connect(self) -> bool:
        """Connect and wait for CONNACK; returns whether the broker still had our session."""
        opts = self.options
        props: Properties | None = None
        if self.v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = opts.session_expiry_s if opts.persistent else 0
            props.ReceiveMaximum = opts.receive_maximum
        try:
            await asyncio.wait_for(self._loop.run_in_executor(None, self._blocking_connect, props), opts.timeout_s)
            return await asyncio.wait_for(asyncio.shield(self._connected), opts.timeout_s)
        except (TimeoutError, OSError, ssl.SSLError, ValueError) as exc:
            self.close()
            raise MqttError(f"MQTT {opts.host}:{opts.port}: cannot connect: {exc or type(exc).__name__}") from exc
        except MqttError:
            self.close()
            raise

    def _blocking_connect(self, props: Properties | None) -> None:
        opts = self.options
        if self.v5:
            self._client.connect(
                opts.host, opts.port, keepalive=opts.keepalive_s, clean_start=not opts.persistent, properties=props
            )
        else:  # 3.1.1: the persistent session comes from clean_session=False on the client
            self._client.connect(opts.host, opts.port, keepalive=opts.keepalive_s)

    def close(self) -> None:
        """Drop the connection now (no DISCONNECT: the broker keeps the session and our un-acked messages)."""
        if self._stream is not None:
            self._stream.flush()
            self._stream.ended = True
        else:
            self._flush_pending()
        if self._misc is not None:
            self._misc.cancel()
        if self._sock is not None:
            self._socket_close(self._sock)
        sock = self._client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        if self._tls is not None:
            self._tls.close_all()
        # paho's __del__ closes its socket again, possibly later on another thread: it must not call us then.
        self._client.on_socket_open = None
        self._client.on_socket_close = None
        self._client.on_socket_register_write = None
        self._client.on_socket_unregister_write = None
        if not self.disconnected.done():
            self.disconnected.set_result("closed")

    def _flush_pending(self) -> None:
        """Best effort: write PUBACKs already queued, so messages acked just before a close are not redelivered."""
        for _ in range(8):
            if self._client.socket() is None or not self._client.want_write():
                return
            try:
                self._client.loop_write()
            except Exception:  # the socket is going away anyway; redelivery is the safe fallback
                return

    async def disconnect(self) -> None:
        """Send DISCONNECT and close."""
        if self._stream is not None:
            self._stream.send(DISCONNECT)
        else:
            with contextlib.suppress(Exception):
                self._client.disconnect()
        self.close()

    # --- operations ---------------------------------------------------------------------------------------

    async def subscribe(self, filters: list[str], qos: int = 1) -> None:
        """Subscribe to ``filters`` and wait for the SUBACK; a refused filter is an MqttError."""
        if not filters:
            return
        if self._stream is not None:
            self._mid = mid = self._mid % 65_535 + 1
            self._stream.send(subscribe_packet(mid, filters, qos, self.v5))
        else:
            rc, sent = self._client.subscribe([(f, qos) for f in filters])
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or sent is None:
                raise MqttError(f"MQTT subscribe failed: {paho.error_string(rc)}")
            mid = sent
        fut: asyncio.Future[list[bool]] = self._loop.create_future()
        self._subacks[mid] = fut
        try:
            codes = await asyncio.wait_for(fut, self.options.timeout_s)
        except TimeoutError as exc:
            raise MqttError("MQTT subscribe: no SUBACK in time") from exc
        finally:
            self._subacks.pop(mid, None)
        refused = [f for f, no in zip(filters, codes, strict=False) if no]
        if refused:
            raise MqttError(f"MQTT broker refused subscriptions: {refused}")

    def ack(self, mid: int, qos: int) -> None:
        """Send the PUBACK of one received message (from any thread); a no-op once the connection is gone.

        After a reconnect the broker redelivers what was not acknowledged, under packet ids of the new
        connection: acking an old id there could acknowledge the wrong message.
        """
        self.ack_many([mid], qos)

    def ack_many(self, mids: list[int], qos: int = 1) -> None:
        """Send the PUBACKs of several messages (from any thread); a no-op once the connection is gone."""
        if self.disconnected.done():
            return
        if threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(self.ack_many, mids, qos)
            return
        if self._stream is not None:
            if qos == 1:
                self._stream.send(b"".join([b"\x40\x02" + mid.to_bytes(2, "big") for mid in mids]))
            return
        ack = self._client.ack
        for mid in mids:
            ack(mid, qos)

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> int:
        """Queue one message for sending and return its packet id; MqttError when paho refuses it."""
        if self._stream is not None:
            if qos:
                raise MqttError("MQTT publish: the connection is on its fast path, which publishes at QoS 0 only")
            self._stream.send(publish_packet(topic, payload, self.v5))
            return 0
        info = self._client.publish(topic, payload, qos=qos)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MqttError(f"MQTT publish to {topic}: {paho.error_string(info.rc)}")
        return info.mid

    async def publish_acked(self, topic: str, payload: bytes, qos: int = 1, timeout_s: float | None = None) -> None:
        """Publish and wait until the broker took it (PUBACK at QoS 1, sent at QoS 0); MqttError otherwise."""
        fut: asyncio.Future[None] = self._loop.create_future()
        mid = self.publish(topic, payload, qos)
        self._pubacks[mid] = fut
        try:
            waiters: list[asyncio.Future[Any]] = [fut, self.disconnected]
            timeout = timeout_s or self.options.timeout_s
            done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._pubacks.pop(mid, None)
        if fut not in done:
            raise MqttError(f"MQTT publish to {topic}: the broker did not take it")
        fut.result()

    def pause_reading(self) -> None:
        """Stop reading from the socket (backpressure: the queue downstream is full)."""
        if self._sock is not None and not self._reading_paused:
            self._loop.remove_reader(self._sock)
            self._reading_paused = True

    def resume_reading(self) -> None:
        """Read from the socket again."""
        if self._sock is not None and self._reading_paused:
            self._loop.add_reader(self._sock, self._read)
            self._reading_paused = False
            self._loop.call_soon(self._read_more)  # bytes read but not handled, or in a TLS buffer

    # --- paho callbacks (loop thread) --------------------------------------------------------------------

    def _on_connect(self, _c: Any, _u: Any, flags: Any, reason: ReasonCode, _p: Any) -> None:
        if self._connected.done():
            return
        if reason.is_failure:
            cls = MqttAuthError if str(reason) in _AUTH_CODES else MqttError
            self._connected.set_exception(cls(f"MQTT broker refused the connection: {reason}"))
        else:
            self._connected.set_result(bool(flags.session_present))
            if self._want_stream:
                self._hand_over()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        if not self._connected.done():
            self._connected.set_exception(MqttError(f"MQTT connection lost during connect: {reason}"))
        if not self.disconnected.done():
            self.disconnected.set_result(str(reason))

    def _on_published(self, _c: Any, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        fut = self._pubacks.get(mid)
        if fut is not None and not fut.done():
            if reason.is_failure:
                fut.set_exception(MqttError(f"MQTT broker refused the message: {reason}"))
            else:
                fut.set_result(None)

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: list[ReasonCode], _p: Any) -> None:
        self._suback(mid, [c.is_failure for c in codes])

    def _suback(self, mid: int, refused: list[bool]) -> None:
        fut = self._subacks.get(mid)
        if fut is not None and not fut.done():
            fut.set_result(refused)

    def _hand_over(self) -> None:
        """Take the socket from paho, in paho's CONNACK callback: the packet read whole, nothing after it."""
        sock = self._sock
        for _ in range(4):
            if not self._client.want_write() or sock is None:
                break
            self._client.loop_write()
        if sock is None or self._client.want_write():
            return  # paho is still writing: it keeps the socket (the slower path, as correct)
        self._loop.remove_writer(sock)
        self._stream = Stream(
            sock, self._loop, self._on_message, self._stream_ended,
            lambda mid, codes: self._suback(mid, [c >= 0x80 for c in codes]), self.v5, self.options.keepalive_s,
        )  # fmt: skip
        stream = self._stream
        self._every_second(lambda: self._tick_step(stream), now=False)

    def _stream_ended(self, reason: str) -> None:
        if not self.disconnected.done():
            self.disconnected.set_result(reason)
        self._loop.call_soon(self.close)

    # --- socket plumbing ----------------------------------------------------------------------------------

    def _in_loop(self, fn: Callable[[Any], None], sock: Any) -> None:
        if threading.get_ident() == self._thread:
            fn(sock)
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, sock)

    def _read(self) -> None:
        try:
            budget = _BURST
            if self._stream is None:
                budget = self._read_paho()
            if self._stream is not None and budget > 0:
                self._read_stream(self._stream, budget)
        finally:
            if self._on_burst_end is not None:
                self._on_burst_end()

    def _read_paho(self) -> int:
        """Let paho read packets; returns the burst budget left when the fast path took over meanwhile."""
        client = self._client
        for n in range(_BURST):
            before = self._received
            rc = client.loop_read()
            if self._stream is not None:
                return _BURST - n - 1
            # stop at an empty socket (no message read), an error, or when the user paused reading
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._received == before or self._reading_paused:
                return 0
        # the burst limit, not an empty socket: more may wait (in a TLS buffer, unseen by epoll)
        self._loop.call_soon(self._read_more)
        return 0

    def _read_stream(self, stream: Stream, budget: int) -> None:
        """Handle what is buffered, then read and handle until the socket is empty or a limit is reached."""
        budget = stream.handle(budget)
        for _ in range(_READS):
            if budget <= 0 or self._sock is None or self._reading_paused or stream.ended:
                break
            if not stream.receive():  # nothing more now, or the connection is gone
                return
            budget = stream.handle(budget)
        if self._sock is not None and not self._reading_paused and not stream.ended:
            self._loop.call_soon(self._read_more)  # a limit: more may wait (TLS buffers too)

    def _read_more(self) -> None:
        if self._sock is not None and not self._reading_paused:
            self._read()

    def _write(self) -> None:
        self._client.loop_write()

    def _socket_open(self, sock: Any) -> None:
        self._sock = sock
        self._loop.add_reader(sock, self._read)
        self._every_second(self._misc_step, now=True)

    def _socket_close(self, sock: Any) -> None:
        if self._sock is None:
            return
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)
        self._sock = None
        if self._misc is not None:
            self._misc.cancel()

    def _register_write(self, sock: Any) -> None:
        if self._sock is not None:
            self._loop.add_writer(sock, self._write)

    def _unregister_write(self, sock: Any) -> None:
        if self._sock is not None:
            self._loop.remove_writer(sock)

    def _every_second(self, step: Callable[[], bool], now: bool) -> None:
        """Call ``step`` once a second (first ``now`` or after a second) until it returns False or we close;
        replaces the housekeeping running before (one chain at a time).

        Timer handles, not a task: cancelling one is immediate, so a loop closed right after us finds nothing
        pending, whichever way we were closed.
        """

        def run() -> None:
            mine = self._misc  # the handle running now
            if step() and mine is not None and not mine.cancelled():  # closed or replaced meanwhile?
                self._misc = self._loop.call_later(1.0, run)

        if self._misc is not None:
            self._misc.cancel()
        self._misc = self._loop.call_soon(run) if now else self._loop.call_later(1.0, run)

    @staticmethod
    def _tick_step(stream: Stream) -> bool:
        """The fast path's keepalive, while its connection lasts."""
        if stream.ended:
            return False
        stream.tick()
        return True

    def _misc_step(self) -> bool:
        """Keepalive pings and the broker-silence check live in paho's loop_misc, which wants a call a second."""
        if self._client.loop_misc() == MQTTErrorCode.MQTT_ERR_SUCCESS:
            return True
        if not self.disconnected.done():
            self.disconnected.set_result("keepalive")
        return False


class _TrackingContext(ssl.SSLContext):
    """A client TLS context that remembers its sockets: paho leaks the socket of a failed handshake."""

    def __new__(cls, cafile: str | None) -> _TrackingContext:
        return super().__new__(cls, ssl.PROTOCOL_TLS_CLIENT)

    def __init__(self, cafile: str | None) -> None:  # SSLContext is set up in __new__
        if cafile:
            self.load_verify_locations(cafile)
        else:
            self.load_default_certs()
        self._sockets: list[ssl.SSLSocket] = []

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        """Wrap as usual, and keep the result to close it with the connection."""
        wrapped = super().wrap_socket(sock, *args, **kwargs)
        self._sockets.append(wrapped)
        return wrapped

    def close_all(self) -> None:
        """Close every socket this context made."""
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()
        self._sockets.clear()
