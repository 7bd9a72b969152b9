"""A small asyncio wrapper around paho-mqtt 2: the socket is driven by the event loop, like aiomqtt v2.

paho reads and writes on the loop thread (``add_reader``/``add_writer``), so its callbacks already run on the
loop; only ``connect`` runs in an executor (DNS, TCP and TLS handshakes block), and whatever paho calls from
there is handed to the loop with ``call_soon_threadsafe``. Messages are not queued here: ``on_publish`` is a
plain callback that the connector keeps short. Acknowledgements are manual (``ack``, ``ack_many``).

Reading: paho reads a packet with three system calls (type, length, body) and decodes a PUBLISH into a message
object with an MQTT 5 property object, which costs more than everything the agent does with the message after.
So the socket is read here in large chunks and packets are framed here (``_Framer``): a PUBLISH at QoS 0 or 1
goes straight to ``on_publish`` (topic, payload, QoS, packet id, DUP), every other packet (CONNACK, SUBACK,
PINGRESP, DISCONNECT, QoS 2 flows) is handed to paho's own handler, and paho's receive clock (its keepalive
check) is kept up to date. MQTT 5 PUBLISH properties are skipped: the agent asks for no topic aliases, and
none of the others changes what a message means to it. Should paho's internals not be the expected ones,
paho reads the socket itself (``loop_read``), one packet per call.

Bursts: ``_read`` handles up to ``_BURST`` PUBLISH packets per readable event, then calls ``on_burst_end``
once: the connector hands the whole burst on as one batch. ``ack_many`` queues a batch's PUBACKs as one
packet, and queued PUBACKs are merged for one ``send`` (``_coalesce_pubacks``) instead of one system call each.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.errors import ConnectorError, SecurityError

# topic (raw bytes), payload, QoS, packet id, DUP flag
PublishCallback = Callable[[bytes, bytes, int, int, bool], None]
_BURST = 256  # PUBLISH packets handled per readable event at most: the loop must still serve others
_RECV = 65_536  # bytes asked of the socket per read
_READS = 64  # socket reads per readable event at most (a large packet takes several)
_PUBLISH = 0x30
_PUBACK = 0x40

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
        protocol: "5", "3.1.1", or "auto" (MQTT 5, falling back to 3.1.1 when the broker refuses 5).
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


class MqttClient:
    """One connection to a broker: connect, subscribe, receive, ack, publish; then throw it away.

    Args:
        options: where and how to connect.
        on_publish: called on the loop thread for every PUBLISH received (topic, payload, QoS, packet id, DUP).
        on_burst_end: called on the loop thread after each socket read burst (once per readable event).
        framing: frame packets here (see the module docstring); False leaves all reading to paho.
    """

    def __init__(
        self,
        options: MqttOptions,
        on_publish: PublishCallback,
        on_burst_end: Callable[[], None] | None = None,
        *,
        framing: bool = True,
    ) -> None:
        self.options = options
        self._on_burst_end = on_burst_end
        self._received = 0
        self.v5 = options.protocol != "3.1.1"
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._connected: asyncio.Future[bool] = self._loop.create_future()
        self.disconnected: asyncio.Future[str] = self._loop.create_future()
        self._subacks: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._misc: asyncio.Task[None] | None = None
        self._sock: Any = None
        self._reading_paused = False
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=options.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if self.v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if self.v5 else False,
            reconnect_on_failure=False,
            manual_ack=True,
        )
        self._tls: _TrackingContext | None = None
        if options.tls:
            self._tls = _TrackingContext(options.ca_file)
            client.tls_set_context(self._tls)
        if options.username is not None:
            client.username_pw_set(options.username, options.password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe

        def deliver(_c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
            self._received += 1
            on_publish(msg._topic, bytes(msg.payload), msg.qos, msg.mid, bool(msg.dup))

        client.on_message = deliver
        client.on_socket_open = lambda _c, _u, sock: self._in_loop(self._socket_open, sock)
        client.on_socket_close = lambda _c, _u, sock: self._in_loop(self._socket_close, sock)
        client.on_socket_register_write = lambda _c, _u, sock: self._in_loop(self._register_write, sock)
        client.on_socket_unregister_write = lambda _c, _u, sock: self._in_loop(self._unregister_write, sock)
        self._client = client
        self._framer = _Framer(client, on_publish, self.v5) if framing and _Framer.fits(client) else None

    # --- connection ---------------------------------------------------------------------------------------

    async def connect(self) -> bool:
        """Connect and wait for CONNACK; returns whether the broker still had our session."""
        opts = self.options
        props: Properties | None = None
        if self.v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = opts.session_expiry_s
            props.ReceiveMaximum = opts.receive_maximum
        try:
            await asyncio.wait_for(self._loop.run_in_executor(None, self._blocking_connect, props), opts.timeout_s)
            return await asyncio.wait_for(asyncio.shield(self._connected), opts.timeout_s)
        except (TimeoutError, OSError, ssl.SSLError, ValueError) as exc:
            self.close()
            raise ConnectorError(f"MQTT {opts.host}:{opts.port}: cannot connect: {exc or type(exc).__name__}") from exc
        except ConnectorError:
            self.close()
            raise

    def _blocking_connect(self, props: Properties | None) -> None:
        opts = self.options
        if self.v5:
            self._client.connect(opts.host, opts.port, keepalive=opts.keepalive_s, clean_start=False, properties=props)
        else:  # 3.1.1: the persistent session comes from clean_session=False on the client
            self._client.connect(opts.host, opts.port, keepalive=opts.keepalive_s)

    def close(self) -> None:
        """Drop the connection now (no DISCONNECT: the broker keeps the session and our un-acked messages)."""
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
        for hook in ("open", "close", "register_write", "unregister_write"):
            setattr(self._client, f"on_socket_{hook}", None)
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
        with contextlib.suppress(Exception):
            self._client.disconnect()
        self.close()

    # --- operations ---------------------------------------------------------------------------------------

    async def subscribe(self, filters: list[str], qos: int = 1) -> None:
        """Subscribe to ``filters`` and wait for the SUBACK; a refused filter is a ConnectorError."""
        if not filters:
            return
        rc, mid = self._client.subscribe([(f, qos) for f in filters])
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise ConnectorError(f"MQTT subscribe failed: {paho.error_string(rc)}")
        fut: asyncio.Future[list[ReasonCode]] = self._loop.create_future()
        self._subacks[mid] = fut
        try:
            codes = await asyncio.wait_for(fut, self.options.timeout_s)
        except TimeoutError as exc:
            raise ConnectorError("MQTT subscribe: no SUBACK in time") from exc
        finally:
            self._subacks.pop(mid, None)
        refused = [f for f, c in zip(filters, codes, strict=False) if c.is_failure]
        if refused:
            raise ConnectorError(f"MQTT broker refused subscriptions: {refused}")

    def ack(self, mid: int, qos: int) -> None:
        """Send the PUBACK of one received message (from any thread); a no-op once the connection is gone.

        After a reconnect the broker redelivers what was not acknowledged, under packet ids of the new
        connection: acking an old id there could acknowledge the wrong message.
        """
        if self.disconnected.done():
            return
        if threading.get_ident() == self._thread:
            self._client.ack(mid, qos)
        else:
            self._loop.call_soon_threadsafe(self._client.ack, mid, qos)

    def ack_many(self, mids: list[int], qos: int = 1) -> None:
        """Send the PUBACKs of several messages (from any thread); a no-op once the connection is gone."""
        if self.disconnected.done():
            return
        if threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(self.ack_many, mids, qos)
            return
        if qos == 1 and len(mids) > 1 and self._framer is not None:
            # one queued packet of PUBACKs, as _coalesce_pubacks would merge them, instead of one queue entry
            # (and a paho call chain) per message
            data = b"".join([b"\x40\x02" + mid.to_bytes(2, "big") for mid in mids])
            self._client._packet_queue(_PUBACK, data, 0, 1)
            return
        ack = self._client.ack
        for mid in mids:
            ack(mid, qos)

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        """Queue one message for sending."""
        self._client.publish(topic, payload, qos=qos)

    def pause_reading(self) -> None:
        """Stop reading from the socket (backpressure: the queue downstream is full)."""
        if self._sock is not None and not self._reading_paused:
            self._loop.remove_reader(self._sock)
            self._reading_paused = True

    def resume_reading(self) -> None:
        """Read from the socket again (and first handle what was read but not handled yet)."""
        if self._sock is not None and self._reading_paused:
            self._loop.add_reader(self._sock, self._read)
            self._reading_paused = False
            if self._framer is not None and self._framer.buffered:
                self._loop.call_soon(self._read_more)

    # --- paho callbacks (loop thread) --------------------------------------------------------------------

    def _on_connect(self, _c: Any, _u: Any, flags: Any, reason: ReasonCode, _p: Any) -> None:
        if self._connected.done():
            return
        if reason.is_failure:
            cls = SecurityError if str(reason) in _AUTH_CODES else ConnectorError
            self._connected.set_exception(cls(f"MQTT broker refused the connection: {reason}"))
        else:
            self._connected.set_result(bool(flags.session_present))

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        if not self._connected.done():
            self._connected.set_exception(ConnectorError(f"MQTT connection lost during connect: {reason}"))
        if not self.disconnected.done():
            self.disconnected.set_result(str(reason))

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: list[ReasonCode], _p: Any) -> None:
        fut = self._subacks.get(mid)
        if fut is not None and not fut.done():
            fut.set_result(codes)

    # --- socket plumbing ----------------------------------------------------------------------------------

    def _in_loop(self, fn: Callable[[Any], None], sock: Any) -> None:
        if threading.get_ident() == self._thread:
            fn(sock)
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, sock)

    def _read(self) -> None:
        try:
            if self._framer is not None:
                self._read_framed(self._framer)
            else:
                self._read_paho()
        finally:
            if self._on_burst_end is not None:
                self._on_burst_end()

    def _read_framed(self, framer: _Framer) -> None:
        """Handle what is buffered, then read and handle until the socket is empty or a limit is reached."""
        budget = framer.handle(_BURST)
        for _ in range(_READS):
            if budget <= 0 or self._sock is None or self._reading_paused:
                break
            if not framer.receive():  # nothing more now, or the connection is gone (paho has been told)
                return
            budget = framer.handle(budget)
        if self._sock is not None and not self._reading_paused:  # a limit: more may wait (TLS buffers too)
            self._loop.call_soon(self._read_more)

    def _read_paho(self) -> None:
        client = self._client
        for _ in range(_BURST):
            before = self._received
            rc = client.loop_read()
            # stop at an empty socket (no message read), an error, or when the connector paused reading
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._received == before or self._reading_paused:
                break
        else:  # the burst limit, not an empty socket: more may wait (in a TLS buffer, unseen by epoll)
            self._loop.call_soon(self._read_more)

    def _read_more(self) -> None:
        if self._sock is not None and not self._reading_paused:
            self._read()

    def _write(self) -> None:
        _coalesce_pubacks(self._client)
        self._client.loop_write()

    def _socket_open(self, sock: Any) -> None:
        self._sock = sock
        self._loop.add_reader(sock, self._read)
        self._misc = self._loop.create_task(self._misc_loop())

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

    async def _misc_loop(self) -> None:
        # Keepalive pings and the broker-silence check live in loop_misc, which wants a call every second.
        while self._client.loop_misc() == MQTTErrorCode.MQTT_ERR_SUCCESS:  # noqa: ASYNC110
            await asyncio.sleep(1)
        if not self.disconnected.done():
            self.disconnected.set_result("keepalive")


class _Malformed(Exception):
    """A packet that breaks the MQTT framing rules."""


class _Framer:
    """MQTT packets out of socket reads: PUBLISH at QoS 0 or 1 to ``on_publish``, any other packet to paho.

    Args:
        client: the paho client whose socket is read and whose handlers take the other packets.
        on_publish: called for each PUBLISH (topic, payload, QoS, packet id, DUP).
        v5: the connection speaks MQTT 5 (a PUBLISH carries properties).
    """

    __slots__ = ("_client", "_have", "_need", "_on_publish", "_parts", "_v5")

    def __init__(self, client: paho.Client, on_publish: PublishCallback, v5: bool) -> None:
        self._client = client
        self._on_publish = on_publish
        self._v5 = v5
        self._parts: list[bytes] = []  # bytes read and not handled yet, in order
        self._have = 0  # their total size
        self._need = 1  # the size they must reach before handling can progress (a packet's full size)

    @staticmethod
    def fits(client: paho.Client) -> bool:
        """Whether paho's private reading and sending state is the one this was written against (paho 2.x)."""
        packet = getattr(client, "_in_packet", None)
        methods = ("_packet_handle", "_loop_rc_handle", "_sock_recv", "_packet_queue")
        return (
            isinstance(packet, dict)
            and set(packet) == set(_fresh_in_packet())
            and all(callable(getattr(client, m, None)) for m in methods)
            and isinstance(getattr(client, "_last_bytes_received", None), float)
            and getattr(paho, "time_func", None) is time.monotonic  # the clock of _last_bytes_received
        )

    @property
    def buffered(self) -> bool:
        """Bytes were read that are not handled yet."""
        return self._have > 0

    def receive(self) -> bool | None:
        """Read once: True when bytes came, False when none wait, None when the connection is lost."""
        client = self._client
        try:
            data = client._sock_recv(_RECV)  # TLS "want read/write" become BlockingIOError here
        except BlockingIOError:
            return False
        except OSError:
            client._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
            return None
        if not data:
            client._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
            return None
        client._last_bytes_received = time.monotonic()  # paho's keepalive check reads it
        self._parts.append(data)
        self._have += len(data)
        return True

    def handle(self, budget: int) -> int:
        """Handle the complete packets buffered, at most ``budget`` PUBLISH packets; returns the budget left."""
        if self._have < self._need:
            return budget
        parts = self._parts
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        size = len(data)
        pos = 0
        need = 1
        try:
            while budget > 0 and pos < size:
                head = data[pos]
                i = pos + 1
                if i < size and data[i] < 0x80:  # one length byte: a packet under 128 bytes
                    length = data[i]
                    i += 1
                else:
                    length, i = _varint(data, i, size)
                    if length < 0:
                        need = size - pos + 1
                        break
                end = i + length
                if end > size:
                    need = end - pos
                    break
                if head & 0xF0 == _PUBLISH and head & 0x06 < 0x04:  # QoS 0 or 1
                    topic, payload, mid = self._publish(data, i, end, head & 0x06)
                    pos = end  # first: a callback that raises must not see the packet again
                    self._on_publish(topic, payload, (head >> 1) & 3, mid, head & 0x08 != 0)
                    budget -= 1
                else:
                    pos = end
                    if not self._to_paho(head, data[i:end]):
                        pos = size  # the connection is gone: what follows is moot
        except _Malformed:
            pos = size
            self._client._loop_rc_handle(MQTTErrorCode.MQTT_ERR_PROTOCOL)
        finally:
            rest = data[pos:] if pos else data
            self._parts = [rest] if rest else []
            self._have = len(rest)
            self._need = need
        return budget

    def _publish(self, data: bytes, i: int, end: int, qos_bits: int) -> tuple[bytes, bytes, int]:
        """Topic, payload and packet id of the PUBLISH whose variable header starts at ``i``."""
        if end - i < 2:
            raise _Malformed("PUBLISH without a topic")
        p = i + 2 + ((data[i] << 8) | data[i + 1])
        topic = data[i + 2 : p]
        mid = 0
        if qos_bits:
            if p + 2 > end:
                raise _Malformed("PUBLISH without a packet id")
            mid = (data[p] << 8) | data[p + 1]
            p += 2
        if self._v5:
            if p < end and data[p] == 0:  # no properties: the usual case
                p += 1
            else:
                plen, p = _varint(data, p, end)
                if plen < 0:
                    raise _Malformed("PUBLISH properties cut short")
                p += plen
        if p > end:
            raise _Malformed("PUBLISH header longer than the packet")
        return topic, data[p:end], mid

    def _to_paho(self, head: int, body: bytes) -> bool:
        """Let paho handle one packet as if it had read it; False when the connection is gone after it."""
        client = self._client
        packet = _fresh_in_packet()
        packet.update(command=head, have_remaining=1, remaining_length=len(body), packet=bytearray(body))
        client._in_packet = packet
        try:
            rc = client._packet_handle()
        except MalformedPacket:
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        finally:
            client._in_packet = _fresh_in_packet()
        if rc > 0:
            client._loop_rc_handle(rc)
        return client.socket() is not None


