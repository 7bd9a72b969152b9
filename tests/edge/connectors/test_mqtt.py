"""MQTT connector on the machine's Mosquitto: JSON topics, manual ack, redelivery, bad input, reconnect."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from edge_agent.connectors.factory import build_connectors
from edge_agent.connectors.mqtt import MqttConnector
from plant.site import Site
from tests.mqtt_peer import MqttPeer

from .conftest import Collector, free_port, one_machine_site, running

pytestmark = pytest.mark.mosquitto

T0 = 1_700_000_000


def mqtt_site(url: str, bindings: dict[str, dict[str, Any]], client_id: str, **source: Any) -> Site:
    props = {name: {"dtype": "string"} if name == "kind" else {} for name in bindings}
    spec = {"kind": "mqtt", "url": url, "client_id": client_id, **source}
    return one_machine_site("mq", spec, props, bindings)


def connector(site: Site, **settings: Any) -> MqttConnector:
    ns = type(
        "S", (), {"backoff_initial_s": 0.1, "backoff_cap_s": 0.5, "max_payload_bytes": 4096, **settings}
    )
    (conn,) = build_connectors(site, ns)
    assert isinstance(conn, MqttConnector)
    return conn


@pytest.fixture
def publisher(mqtt_broker: tuple[str, int]) -> Iterator[Any]:
    with MqttPeer(*mqtt_broker) as peer:
        yield peer.publish


@pytest.fixture
def url(mqtt_broker: tuple[str, int]) -> str:
    return f"mqtt://{mqtt_broker[0]}:{mqtt_broker[1]}"


async def connected(conn: MqttConnector) -> None:
    await Collector().wait_for(lambda: conn.status()["connected"] is True)


def test_json_topics_exact_and_wildcard(url: str, topic_prefix: str, publisher: Any) -> None:
    p = topic_prefix
    site = mqtt_site(
        url,
        {
            "cur": {"topic": f"{p}/m1/telemetry", "path": "motor.current", "ts_path": "ts"},
            "kind": {"topic": f"{p}/m1/telemetry", "path": "type", "ts_path": "ts"},
            "vib": {"topic": f"{p}/+/vib", "path": "rms"},
        },
        client_id=f"{p}-agent",
    )

    async def main() -> None:
        conn = connector(site)
        sink = Collector()
        async with running(conn.run(sink)):
            await connected(conn)
            publisher(f"{p}/m1/telemetry", json.dumps({"ts": T0, "motor": {"current": 3.5}, "type": "L"}))
            publisher(f"{p}/m7/vib", json.dumps([{"rms": 0.1}, {"rms": 0.2}]))
            await sink.wait_for(lambda: len(sink.readings) == 4)
        got = {(r.prop, r.raw, r.source_ts) for r in sink.readings}
        assert got == {
            ("cur", 3.5, T0 * 10**6),
            ("kind", "L", T0 * 10**6),
            ("vib", 0.1, None),
            ("vib", 0.2, None),
        }
        assert all(b.ack is not None for b in sink.batches)
        assert conn.status()["values"] == 4

    asyncio.run(main())


def test_unacked_message_is_redelivered_after_reconnect(url: str, topic_prefix: str, publisher: Any) -> None:
    p = topic_prefix
    site = mqtt_site(url, {"v": {"topic": f"{p}/v", "path": "v"}}, client_id=f"{p}-agent")

    async def main() -> None:
        first = connector(site)
        keep = Collector(ack=False)  # the outbox never confirmed: no PUBACK
        async with running(first.run(keep)):
            await connected(first)
            for i in range(3):
                publisher(f"{p}/v", json.dumps({"v": i}))
            await keep.wait_for(lambda: len(keep.readings) == 3)
        keep.batches[0].ack()  # too late: that connection is gone, so this must not ack anything

        second = connector(site)
        acked = Collector()
        async with running(second.run(acked)):
            await acked.wait_for(lambda: len(acked.readings) == 3)
            await asyncio.sleep(0.3)
        assert sorted(r.raw for r in acked.readings) == [0, 1, 2]

        third = connector(site)
        after = Collector()
        async with running(third.run(after)):
            await connected(third)
            publisher(f"{p}/v", json.dumps({"v": 99}))
            await after.wait_for(lambda: len(after.readings) >= 1)
            await asyncio.sleep(0.3)
        assert [r.raw for r in after.readings] == [99]  # everything before was acked once durable

    asyncio.run(main())


def test_bad_input_is_rejected_acked_and_the_connector_goes_on(
    url: str, topic_prefix: str, publisher: Any
) -> None:
    p = topic_prefix
    site = mqtt_site(url, {"v": {"topic": f"{p}/v", "path": "v", "ts_path": "ts"}}, client_id=f"{p}-agent")
    bad = [
        b"{oops",
        b'{"ts": 1700000000, "v": "warm"}',
        b'{"ts": 1700000000, "v": NaN}',
        b"\xff" * 10,
        b'{"v": 1, "x": "' + b"y" * 5000 + b'"}',
        b'{"ts": "later", "v": 1}',
        b'{"ts": 1700000000}',
    ]

    async def main() -> None:
        conn = connector(site)
        sink = Collector()
        async with running(conn.run(sink)):
            await connected(conn)
            for payload in bad:
                publisher(f"{p}/v", payload)
            publisher(f"{p}/v", b'{"ts": 1700000000, "v": 5}')
            # one batch per socket-read burst: several messages may share one
            await sink.wait_for(lambda: len(sink.rejected) == len(bad) and len(sink.readings) == 1)
            assert conn.status()["connected"] is True
        reasons = [r for r, _ in sink.rejected]
        assert reasons == [
            "malformed_json",
            "wrong_type",
            "malformed_json",
            "malformed_json",
            "payload_too_large",
            "bad_timestamp",
            "missing_field",
        ]
        assert [r.raw for r in sink.readings] == [5]
        assert all(b.ack is not None for b in sink.batches)

        again = connector(site)
        replay = Collector()
        async with running(again.run(replay)):
            await connected(again)
            await asyncio.sleep(0.5)
        assert replay.batches == []  # rejected messages were acked too: nothing comes back

    asyncio.run(main())


@contextlib.asynccontextmanager
async def cuttable_proxy(host: str, port: int) -> AsyncIterator[tuple[int, Any]]:
    """A TCP proxy to the broker whose open connections can be cut (a network loss)."""
    writers: list[asyncio.StreamWriter] = []

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        w.close()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection(host, port)
        writers.extend([w, uw])
        await asyncio.gather(pipe(r, uw), pipe(ur, w))

    def cut() -> None:
        for w in writers:
            w.transport.abort()
        writers.clear()

    listen = free_port()
    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    try:
        yield listen, cut
    finally:
        server.close()


def test_reconnects_after_network_loss(
    mqtt_broker: tuple[str, int], topic_prefix: str, publisher: Any
) -> None:
    p = topic_prefix

    async def main() -> None:
        async with cuttable_proxy(*mqtt_broker) as (proxy_port, cut):
            site = mqtt_site(
                f"mqtt://127.0.0.1:{proxy_port}",
                {"v": {"topic": f"{p}/v", "path": "v"}},
                client_id=f"{p}-agent",
            )
            conn = connector(site)
            sink = Collector()
            async with running(conn.run(sink)):
                await connected(conn)
                publisher(f"{p}/v", b'{"v": 1}')
                await sink.wait_for(lambda: len(sink.readings) == 1)
                cut()
                await sink.wait_for(lambda: conn.status()["connected"] is False, timeout=5)
                publisher(f"{p}/v", b'{"v": 2}')  # while we are away: kept in our persistent session
                await connected(conn)
                await sink.wait_for(lambda: [r.raw for r in sink.readings] == [1, 2])
                assert conn.status()["reconnects"] >= 1

    asyncio.run(main())


def test_queue_bound_pauses_reading(url: str, topic_prefix: str, publisher: Any) -> None:
    p = topic_prefix
    site = mqtt_site(url, {"v": {"topic": f"{p}/v", "path": "v"}}, client_id=f"{p}-agent")

    async def main() -> None:
        conn = connector(site, queue_size=5)
        gate = asyncio.Event()
        got: list[Any] = []

        async def slow_sink(batch: Any) -> None:
            await gate.wait()
            got.append(batch)
            batch.ack()

        async with running(conn.run(slow_sink)):
            await connected(conn)
            for i in range(40):
                publisher(f"{p}/v", json.dumps({"v": i}))
            await asyncio.sleep(0.5)
            assert int(conn.status()["queued"]) <= 6  # type: ignore[call-overload]
            gate.set()
            # one batch per socket-read burst: the backlog after the pause may come several to a batch
            await Collector().wait_for(lambda: sum(len(b.readings) for b in got) == 40)
        assert [r.raw for b in got for r in b.readings] == list(range(40))
        assert all(len(b.messages) == len(b.readings) for b in got)  # one message, one reading each

    asyncio.run(main())


def test_a_failing_sink_ends_run_with_its_error(url: str, topic_prefix: str, publisher: Any) -> None:
    p = topic_prefix
    site = mqtt_site(url, {"v": {"topic": f"{p}/v", "path": "v"}}, client_id=f"{p}-agent")

    async def broken(batch: Any) -> None:
        raise RuntimeError("outbox on fire")

    async def main() -> None:
        conn = connector(site)
        task = asyncio.ensure_future(conn.run(broken))
        await connected(conn)
        publisher(f"{p}/v", b'{"v": 1}')
        with pytest.raises(RuntimeError, match="outbox on fire"):
            await asyncio.wait_for(task, 5)

    asyncio.run(main())
