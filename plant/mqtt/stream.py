"""A connection's steady state, read and written here instead of by paho: the client's fast path.

paho reads a packet with three system calls (type, length, body), decodes a PUBLISH into a message object with
an MQTT 5 property object, and writes each PUBACK with a system call of its own: for a stream of small messages
that costs more than everything a consumer does with them. So once connected (paho has just read the CONNACK
packet whole, and nothing after it) the client may hand the socket over to a ``Stream``: from then on paho is
no longer called, the socket is read here in large chunks and framed here, and what a subscriber sends
(SUBSCRIBE, PUBACKs, PINGREQs, QoS 0 PUBLISHes, DISCONNECT) is written here, merged into one send per loop turn.
Packets handled: PUBLISH at QoS 0 or 1 (to ``on_publish``), SUBACK (to ``on_suback``), PINGRESP, PUBACK and
UNSUBACK (nothing to do), DISCONNECT (the end); any other packet is a protocol error for a subscriber at QoS 1
or less."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from typing import Any

# topic (raw bytes), payload, QoS, packet id, DUP flag
PublishCallback = Callable[[bytes, bytes, int, int, bool], None]

RECV = 65_536  # bytes asked of the socket per read
PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"
_PUBLISH = 0x30
_SUBSCRIBE = 0x82
_SUBACK = 0x90
_QUIET = {0x40, 0xB0, 0xD0}  # PUBACK, UNSUBACK, PINGRESP: read, nothing to do
_DISCONNECT = 0xE0
_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class Malformed(Exception):
    """A packet that breaks the MQTT framing rules, or one a subscriber never gets."""


class Stream:
    """Reads, frames and writes one connection's packets after the hand-over.

    Args:
        sock: the connection's non-blocking socket (plain or TLS).
        loop: the event loop the socket is registered with.
        on_publish: called for each PUBLISH (topic, payload, QoS, packet id, DUP).
        on_end: called once with the reason when the connection is lost or ends.
        on_suback: called for each SUBACK (packet id, reason codes).
        v5: the connection speaks MQTT 5 (a PUBLISH carries properties).
        keepalive_s: send a PINGREQ after this long without sending; drop a peer silent 1.5 times as long.
    """

    def __init__(
        self,
        sock: Any,
        loop: asyncio.AbstractEventLoop,
        on_publish: PublishCallback,
        on_end: Callable[[str], None],
        on_suback: Callable[[int, list[int]], None],
        v5: bool,
        keepalive_s: int,
    ) -> None:
        self._sock = sock
        self._loop = loop
        self._on_publish = on_publish
        self._on_end = on_end
        self._on_suback = on_suback
        self._v5 = v5
        self._keepalive_s = keepalive_s
        self._parts: list[bytes] = []  # bytes read and not handled yet, in order
        self._have = 0  # their total size
        self._need = 1  # the size they must reach before handling can progress (a packet's full size)
        self._out = bytearray()  # bytes to send, not handed to the socket yet
        self._chunk = b""  # bytes handed to the socket whose send must be retried as they are (TLS)
        self._writing = False
        self.ended = False
        self.last_in = self.last_out = time.monotonic()

    # --- reading ------------------------------------------------------------------------------------------

    @property
    def buffered(self) -> bool:
        """Bytes were read that are not handled yet."""
        return self._have > 0

    def receive(self) -> bool:
        """Read once: True when bytes came, False when none wait or the connection is gone."""
        if self.ended:
            return False
        try:
            data = self._sock.recv(RECV)
        except _WOULD_BLOCK:
            return False
        except OSError:
            self.end("Connection lost")
            return False
        if not data:
            self.end("Connection lost")
            return False
        self.last_in = time.monotonic()
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
            while budget > 0 and pos < size and not self.ended:
                head = data[pos]
                i = pos + 1
                if i < size and data[i] < 0x80:  # one length byte: a packet under 128 bytes
                    length = data[i]
                    i += 1
                else:
                    length, i = varint(data, i, size)
                    if length < 0:
                        need = size - pos + 1
                        break
                end = i + length
                if end > size:
                    need = end - pos
                    break
                kind = head & 0xF0
                pos = end  # first: a callback that raises must not see the packet again
                if kind == _PUBLISH and head & 0x06 < 0x04:  # QoS 0 or 1
                    topic, payload, mid = self._publish(data, i, end, head & 0x06)
                    self._on_publish(topic, payload, (head >> 1) & 3, mid, head & 0x08 != 0)
                    budget -= 1
                elif kind == _SUBACK:
                    self._suback(data, i, end)
                elif kind == _DISCONNECT:
                    self.end("Server disconnect")
                elif kind not in _QUIET:
                    raise Malformed(f"packet type {kind >> 4} on a subscriber's stream")
        except Malformed:
            pos = size
            self.end("Protocol error")
        finally:
            rest = data[pos:] if pos else data
            self._parts = [rest] if rest else []
            self._have = len(rest)
            self._need = need
        return budget

    def _publish(self, data: bytes, i: int, end: int, qos_bits: int) -> tuple[bytes, bytes, int]:
        """Topic, payload and packet id of the PUBLISH whose variable header starts at ``i``."""
        if end - i < 2:
            raise Malformed("PUBLISH without a topic")
        p = i + 2 + ((data[i] << 8) | data[i + 1])
        topic = data[i + 2 : p]
        mid = 0
        if qos_bits:
            if p + 2 > end:
                raise Malformed("PUBLISH without a packet id")
            mid = (data[p] << 8) | data[p + 1]
            p += 2
        if self._v5:
            if p < end and data[p] == 0:  # no properties: the usual case
                p += 1
            else:
                plen, p = varint(data, p, end)
                if plen < 0:
                    raise Malformed("PUBLISH properties cut short")
                p += plen
        if p > end:
            raise Malformed("PUBLISH header longer than the packet")
        return topic, data[p:end], mid

    def _suback(self, data: bytes, i: int, end: int) -> None:
        if end - i < 3:
            raise Malformed("SUBACK without a packet id and codes")
        p = i + 2
        if self._v5:
            plen, p = varint(data, p, end)
            if plen < 0:
                raise Malformed("SUBACK properties cut short")
            p += plen
        self._on_suback((data[i] << 8) | data[i + 1], list(data[p:end]))

    # --- writing ------------------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queue bytes; they go out with everything else queued in this loop turn, in one send."""
        if self.ended:
            return
        self._out += data
        if not self._writing:
            self._writing = True
            self._loop.add_writer(self._sock, self.flush)

    def flush(self) -> None:
        """Send what is queued, as far as the socket takes it now."""
        while not self.ended and (self._chunk or self._out):
            if not self._chunk:
                self._chunk = bytes(self._out)
                self._out.clear()
            try:
                sent = self._sock.send(self._chunk)
            except _WOULD_BLOCK:
                return  # TLS retries the same bytes: they stay in _chunk
            except OSError:
                self.end("Connection lost")
                return
            self._chunk = self._chunk[sent:]
            self.last_out = time.monotonic()
            if self._chunk:
                return  # the socket is full: the writer is called again when it drains
        if self._writing:
            self._writing = False
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_writer(self._sock)

    def tick(self) -> None:
        """Keepalive, once a second: a PINGREQ after ``keepalive_s`` without sending, the end after silence."""
        if self._keepalive_s <= 0 or self.ended:
            return
        now = time.monotonic()
        if now - self.last_in >= 1.5 * self._keepalive_s:
            self.end("Keep alive timeout")
        elif now - self.last_out >= self._keepalive_s:
            self.last_out = now  # one PINGREQ per period, even while the socket is full
            self.send(PINGREQ)

    def end(self, reason: str) -> None:
        """The connection is over: tell the owner once (it closes the socket)."""
        if not self.ended:
            self.ended = True
            self._on_end(reason)