def _varint(data: bytes, i: int, size: int) -> tuple[int, int]:
    """The MQTT variable byte integer at ``i``: (value, index after it), or (-1, i) when ``size`` comes first."""
    value = shift = 0
    for k in range(i, min(i + 4, size)):
        b = data[k]
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, k + 1
        shift += 7
    if size - i >= 4:
        raise _Malformed("variable byte integer longer than 4 bytes")
    return -1, i


def _fresh_in_packet() -> Any:
    """paho's reading state between packets (``Client._in_packet``, a private TypedDict of paho's)."""
    return {
        "command": 0,
        "have_remaining": 0,
        "remaining_count": [],
        "remaining_mult": 1,
        "remaining_length": 0,
        "packet": bytearray(b""),
        "to_process": 0,
        "pos": 0,
    }


def _coalesce_pubacks(client: paho.Client) -> None:
    """Merge runs of queued, unsent PUBACKs into one packet buffer: one ``send`` for a burst of acks.

    paho writes each queued packet with its own system call. A PUBACK carries no callback (only QoS 0 PUBLISH
    packets do), so concatenating their bytes changes nothing but the number of writes. paho's queue is
    private: if its shape is not the one expected, nothing is merged.
    """
    queue = getattr(client, "_out_packet", None)
    if queue is None or len(queue) < 2:
        return
    merged: list[Any] = []
    run: list[Any] = []
    for pkt in queue:
        if (pkt.get("command", 0) & 0xF0) == _PUBACK and pkt.get("pos") == 0:
            run.append(pkt)
            continue
        _flush_run(run, merged)
        merged.append(pkt)
    _flush_run(run, merged)
    if len(merged) != len(queue):
        queue.clear()
        queue.extend(merged)


def _flush_run(run: list[Any], merged: list[Any]) -> None:
    if len(run) > 1:
        data = b"".join(bytes(p["packet"]) for p in run)
        merged.append({**run[0], "packet": data, "to_process": len(data), "pos": 0})
    else:
        merged.extend(run)
    run.clear()


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
