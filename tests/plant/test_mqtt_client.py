"""The MQTT client without a broker: against a scripted peer that splits packets anywhere; and its URL parser."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from plant.errors import BrokerUrlError, MqttError
from plant.mqtt import BrokerUrl, MqttClient, MqttOptions
from plant.mqtt.stream import publish_packet, remaining_length

# --- reading, against a scripted peer that splits packets anywhere ------------------------------------------


def _packet(head: int, body: bytes) -> bytes:
    return bytes([head]) + remaining_length(len(body)) + body


def _publish(topic: bytes, payload: bytes, qos: int, mid: int, dup: bool, props: bytes = b"") -> bytes:
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += mid.to_bytes(2, "big")
    body += remaining_length(len(props)) + props + payload
    return _packet(0x30 | (0x08 if dup else 0) | qos << 1, body)


Published = tuple[bytes, bytes, int, int, bool]

# QoS 0 and 1, DUP, MQTT 5 properties (payload format, user property), an empty payload, remaining lengths of
# one, two and three bytes (around 127 and 16,383), a payload larger than one socket read
MESSAGES: list[Published] = [
    (b"plant/a", b'{"v": 1}', 1, 1, False),
    (b"plant/b", b"", 0, 0, False),
    (b"plant/c", b"x" * 115, 1, 2, True),
    (b"plant/d", b"y" * 116, 1, 3, False),
    (b"plant/e", b"z" * 16_370, 1, 4, False),
    (b"plant/f", bytes(range(256)) * 800, 1, 5, False),
    (b"plant/g", b"last", 0, 0, True),
]
PROPS = {2: b"\x01\x01", 3: b"\x26\x00\x01k\x00\x01v"}


class ScriptedPeer:
    """Plays the broker's side of one MQTT 5 connection: CONNACK, SUBACK, then the bytes it is given.

    Packets from the client are read as they come: PUBACK packet ids and PINGREQs are recorded.
    """

    def __init__(self) -> None:
        self.acked: list[int] = []
        self.pings = 0
        self.writer: asyncio.StreamWriter | None = None
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def send(self, data: bytes, cuts: list[int]) -> None:
        """Write ``data`` in pieces ending at ``cuts``, letting the client read between pieces."""
        assert self.writer is not None
        start = 0
        for end in [*cuts, len(data)]:
            self.writer.write(data[start:end])
            await self.writer.drain()
            await asyncio.sleep(0.002)
            start = end

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = (await reader.readexactly(1))[0]
                length = shift = 0
                while True:
                    b = (await reader.readexactly(1))[0]
                    length |= (b & 0x7F) << shift
                    shift += 7
                    if b < 0x80:
                        break
                body = await reader.readexactly(length)
                kind = head & 0xF0
                if kind == 0x10:  # CONNECT
                    writer.write(_packet(0x20, b"\x00\x00\x00"))
                elif kind == 0x80:  # SUBSCRIBE: grant QoS 1
                    writer.write(_packet(0x90, body[:2] + b"\x00\x01"))
                elif kind == 0x40:  # PUBACK
                    self.acked.append(int.from_bytes(body[:2], "big"))
                elif kind == 0xC0:  # PINGREQ: left unanswered
                    self.pings += 1


@dataclass
class Session:
    """A client connected to a scripted peer and subscribed; what it received, and the counts after each burst."""

    peer: ScriptedPeer
    client: MqttClient
    got: list[Published] = field(default_factory=list)
    bursts: list[int] = field(default_factory=list)


@contextlib.asynccontextmanager
async def session(keepalive_s: int = 10, stream: bool = True) -> AsyncIterator[Session]:
    peer = ScriptedPeer()
    port = await peer.start()
    opts = MqttOptions("127.0.0.1", port, "framing-test", protocol="5", keepalive_s=keepalive_s, timeout_s=5)
    got: list[Published] = []
    bursts: list[int] = []

    def on_publish(topic: bytes, payload: bytes, qos: int, mid: int, dup: bool) -> None:
        got.append((topic, payload, qos, mid, dup))

    try:
        async with MqttClient(opts, on_publish, lambda: bursts.append(len(got)), stream=stream) as client:
            await client.subscribe(["plant/#"])
            yield Session(peer, client, got, bursts)
    finally:
        await peer.stop()


async def until(done: Callable[[], bool]) -> None:
    for _ in range(500):
        if done():
            return
        await asyncio.sleep(0.01)


def _stream() -> tuple[bytes, list[int]]:
    """Every message as PUBLISH packets with a PINGRESP among them, and cut points: each byte of the small
    packets on its own, the large ones in uneven pieces."""
    data = b""
    cuts: list[int] = []
    for i, (topic, payload, qos, mid, dup) in enumerate(MESSAGES):
        pkt = _publish(topic, payload, qos, mid, dup, PROPS.get(mid, b""))
        if i == 3:
            pkt += b"\xd0\x00"  # PINGRESP among the messages
        step = 1 if len(pkt) < 300 else 7_919
        cuts.extend(range(len(data) + step, len(data) + len(pkt), step))
        data += pkt
    return data, cuts


@pytest.mark.parametrize("stream", [True, False], ids=["fast-path", "paho-reads"])
def test_publish_packets_cut_anywhere_arrive_whole_in_order_and_are_acked(stream: bool) -> None:
    async def main() -> None:
        async with session(stream=stream) as s:
            assert s.client.streaming is stream
            data, cuts = _stream()
            await s.peer.send(data, cuts)
            await until(lambda: len(s.got) == len(MESSAGES))
            assert s.got == MESSAGES
            s.client.ack_many([m[3] for m in s.got if m[2] == 1])
            await until(lambda: len(s.peer.acked) == 5)
            assert s.peer.acked == [1, 2, 3, 4, 5]
            assert not s.client.disconnected.done()

    asyncio.run(main())


def _numbered(n: int, qos: int) -> bytes:
    return b"".join(_publish(b"plant/n", str(i).encode(), qos, i + 1 if qos else 0, False) for i in range(n))


def test_one_read_of_many_packets_is_handed_on_in_bursts_of_at_most_256() -> None:
    async def main() -> None:
        async with session() as s:
            await s.peer.send(_numbered(600, 1), [])  # one write: the client reads it in one or a few reads
            await until(lambda: len(s.got) == 600)
            assert [int(m[1]) for m in s.got] == list(range(600))
            sizes = [b - a for a, b in zip([0, *s.bursts], s.bursts, strict=False) if b > a]
            assert max(sizes) <= 256

    asyncio.run(main())


@pytest.mark.parametrize("stream", [True, False], ids=["fast-path", "paho-reads"])
def test_a_malformed_publish_ends_the_connection(stream: bool) -> None:
    async def main() -> None:
        async with session(stream=stream) as s:
            bad = _packet(0x32, b"\x00\x50plant/x")  # topic length 80 in a 9-byte packet
            await s.peer.send(_publish(b"plant/ok", b"1", 1, 1, False) + bad, [])
            assert await asyncio.wait_for(s.client.disconnected, 5) == "Protocol error"
            assert s.got == [(b"plant/ok", b"1", 1, 1, False)]

    asyncio.run(main())


@pytest.mark.parametrize("stream", [True, False], ids=["fast-path", "paho-reads"])
def test_messages_keep_the_connection_alive_and_silence_ends_it(stream: bool) -> None:
    """With PINGREQs unanswered, a peer that keeps sending is alive, and one that goes silent is dropped."""

    async def main() -> None:
        async with session(keepalive_s=1, stream=stream) as s:
            for i in range(32):  # 3.2 s of traffic, 3 keepalive periods
                await s.peer.send(_publish(b"plant/k", b"%d" % i, 0, 0, False), [])
                await asyncio.sleep(0.1)
            assert len(s.got) == 32
            assert s.peer.pings >= 1
            assert not s.client.disconnected.done()
            assert await asyncio.wait_for(s.client.disconnected, 5) == "Keep alive timeout"

    asyncio.run(main())


def test_packets_read_before_a_pause_are_handed_on_after_resume() -> None:
    async def main() -> None:
        async with session() as s:
            s.client._on_burst_end = s.client.pause_reading  # backpressure after the first burst
            await s.peer.send(_numbered(600, 0), [])  # all of it in the client's buffer after one or two reads
            await asyncio.sleep(0.2)
            assert 0 < len(s.got) < 600
            s.client._on_burst_end = None
            s.client.resume_reading()  # nothing new comes on the socket: the buffered rest must still come
            await until(lambda: len(s.got) == 600)
            assert [int(m[1]) for m in s.got] == list(range(600))

    asyncio.run(main())


@pytest.mark.parametrize("stream", [True, False], ids=["fast-path", "paho-reads"])
def test_closing_leaves_no_task_for_the_loop_to_destroy(stream: bool) -> None:
    """However the client is closed (``close()`` from sync code too), a loop ending right after finds nothing of
    it pending ("Task was destroyed but it is pending")."""

    async def main() -> None:
        async with session(stream=stream) as s:
            assert s.client.streaming is stream
            s.client.close()
            assert [t for t in asyncio.all_tasks() if "MqttClient" in t.get_coro().__qualname__] == []

    asyncio.run(main())


def test_nobody_listening_is_an_mqtt_error() -> None:
    async def main() -> None:
        with pytest.raises(MqttError, match="cannot connect"):
            async with MqttClient(MqttOptions("127.0.0.1", 1, "nobody", timeout_s=2), lambda *_: None):
                pass

    asyncio.run(main())


# --- broker URLs -------------------------------------------------------------------------------------------


def test_broker_url_parts_defaults_and_options() -> None:
    url = BrokerUrl.parse("mqtts://u:p%40ss@broker:8884?ca_file=/etc/ca.pem&client_id=gw-1")
    assert url == BrokerUrl("broker", 8884, True, "u", "p@ss", "/etc/ca.pem", "gw-1")
    assert url.redacted() == "mqtts://u:***@broker:8884"
    assert BrokerUrl.parse("mqtt://10.0.0.1") == BrokerUrl("10.0.0.1", 1883)
    assert BrokerUrl.parse("mqtts://h").port == 8883
    opts = MqttOptions.from_url(url, "fallback-id", keepalive_s=5)
    assert (opts.host, opts.port, opts.tls, opts.ca_file, opts.client_id, opts.keepalive_s) == (
        "broker", 8884, True, "/etc/ca.pem", "gw-1", 5,
    )  # fmt: skip
    assert MqttOptions.from_url("mqtt://h", "fallback-id").client_id == "fallback-id"
    # a connection with an id of its own keeps it (an ingest worker must not take the URL's session)
    own = MqttOptions.from_url(url, "ingest-1", own_id=True)
    assert (own.client_id, own.username, own.ca_file) == ("ingest-1", "u", "/etc/ca.pem")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://h:1883", "must start with mqtt://"),
        ("mqtt://", "has no host"),
        ("mqtt://h:99999", "port"),
        ("mqtt://h?cafile=x", "unknown option"),
    ],
)
def test_bad_broker_urls_say_why(url: str, reason: str) -> None:
    with pytest.raises(BrokerUrlError, match=reason):
        BrokerUrl.parse(url)
    with pytest.raises(ValueError, match=reason):  # settings validators see a ValueError
        BrokerUrl.parse(url)


def test_a_qos0_publish_packet_reads_back_as_sent() -> None:
    for v5, props in ((False, b""), (True, b"\x00")):
        packet = publish_packet("plant/x", b"42", v5)
        assert packet == bytes([0x30, 2 + 7 + len(props) + 2]) + b"\x00\x07plant/x" + props + b"42"
    assert remaining_length(321) == b"\xc1\x02"
