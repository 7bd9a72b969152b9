"""Replay, clocks, pacing, faults and the plan from the site: the simulator's logic without the network."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from factory_twin.simulator import examples
from factory_twin.simulator.errors import ScenarioError
from factory_twin.simulator.faults import FaultKind, apply_fault, check_fault, parse_fault
from factory_twin.simulator.plan import MqttField, MqttMessage, plan_site
from factory_twin.simulator.replay import BAD_CLOCK_EPOCH_US, Replay, SourceClock, ticks
from plant.site import Site, load_site, parse_site

SITE = load_site(examples.example_site_path())
DATA = examples.data_dir()

MILL_FIELDS = {"type", "air_temp_k", "process_temp_k", "speed_rpm", "torque_nm", "tool_wear_min"}


class TestReplay:
    def test_loops_at_the_end(self) -> None:
        replay = Replay(["a", "b", "c"])
        assert [replay.next() for _ in range(7)] == ["a", "b", "c", "a", "b", "c", "a"]
        assert replay.loops == 2
        assert replay.position == 1

    def test_start_offset_wraps(self) -> None:
        replay = Replay([1, 2, 3], start=4)
        assert [replay.next() for _ in range(3)] == [2, 3, 1]

    def test_nothing_to_replay(self) -> None:
        with pytest.raises(ScenarioError, match="no rows"):
            Replay([])


class TestSourceClock:
    def test_wall_clock_and_skew(self) -> None:
        now_us = time.time_ns() // 1000
        assert abs(SourceClock().now_us() - now_us) < 1_000_000
        assert abs(SourceClock(skew_s=-90).now_us() - (now_us - 90_000_000)) < 1_000_000
        assert SourceClock().now().tzinfo is UTC

    def test_bad_clock_starts_in_2000_and_runs(self) -> None:
        clock = SourceClock(bad=True)
        first = clock.now_us()
        assert BAD_CLOCK_EPOCH_US <= first < BAD_CLOCK_EPOCH_US + 1_000_000
        time.sleep(0.02)
        assert clock.now_us() > first
        assert clock.now().year == 2000


def test_ticks_keep_an_absolute_pace() -> None:
    async def collect() -> tuple[list[int], float]:
        start = time.monotonic()
        got = [n async for n in ticks(50.0, limit=6)]
        return got, time.monotonic() - start

    got, took = asyncio.run(collect())
    assert got == [0, 1, 2, 3, 4, 5]
    assert 0.09 <= took < 1.0  # five intervals of 20 ms (generous: the machine is shared)


def test_ticks_refuse_a_zero_speed() -> None:
    async def first() -> None:
        async for _ in ticks(0.0):
            pass

    with pytest.raises(ScenarioError, match="speed must be above 0"):
        asyncio.run(first())


class TestFaults:
    def test_parse(self) -> None:
        fault = parse_fault("mill-1.torque:high@10")
        assert (fault.node, fault.prop, fault.kind, fault.after_s) == (
            "mill-1",
            "torque",
            FaultKind.HIGH,
            10.0,
        )
        assert parse_fault(" pump-1.current:stale ").after_s == 0.0
        assert not fault.active(9.9)
        assert fault.active(10.0)

    @pytest.mark.parametrize(
        ("spec", "reason"),
        [
            ("mill-1.torque", "expected NODE.PROP:KIND"),
            ("torque:high", "expected NODE.PROP:KIND"),
            ("mill-1.torque:melt", "unknown kind 'melt'"),
            ("mill-1.torque:high@1.2.3", "'1.2.3' is not a number"),
            ("", "expected NODE.PROP:KIND"),
        ],
    )
    def test_bad_specs(self, spec: str, reason: str) -> None:
        with pytest.raises(ScenarioError, match=reason):
            parse_fault(spec)

    def test_high_and_low_leave_the_range(self) -> None:
        pdef = check_fault(parse_fault("mill-1.torque:high"), SITE)
        assert apply_fault(parse_fault("mill-1.torque:high"), 40.0, pdef) == 120.0  # range 0..80
        assert apply_fault(parse_fault("mill-1.torque:low"), 40.0, pdef) == -40.0
        assert apply_fault(parse_fault("mill-1.torque:stale"), 40.0, pdef) is None

    @pytest.mark.parametrize(
        ("spec", "reason"),
        [
            ("mill-9.torque:high", "no node 'mill-9'"),
            ("mill-1.colour:high", "no binding for 'colour'"),
            ("mill-1.product_type:high", "needs a number"),
            ("engine-1.t50:high", "needs a range"),
        ],
    )
    def test_faults_the_site_cannot_take(self, spec: str, reason: str) -> None:
        with pytest.raises(ScenarioError, match=reason):
            check_fault(parse_fault(spec), SITE)

    def test_stale_needs_no_range(self) -> None:
        check_fault(parse_fault("engine-1.t50:stale@5"), SITE)


class TestPlan:
    def test_serves_exactly_the_bound_signals(self) -> None:
        plans = {p.node: p for p in plan_site(SITE, DATA)}
        assert set(plans) == {"mill-1", "pump-1", "engine-1"}
        engine = plans["engine-1"]
        assert not engine.mqtt
        signals = engine.opcua["cell-opcua"]
        assert {s.node_id for s in signals} == {
            f"ns=2;s=engine-1.{p}" for p in SITE.node("engine-1").bindings
        }
        assert len(engine.rows) == 682
        assert engine.rows[0]["cycle"] == 1
        assert isinstance(engine.rows[0]["cycle"], int)

    def test_mill_message(self) -> None:
        mill = next(p for p in plan_site(SITE, DATA, {"mill-1"}))
        (message,) = mill.mqtt["plant-mqtt"]
        assert message.topic == "plant/machining/line-1/mill-1/telemetry"
        payload = message.payload(mill.rows[0], 1_795_000_000_000)
        assert payload is not None
        assert set(payload) == {*MILL_FIELDS, "ts"}
        assert payload["type"] in {"L", "M", "H"}
        assert payload["ts"] == 1_795_000_000_000
        assert all(isinstance(payload[f], float) for f in MILL_FIELDS - {"type"})

    def test_pump_message_is_nested_and_in_bar(self) -> None:
        pump = next(p for p in plan_site(SITE, DATA, {"pump-1"}))
        (message,) = pump.mqtt["plant-mqtt"]
        assert message.topic == "plant/utilities/pump-1/sensors"
        payload = message.payload(pump.rows[0], 1)
        assert payload == {
            "vib": {"acc1_rms": 0.0265878, "acc2_rms": 0.0401113},
            "motor": {"current": 1.3302, "voltage": 233.062, "temperature": 79.3366},
            "pressure_bar": 0.054711,
            "fluid_temperature": 26.0199,
            "flow_l_min": 32.0,
            "ts": 1,
        }

    def test_payload_without_values_is_none(self) -> None:
        message = MqttMessage("t", (MqttField("a", "x.a"),), ("ts",))
        assert message.payload({"a": None}, 5) is None
        assert message.payload({"a": 1.5}, 5) == {"x": {"a": 1.5}, "ts": 5}

    def test_unknown_machine(self) -> None:
        with pytest.raises(ScenarioError, match=r"no bound machine.*mill-7"):
            plan_site(SITE, DATA, {"mill-7"})

    def test_scale_and_offset_are_undone(self) -> None:
        text = _site_text().replace(
            "path: torque_nm, ts_path: ts}", "path: torque_nm, ts_path: ts, scale: 0.1, offset: 5}"
        )
        mill = next(p for p in plan_site(parse_site(text), DATA, {"mill-1"}))
        plain = next(p for p in plan_site(SITE, DATA, {"mill-1"}))
        torque, raw = plain.rows[0]["torque"], mill.rows[0]["torque"]
        assert isinstance(torque, float)
        assert isinstance(raw, float)
        assert raw * 0.1 + 5 == pytest.approx(torque)

    def test_clashing_paths_fail_at_plan_time(self) -> None:
        text = _site_text().replace("path: air_temp_k, ts_path: ts}", "path: ts, ts_path: ts}")
        with pytest.raises(ScenarioError, match="two bindings write path 'ts'"):
            plan_site(parse_site(text), DATA, {"mill-1"})

    def test_two_machines_of_a_type_start_apart(self) -> None:
        site = _with_second_mill()
        plans = {p.node: p for p in plan_site(site, DATA)}
        assert plans["mill-1"].start == 0
        assert plans["mill-2"].start == 200

    def test_machine_without_feed_is_skipped(self) -> None:
        text = (
            _site_text()
            .replace("type: turbofan\n", "type: turbine\n")
            .replace("  turbofan:\n", "  turbine:\n")
        )
        nodes = {p.node for p in plan_site(parse_site(text), DATA)}
        assert nodes == {"mill-1", "pump-1"}


def _site_text() -> str:
    return Path(examples.example_site_path()).read_text(encoding="utf-8")


def _with_second_mill() -> Site:
    text = _site_text()
    marker = "              - id: mill-1\n"
    start = text.index(marker)
    end = text.index("      - id: utilities")
    block = text[start:end].replace("mill-1", "mill-2").replace("M-14860", "M-14861")
    return parse_site(text[:end] + block + text[end:])


def test_examples_found_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "plant.yaml").write_text("site: {id: x}\nnodes: []\n")
    monkeypatch.setenv(examples.ENV_VAR, str(tmp_path))
    assert examples.example_site_path() == tmp_path / "plant.yaml"
    assert examples.data_dir() == tmp_path / "data"


def test_bad_clock_year() -> None:
    assert datetime.fromtimestamp(BAD_CLOCK_EPOCH_US / 1e6, tz=UTC) == datetime(2000, 1, 1, tzinfo=UTC)
