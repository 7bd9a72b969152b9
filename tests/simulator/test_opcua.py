"""The simulated OPC-UA server, in-process on a free port, read by a plain asyncua Client."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime, timedelta

import pytest
from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.object_ids import ObjectIds

from factory_twin.simulator import examples
from factory_twin.simulator.errors import EndpointError, ScenarioError
from factory_twin.simulator.faults import parse_fault
from factory_twin.simulator.opcua_server import NAMESPACE_URI, OpcUaSimServer, engineering_units
from factory_twin.simulator.plan import ServedVariable
from factory_twin.simulator.run import Simulator, SimulatorConfig
from plant.site import DataType, PropertyDef, load_site

SITE = load_site(examples.example_site_path())


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"opc.tcp://127.0.0.1:{port}/factory-twin/"


def engine_config(endpoint: str, **kw: object) -> SimulatorConfig:
    return SimulatorConfig(
        site=SITE,
        data_dir=examples.data_dir(),
        opcua_endpoints={"cell-opcua": endpoint},
        machines=frozenset({"engine-1"}),
        **kw,  # type: ignore[arg-type]
    )


def test_values_change_and_carry_source_timestamps() -> None:
    endpoint = free_endpoint()

    async def scenario() -> None:
        async with Simulator(engine_config(endpoint)) as sim, Client(endpoint, timeout=10) as client:
            assert sim.publisher is None  # engine-1 is OPC-UA only: no broker needed
            assert (await client.get_namespace_array())[2] == NAMESPACE_URI
            cycle = client.get_node("ns=2;s=engine-1.cycle")
            t30 = client.get_node("ns=2;s=engine-1.t30")

            await sim.tick()
            first = await t30.read_data_value()
            assert await cycle.read_value() == 1  # engine 39, cycle 1
            await sim.tick()
            await sim.tick()
            assert await cycle.read_value() == 3
            later = await t30.read_data_value()

            assert later.Value is not None
            assert first.Value is not None
            assert later.Value.Value != first.Value.Value
            assert later.Value.VariantType == ua.VariantType.Double
            now = datetime.now(UTC)
            for dv in (first, later):
                assert dv.SourceTimestamp is not None
                assert dv.ServerTimestamp is not None
                assert abs(now - dv.SourceTimestamp) < timedelta(seconds=30)
            assert first.SourceTimestamp is not None
            assert later.SourceTimestamp is not None
            assert later.SourceTimestamp > first.SourceTimestamp
            assert sim.stats.opcua_values == 3 * 25

    asyncio.run(scenario())


def test_address_space_has_types_and_units() -> None:
    endpoint = free_endpoint()

    async def scenario() -> None:
        async with Simulator(engine_config(endpoint)), Client(endpoint, timeout=10) as client:
            engine = client.get_node("ns=2;s=engine-1")
            variables = await engine.get_variables()
            assert len(variables) == 25
            cycle = client.get_node("ns=2;s=engine-1.cycle")
            assert (await cycle.read_data_type()).Identifier == ua.VariantType.Int32.value
            t30 = client.get_node("ns=2;s=engine-1.t30")
            assert (await t30.read_data_type()).Identifier == ua.VariantType.Double.value
            t30_type = await t30.read_type_definition()
            assert t30_type is not None
            assert t30_type.Identifier == ObjectIds.AnalogUnitType
            eu = await client.get_node("ns=2;s=engine-1.t30.EngineeringUnits").read_value()
            assert eu.DisplayName.Text == "°R"
            assert eu.UnitId == engineering_units("°R").UnitId
            setting = client.get_node("ns=2;s=engine-1.setting1")  # no unit: plain analog item
            setting_type = await setting.read_type_definition()
            assert setting_type is not None
            assert setting_type.Identifier == ObjectIds.BaseAnalogType

    asyncio.run(scenario())


def test_bad_clock_and_stale_fault() -> None:
    endpoint = free_endpoint()
    config = engine_config(
        endpoint, bad_clock=frozenset({"cell-opcua"}), faults=(parse_fault("engine-1.t50:stale@0"),)
    )

    async def scenario() -> None:
        async with Simulator(config) as sim, Client(endpoint, timeout=10) as client:
            await sim.tick()
            await sim.tick()
            t30 = await client.get_node("ns=2;s=engine-1.t30").read_data_value()
            assert t30.SourceTimestamp is not None
            assert t30.SourceTimestamp.year == 2000  # the device's clock was reset
            assert t30.ServerTimestamp is not None
            assert t30.ServerTimestamp.year >= 2026  # the server's own clock is right
            t50 = await client.get_node("ns=2;s=engine-1.t50").read_value()
            assert t50 == 0.0  # never written: stale from the start
            assert sim.stats.opcua_values == 2 * 24

    asyncio.run(scenario())


@pytest.mark.slow
def test_range_port_in_use_and_batch_write() -> None:
    endpoint = free_endpoint()
    pdef = PropertyDef(unit="kPa", range=(-100, 1000), description="Outlet pressure")
    signals = [
        ServedVariable("pump-9", "pressure", "ns=2;s=pump-9.pressure", pdef, "kPa"),
        ServedVariable("pump-9", "running", "ns=2;s=pump-9.running", PropertyDef(dtype=DataType.BOOL), ""),
    ]

    async def scenario() -> None:
        async with OpcUaSimServer(endpoint, signals) as server, Client(endpoint, timeout=10) as client:
            rng = await client.get_node("ns=2;s=pump-9.pressure.EURange").read_value()
            assert (rng.Low, rng.High) == (-100.0, 1000.0)
            stamp = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
            taken = await server.write({"ns=2;s=pump-9.pressure": 250, "ns=2;s=pump-9.running": True}, stamp)
            assert taken == 2
            dv = await client.get_node("ns=2;s=pump-9.pressure").read_data_value()
            assert dv.Value is not None
            assert dv.Value.Value == 250.0  # an int for a Double variable is sent as a float
            assert dv.SourceTimestamp == stamp
            assert await client.get_node("ns=2;s=pump-9.running").read_value() is True
            with pytest.raises(EndpointError, match=r"cannot serve OPC-UA at .*address in use"):
                await OpcUaSimServer(endpoint, signals).start()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("node_id", "reason"),
    [
        ("ns=3;s=engine-1.t2", "serves namespace index 2 only"),
        ("ns=x;s=garbage", "does not parse"),
    ],
)
def test_node_ids_the_server_cannot_serve(node_id: str, reason: str) -> None:
    signal = ServedVariable("engine-1", "t2", node_id, PropertyDef(), "")
    with pytest.raises(ScenarioError, match=reason):
        asyncio.run(OpcUaSimServer(free_endpoint(), [signal]).start())


def test_endpoint_option_must_name_an_opcua_source() -> None:
    config = engine_config(free_endpoint())
    config.opcua_endpoints["plant-mqtt"] = "opc.tcp://127.0.0.1:1/"
    with pytest.raises(ScenarioError, match="'plant-mqtt', which is not an OPC-UA source"):
        asyncio.run(Simulator(config).start())


def test_engineering_units_unknown_unit() -> None:
    eu = engineering_units("lbm/s")
    assert eu.UnitId == -1
    assert eu.DisplayName.Text == "lbm/s"
    assert engineering_units("K").UnitId == (ord("K") << 16) | (ord("E") << 8) | ord("L")
