"""Setpoints of the simulated machines: served writable over OPC-UA at their nominal value, never written by the
replay, and a written value scaling the signals it drives (after a lag), as the affinity laws have it."""

from __future__ import annotations

import asyncio
import math

import pytest
import yaml
from asyncua import ua
from asyncua.client.client import Client

from factory_twin.simulator import examples
from factory_twin.simulator.datasets import PUMP
from factory_twin.simulator.errors import ScenarioError
from factory_twin.simulator.faults import parse_fault
from factory_twin.simulator.plan import plan_site
from factory_twin.simulator.run import Simulator, SimulatorConfig
from factory_twin.simulator.setpoints import Drive, Driven, Setpoint
from plant.site import Site, load_site, parse_site
from tests.simulator.test_opcua import free_endpoint

NOMINAL = PUMP.setpoints["speed"].nominal


def _pump_site(endpoint: str) -> Site:
    """The example plant's pump alone, its flow, pressure and voltage read over OPC-UA like its speed: no broker."""
    data = yaml.safe_load(examples.example_site_path().read_text(encoding="utf-8"))
    data["sources"] = {"cell-opcua": {**data["sources"]["cell-opcua"], "endpoint": endpoint}}
    data["asset_types"] = {"pump": data["asset_types"]["pump"]}
    (root,) = data["nodes"]
    root["children"] = [area for area in root["children"] if area["id"] == "utilities"]
    (pump,) = root["children"][0]["children"]
    read = {p: {"source": "cell-opcua", "node_id": f"ns=2;s=pump-1.{p}"} for p in ("flow_rate", "pressure", "voltage")}
    read["pressure"]["unit"] = "bar"  # the data set's unit, as over MQTT
    pump["bindings"] = {**read, "speed": pump["bindings"]["speed"]}
    return Site.model_validate(data)


def _drive(lag_s: float = 1.0) -> Drive:
    setpoint = Setpoint(nominal=2000.0, unit="rpm", drives={"flow": 1.0, "head": 2.0}, lag_s=lag_s)
    return Drive(setpoint, (Driven("flow", 1.0), Driven("head", 2.0, scale=2.0, offset=10.0)))


def test_at_the_nominal_value_the_data_set_is_replayed_unchanged() -> None:
    drive = _drive()
    values: dict[str, object] = {"flow": 32.0, "head": 5.0, "other": 7.0}
    drive.follow(2000.0, 0.0)
    drive.follow(2000.0, 5.0)
    drive.apply(values)  # type: ignore[arg-type]
    assert values == {"flow": 32.0, "head": 5.0, "other": 7.0}


def test_the_actual_value_follows_a_written_one_with_a_lag_and_scales_what_it_drives() -> None:
    drive = _drive(lag_s=1.0)
    assert drive.follow(2000.0, 0.0) is False
    assert drive.follow(1000.0, 0.0) is True  # written: the target moves at once, the machine does not
    assert drive.actual == 2000.0
    drive.follow(1000.0, 1.0)
    assert drive.actual == pytest.approx(1000.0 + 1000.0 * math.exp(-1.0))
    drive.follow(1000.0, 20.0)
    assert drive.ratio == pytest.approx(0.5)
    values: dict[str, object] = {"flow": 32.0, "head": 5.0, "other": 7.0, "missing": None}
    drive.apply(values)  # type: ignore[arg-type]
    assert values["flow"] == pytest.approx(16.0)
    # head's physical value is 5 × 2 + 10 = 20: a quarter of it is 5, sent as (5 - 10) / 2
    assert values["head"] == pytest.approx(-2.5)
    assert (values["other"], values["missing"]) == (7.0, None)


@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), 0.0, -5.0, True, "fast"])
def test_a_value_no_client_could_write_leaves_the_last_target(bad: object) -> None:
    drive = _drive()
    drive.follow(1500.0, 0.0)
    assert drive.follow(bad, 1.0) is False  # type: ignore[arg-type]
    assert drive.target == 1500.0


def test_a_setpoint_needs_a_positive_nominal_value_and_lag() -> None:
    with pytest.raises(ScenarioError, match="nominal"):
        Setpoint(nominal=0.0, unit="rpm", drives={})
    with pytest.raises(ScenarioError, match="lag"):
        Setpoint(nominal=1.0, unit="rpm", drives={}, lag_s=0.0)


def test_the_example_pump_serves_its_speed_writable_and_replays_no_column_for_it() -> None:
    site = load_site(examples.example_site_path())
    (pump,) = plan_site(site, examples.data_dir(), {"pump-1"})
    (speed,) = pump.setpoints["cell-opcua"]
    assert (speed.node_id, speed.initial, speed.unit) == ("ns=2;s=pump-1.speed", NOMINAL, "rpm")
    assert "speed" not in pump.rows[0]
    assert {d.prop: d.exponent for d in pump.driven["speed"]} == {
        "flow_rate": 1.0, "pressure": 2.0, "accelerometer1_rms": 2.0, "accelerometer2_rms": 2.0, "current": 2.0,
    }
    wrong = examples.example_site_path().read_text(encoding="utf-8").replace(
        'speed: {source: cell-opcua, node_id: "ns=2;s=pump-1.speed"}',
        "speed: {source: plant-mqtt, topic: plant/utilities/pump-1/sensors, path: rpm, command_topic: c/p1}",
    )
    with pytest.raises(ScenarioError, match="setpoint over OPC-UA only"):
        plan_site(parse_site(wrong), examples.data_dir(), {"pump-1"})
    with pytest.raises(ScenarioError, match="written, not replayed"):
        Simulator(SimulatorConfig(site=site, data_dir=examples.data_dir(), machines=frozenset({"pump-1"}),
                                  faults=(parse_fault("pump-1.speed:high"),)))


def test_a_client_writes_the_speed_the_replay_keeps_it_and_the_driven_signals_follow() -> None:
    endpoint = free_endpoint()
    site = _pump_site(endpoint)
    (plan,) = plan_site(site, examples.data_dir())
    rows = plan.rows

    async def scenario() -> None:
        config = SimulatorConfig(site=site, data_dir=examples.data_dir())
        async with Simulator(config) as sim, Client(endpoint, timeout=10) as client:
            speed, flow = client.get_node("ns=2;s=pump-1.speed"), client.get_node("ns=2;s=pump-1.flow_rate")
            pressure, voltage = client.get_node("ns=2;s=pump-1.pressure"), client.get_node("ns=2;s=pump-1.voltage")
            assert await speed.read_value() == NOMINAL
            await sim.tick()
            assert await flow.read_value() == rows[0]["flow_rate"]  # nominal: the data set's own

            await speed.write_value(ua.DataValue(ua.Variant(NOMINAL / 2, ua.VariantType.Double)))
            with pytest.raises(ua.UaStatusCodeError):  # measured signals stay read-only
                await flow.write_value(ua.DataValue(ua.Variant(1.0, ua.VariantType.Double)))
            await asyncio.sleep(0.5)
            await sim.tick()
            assert await speed.read_value() == NOMINAL / 2  # the replay never writes a setpoint back
            ratio = await flow.read_value() / rows[1]["flow_rate"]
            assert 0.5 < ratio < 0.95  # on its way down, not there at once
            assert await pressure.read_value() / rows[1]["pressure"] == pytest.approx(ratio**2)
            assert await voltage.read_value() == rows[1]["voltage"]  # mains voltage is no pump's doing

    asyncio.run(scenario())