def varint(data: bytes, i: int, size: int) -> tuple[int, int]:
    """The MQTT variable byte integer at ``i``: (value, index after it), or (-1, i) when ``size`` comes first."""
    value = shift = 0
    for k in range(i, min(i + 4, size)):
        b = data[k]
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, k + 1
        shift += 7
    if size - i >= 4:
        raise Malformed("variable byte integer longer than 4 bytes")
    return -1, i


def publish_packet(topic: str, payload: bytes, v5: bool) -> bytes:
    """A QoS 0 PUBLISH packet."""
    name = topic.encode()
    body = len(name).to_bytes(2, "big") + name + (b"\x00" if v5 else b"") + payload
    return bytes([_PUBLISH]) + remaining_length(len(body)) + body


def subscribe_packet(mid: int, filters: list[str], qos: int, v5: bool) -> bytes:
    """A SUBSCRIBE packet for ``filters``, each at ``qos``."""
    body = mid.to_bytes(2, "big") + (b"\x00" if v5 else b"")
    for f in filters:
        name = f.encode()
        body += len(name).to_bytes(2, "big") + name + bytes([qos])
    return bytes([_SUBSCRIBE]) + remaining_length(len(body)) + body


def remaining_length(n: int) -> bytes:
    """``n`` as an MQTT variable byte integer."""
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)
