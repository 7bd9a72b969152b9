"""OPC-UA connector against in-process asyncua servers: values, status, bad nodes, polling, reconnects."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from asyncua import ua
from structlog.testing import capture_logs

from edge_agent.connectors.factory import build_connectors
from edge_agent.connectors.opcua import OpcUaConnector
from edge_agent.connectors.opcua_session import status_of, to_us
from edge_agent.metrics import CONNECTED, REGISTRY, SIGNAL_MISSING
from plant.mqtt.backoff import Backoff
from plant.site import Site
from plant.wire import Quality

from .conftest import Collector, one_machine_site, opcua_server, running


def opcua_site(port: int, bindings: dict[str, dict[str, Any]], **source: Any) -> Site:
    """A one-machine site whose properties p1.. are bound to an OPC-UA server on ``port``."""
    props = {name: {"unit": "K"} for name in bindings}
    spec = {"kind": "opcua", "endpoint": f"opc.tcp://127.0.0.1:{port}/test/", **source}
    return one_machine_site("srv", spec, props, bindings)


def connector(site: Site, **settings: Any) -> OpcUaConnector:
    ns = type("S", (), {"opcua_watchdog_s": 3.0, "backoff_initial_s": 0.2, "backoff_cap_s": 1.0, **settings})
    (conn,) = build_connectors(site, ns)
    assert isinstance(conn, OpcUaConnector)
    return conn


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_status_codes_map_to_quality_and_name() -> None:
    assert status_of(0) == (Quality.GOOD, "Good")
    assert status_of(ua.StatusCodes.UncertainLastUsableValue)[0] is Quality.UNCERTAIN
    assert status_of(ua.StatusCodes.BadNodeIdUnknown) == (Quality.BAD, "BadNodeIdUnknown")
    assert status_of(0xC1230000)[0] is Quality.BAD  # unknown code: still classed by its top bits


def test_timestamps_to_microseconds() -> None:
    assert to_us(dt.datetime(1970, 1, 1, 0, 0, 1, 5, tzinfo=dt.UTC)) == 1_000_005
    assert to_us(dt.datetime(2024, 1, 1)) == 1_704_067_200_000_000  # naive = UTC
    assert to_us(dt.datetime(1601, 1, 1)) is None
    assert to_us(None) is None


def test_subscription_keeps_timestamps_and_status(port: int) -> None:
    async def main() -> None:
        async with opcua_server(port) as (_server, var):
            site = opcua_site(
                port,
                {
                    "p1": {"node_id": "ns=2;s=t1", "sampling_ms": 50},
                    "p2": {
                        "node_id": "ns=2;s=t2",
                        "sampling_ms": 50,
                        "deadband": {"kind": "absolute", "value": 5},
                    },
                },
                publishing_interval_ms=50,
            )
            conn = connector(site)
            sink = Collector()
            async with running(conn.run(sink)):
                await sink.wait_for(lambda: {r.prop for r in sink.readings} == {"p1", "p2"})
                src = dt.datetime(2024, 5, 1, 12, 0, 0, 250_000, tzinfo=dt.UTC)
                await var["t1"].write_value(
                    ua.DataValue(
                        ua.Variant(21.5, ua.VariantType.Double),
                        StatusCode=ua.StatusCode(ua.StatusCodes.UncertainLastUsableValue),
                        SourceTimestamp=src,
                    )
                )
                for v in (1.0, 2.0, 3.0, 10.0):  # deadband 5: only 10 passes
                    await var["t2"].write_value(v)
                    await asyncio.sleep(0.12)
                await sink.wait_for(lambda: any(r.raw == 21.5 for r in sink.readings))
                await sink.wait_for(lambda: any(r.raw == 10.0 for r in sink.readings))
                assert conn.status()["connected"] is True
                assert metric("ft_agent_source_connected", source="srv") == 1
        r = next(r for r in sink.readings if r.raw == 21.5)
        assert (r.source, r.node, r.prop) == ("srv", "m1", "p1")
        assert r.source_ts == to_us(src)
        assert r.server_ts is not None
        assert abs(r.server_ts - r.recv_ts) < 5_000_000
        assert r.quality is Quality.UNCERTAIN
        assert r.status == "UncertainLastUsableValue"
        p2 = [r.raw for r in sink.readings if r.prop == "p2"]
        assert p2 == [0.0, 10.0]

    asyncio.run(main())


def test_bad_node_ids_are_skipped_and_reported(port: int) -> None:
    async def main() -> None:
        async with opcua_server(port) as (_server, var):
            site = opcua_site(
                port,
                {
                    "p1": {"node_id": "ns=2;s=t1", "sampling_ms": 50},
                    "gone": {"node_id": "ns=2;s=no-such-node"},
                    "junk": {"node_id": "ns=2;x=??"},
                    "polled": {"node_id": "ns=2;s=also-missing", "mode": "poll", "sampling_ms": 100},
                },
                publishing_interval_ms=50,
                batch_size=2,
            )
            conn = connector(site)
            sink = Collector()
            with capture_logs() as logs:
                async with running(conn.run(sink)):
                    await var["t1"].write_value(7.0)
                    await sink.wait_for(lambda: any(r.raw == 7.0 for r in sink.readings))
                    await sink.wait_for(lambda: len(conn.status()["bad_nodes"]) == 3)  # type: ignore[arg-type]
        assert set(conn.bad_nodes) == {"ns=2;s=no-such-node", "ns=2;x=??", "ns=2;s=also-missing"}
        assert conn.bad_nodes["ns=2;s=no-such-node"] == "BadNodeIdUnknown"
        assert metric("ft_agent_bad_nodes", source="srv") == 3
        named = [e for e in logs if e["event"] == "opcua_bad_nodes"]
        assert named
        assert "ns=2;s=no-such-node" in named[0]["node_ids"]
        assert {r.prop for r in sink.readings} == {"p1"}

    asyncio.run(main())


def test_poll_mode_reads_on_its_own_period(port: int) -> None:
    async def main() -> None:
        async with opcua_server(port) as (_server, var):
            site = opcua_site(port, {"p1": {"node_id": "ns=2;s=t1", "mode": "poll", "sampling_ms": 100}})
            conn = connector(site)
            sink = Collector()
            await var["t1"].write_value(3.25)
            async with running(conn.run(sink)):
                await sink.wait_for(lambda: len(sink.readings) >= 4, timeout=5)
        assert all(r.raw == 3.25 and r.quality is Quality.GOOD for r in sink.readings)
        assert all(r.source_ts is not None and r.server_ts is not None for r in sink.readings)

    asyncio.run(main())


@pytest.mark.slow
def test_reconnects_and_resubscribes_after_server_restart(port: int) -> None:
    async def main() -> None:
        site = opcua_site(
            port, {"p1": {"node_id": "ns=2;s=t1", "sampling_ms": 50}}, publishing_interval_ms=50
        )
        conn = connector(site)
        sink = Collector()
        before = metric("ft_agent_reconnects_total", source="srv")
        missing_before = metric("ft_agent_signal_missing_seconds_total", source="srv", signal="m1.p1")
        async with running(conn.run(sink)):
            async with opcua_server(port) as (_server, var):
                await var["t1"].write_value(1.0)
                await sink.wait_for(lambda: any(r.raw == 1.0 for r in sink.readings))
            # server gone: the connector notices within the watchdog and backs off
            await sink.wait_for(lambda: conn.status()["connected"] is False, timeout=6)
            assert CONNECTED.labels("srv")._value.get() == 0
            # the subscribed value no longer holds: a bad "stale" reading tells the aligner so
            await sink.wait_for(lambda: any(r.status == "stale" for r in sink.readings))
            stale = [r for r in sink.readings if r.status == "stale"]
            assert [(r.node, r.prop, r.raw, r.quality) for r in stale] == [("m1", "p1", None, Quality.BAD)]
            await asyncio.sleep(1.0)
            async with opcua_server(port) as (_server, var):
                await sink.wait_for(lambda: conn.status()["connected"] is True, timeout=10)
                await var["t1"].write_value(2.0)
                await sink.wait_for(lambda: any(r.raw == 2.0 for r in sink.readings))
        assert metric("ft_agent_reconnects_total", source="srv") > before
        assert (
            metric("ft_agent_signal_missing_seconds_total", source="srv", signal="m1.p1") - missing_before
            >= 1.0
        )
        assert "m1.p1" in str(SIGNAL_MISSING.collect())

    asyncio.run(main())


@pytest.mark.slow
def test_silent_server_is_noticed_by_the_watchdog(port: int) -> None:
    """A server that stops answering without closing the socket (a cut cable) is noticed within seconds."""

    async def main() -> None:
        frozen = asyncio.Event()
        from .conftest import free_port

        proxy_port = free_port()

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    if frozen.is_set():
                        continue  # swallow: the peer looks alive but nothing gets through
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            ur, uw = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.gather(pipe(r, uw), pipe(ur, w))

        proxy = await asyncio.start_server(handle, "127.0.0.1", proxy_port)
        async with opcua_server(port):
            site = opcua_site(
                proxy_port, {"p1": {"node_id": "ns=2;s=t1", "sampling_ms": 50}}, publishing_interval_ms=100
            )
            conn = connector(site, opcua_watchdog_s=2.0)
            sink = Collector()
            async with running(conn.run(sink)):
                await sink.wait_for(lambda: conn.status()["connected"] is True)
                frozen.set()
                t0 = asyncio.get_running_loop().time()
                await sink.wait_for(lambda: conn.status()["connected"] is False, timeout=8)
                assert asyncio.get_running_loop().time() - t0 < 5
                await sink.wait_for(lambda: bool(conn.status()["last_error"]))
                assert "silent" in str(conn.status()["last_error"]) or "lost" in str(
                    conn.status()["last_error"]
                )
        proxy.close()

    asyncio.run(main())


def test_one_session_attempt_at_a_time_per_server(port: int) -> None:
    """Two connectors to a server that accepts TCP but never answers: never two attempts open at once."""

    async def main() -> None:
        open_now = 0
        most = 0
        accepted = 0

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            nonlocal open_now, most, accepted
            open_now += 1
            accepted += 1
            most = max(most, open_now)
            try:
                await r.read()  # hold the socket open, answer nothing
            finally:
                open_now -= 1
                w.close()

        server = await asyncio.start_server(handle, "127.0.0.1", port)
        b = {"p1": {"node_id": "ns=2;s=t1"}}
        c1 = connector(opcua_site(port, b, timeout_s=0.3))
        c2 = connector(opcua_site(port, b, timeout_s=0.3))
        c1.backoff = Backoff(initial=0.01, cap=0.05)
        c2.backoff = Backoff(initial=0.01, cap=0.05)
        async with running(c1.run(Collector())), running(c2.run(Collector())):
            await asyncio.sleep(2.0)
        server.close()
        assert accepted >= 3
        assert most == 1
        assert "no answer" in str(c1.status()["last_error"])

    asyncio.run(main())
