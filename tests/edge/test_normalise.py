"""Units, scaling, type checks and source clocks of edge_agent.normalise."""

from __future__ import annotations

import json
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent import metrics
from edge_agent.errors import ConfigError
from edge_agent.normalise import ClockEstimate, Normaliser
from edge_agent.reading import Reading
from edge_agent.sample import Sample
from edge_agent.units import affine
from plant.site import Site, parse_site
from plant.wire import Flag, Quality, Value

NOW = 1_763_900_000_000_000  # 2025-11-23, µs


def reading(
    prop: str,
    raw: object,
    *,
    node: str = "pump-1",
    ts: int | None = NOW,
    recv: int = NOW + 5_000,
    quality: Quality = Quality.GOOD,
    source: str = "plc",
) -> Reading:
    return Reading(source, node, prop, raw, ts, None, recv, quality)


class TestUnits:
    @pytest.mark.parametrize(
        ("src", "dst", "x", "y"),
        [
            ("°C", "K", 0.0, 273.15),
            ("°F", "°C", 212.0, 100.0),
            ("degF", "K", 32.0, 273.15),
            ("bar", "kPa", 1.5, 150.0),
            ("psi", "kPa", 1.0, 6.894757293168),
            ("Pa", "bar", 1e5, 1.0),
            ("Hz", "rpm", 50.0, 3000.0),
            ("°R", "K", 518.67, 288.15),
            ("l/min", "m³/h", 60.0, 3.6),
            ("Nm", "N·m", 2.0, 2.0),
        ],
    )
    def test_conversions(self, src: str, dst: str, x: float, y: float) -> None:
        a, b = affine(src, dst)
        assert a * x + b == pytest.approx(y, rel=1e-9)

    def test_round_trip(self) -> None:
        a, b = affine("°F", "°C")
        c, d = affine("°C", "°F")
        assert c * (a * 98.6 + b) + d == pytest.approx(98.6)

    def test_incompatible_units_are_a_config_error(self) -> None:
        with pytest.raises(ConfigError, match="temperature"):
            affine("bar", "K")
        with pytest.raises(ConfigError, match="not in the unit table"):
            affine("furlong", "m")

    def test_unknown_but_equal_units_pass(self) -> None:
        assert affine("pps/psi", "pps/psi") == (1.0, 0.0)


class TestValues:
    def test_units_and_scale_applied(self, site: Site) -> None:
        n = Normaliser(site)
        out = n.normalise(
            [
                reading("temp", 212.0),
                reading("pressure", 2.0),
                reading("speed", 25),
                reading("count", 21),
                reading("running", 1),
                reading("mode", "auto"),
            ]
        )
        assert not out.rejected
        got = {v.prop: v.value for v in out.values}
        assert got["temp"] == pytest.approx(100.0)
        assert got["pressure"] == pytest.approx(200.0)
        assert got["speed"] == pytest.approx(1500.0)
        assert got["count"] == 42
        assert type(got["count"]) is int
        assert got["running"] is True
        assert got["mode"] == "auto"
        assert all(v.ts == NOW and v.recv_ts == NOW + 5_000 and v.flags == () for v in out.values)

    @pytest.mark.parametrize(
        ("prop", "raw", "reason"),
        [
            ("temp", float("nan"), "not_finite"),
            ("temp", float("inf"), "not_finite"),
            ("temp", "hot", "wrong_type"),
            ("temp", True, "wrong_type"),
            ("temp", None, "null_value"),
            ("count", 1.25, "wrong_type"),
            ("running", 2, "wrong_type"),
            ("mode", 3, "wrong_type"),
            ("mode", "x" * 5000, "too_long"),
            ("temp", [1, 2], "wrong_type"),
            ("temp", 10**400, "not_finite"),
        ],
    )
    def test_bad_values_rejected_with_reason(self, site: Site, prop: str, raw: object, reason: str) -> None:
        out = Normaliser(site).normalise([reading(prop, raw), reading("pressure", 1.0)])
        assert [r[1] for r in out.rejected] == [reason]
        assert [v.prop for v in out.values] == ["pressure"]  # the rest of the batch is kept

    def test_unknown_signal_rejected(self, site: Site) -> None:
        out = Normaliser(site).normalise([reading("flux", 1.0), reading("temp", 1.0, node="nope")])
        assert [r[1] for r in out.rejected] == ["unknown_signal", "unknown_signal"]

    def test_bad_quality_carries_none_and_quality(self, site: Site) -> None:
        out = Normaliser(site).normalise(
            [reading("temp", None, quality=Quality.BAD), reading("pressure", 1.0, quality=Quality.UNCERTAIN)]
        )
        assert not out.rejected
        assert [(v.value, v.quality) for v in out.values] == [(None, Quality.BAD), (100.0, Quality.UNCERTAIN)]

    def test_incompatible_binding_unit_fails_compile(self, site: Site) -> None:
        bad = site.model_dump()
        bad["nodes"][0]["children"][0]["children"][0]["bindings"]["temp"]["unit"] = "bar"
        with pytest.raises(ConfigError, match=r"pump-1\.temp"):
            Normaliser(Site.model_validate(bad))

    @pytest.mark.parametrize("raw", [3, -(2**53) + 1, 2**53, 2**60])
    def test_an_int_for_a_float_property_becomes_a_float(self, raw: int) -> None:
        out = Normaliser(parse_site(_SMALL, "s")).normalise([reading("f", raw, node="m"), reading("g", raw, node="m")])
        assert [type(v.value) for v in out.values] == [float, float]
        assert [v.value for v in out.values] == [float(raw) * 3.0, float(raw)]  # f has a scale of 3, g none

    @given(
        raw=st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(),
            st.text(max_size=50),
            st.lists(st.integers(), max_size=3),
            st.dictionaries(st.text(max_size=3), st.integers()),
        )
    )
    def test_any_raw_value_is_value_or_reason(self, raw: object) -> None:
        site = parse_site(_SMALL, "s")
        n = Normaliser(site)
        for prop in ("f", "i", "b", "s"):
            out = n.normalise([reading(prop, raw, node="m")])
            assert len(out.values) + len(out.rejected) == 1
            for v in out.values:
                assert not (isinstance(v.value, float) and not math.isfinite(v.value))


_SMALL = """
site: {id: s}
sources: {src: {kind: mqtt}}
asset_types:
  a:
    properties: {f: {}, g: {}, i: {dtype: int}, b: {dtype: bool}, s: {dtype: string}}
nodes:
  - id: s
    kind: site
    children:
      - id: ar
        kind: area
        children:
          - id: m
            kind: machine
            type: a
            bindings:
              f: {source: src, topic: x, path: f, scale: 3}
              g: {source: src, topic: x, path: g}
              i: {source: src, topic: x, path: i}
              b: {source: src, topic: x, path: b}
              s: {source: src, topic: x, path: s}
"""


class TestClocks:
    def test_estimate_ignores_jitter(self) -> None:
        rng = random.Random(1)
        est = ClockEstimate(window=64, quantile=0.1)
        for _ in range(200):
            est.add(3_000_000 + int(rng.expovariate(1 / 20_000)))  # 3 s offset, ~20 ms exponential delay
        assert 3_000_000 <= est.offset_us < 3_010_000

    def test_offset_beyond_threshold_corrected(self, site: Site) -> None:
        n = Normaliser(site, clock_threshold_ms=500)
        skew = 120_000_000  # the source runs two minutes behind
        for i in range(40):  # 40 s of data: past the warm-up
            recv = NOW + i * 1_000_000
            out = n.normalise([reading("temp", 1.0, ts=recv - skew - 3_000, recv=recv)])
        v = out.values[0]
        assert v.flags == (Flag.CLOCK_CORRECTED,)
        assert recv - 5_000 <= v.ts <= recv  # shifted by the offset plus the smallest network delay
        sample = metrics.REGISTRY.get_sample_value("ft_agent_clock_offset_seconds", {"source": "plc/pump-1"})
        assert sample == pytest.approx(-120.003, abs=0.01)

    def test_burst_of_old_queued_messages_is_not_a_clock_offset(self, site: Site) -> None:
        n = Normaliser(site)
        for i in range(200):  # a broker backlog: stamped over 200 s, all received within 0.2 s
            out = n.normalise(
                [reading("temp", 1.0, ts=NOW + i * 1_000_000, recv=NOW + 200_000_000 + i * 1_000)]
            )
            assert out.values[0].flags == ()
            assert out.values[0].ts == NOW + i * 1_000_000

    def test_correction_is_stable_so_redelivery_keeps_its_key(self, site: Site) -> None:
        n = Normaliser(site, clock_threshold_ms=500)
        skew = 60_000_000
        stamps = []
        rng = random.Random(3)
        for i in range(100):
            recv = NOW + i * 1_000_000
            jitter = int(rng.expovariate(1 / 50_000))  # ~50 ms network jitter
            out = n.normalise([reading("temp", 1.0, ts=recv - skew - jitter, recv=recv)])
            stamps.append(out.values[0].ts - (recv - skew - jitter))
        applied = [s for s in stamps if s]
        assert len(set(applied)) == 1  # one step, then steady despite jitter
        assert n.take_changed() == {"plc/pump-1": applied[0]}
        assert n.take_changed() == {}
        again = Normaliser(site, applied={"plc/pump-1": applied[0]})  # a restart, offsets from the outbox
        out = again.normalise([reading("temp", 1.0, ts=NOW - skew, recv=NOW + 3_000_000)])
        assert out.values[0].ts == NOW - skew + applied[0]
        assert out.values[0].flags == (Flag.CLOCK_CORRECTED,)

    def test_small_offset_left_alone(self, site: Site) -> None:
        n = Normaliser(site, clock_threshold_ms=500)
        out = n.normalise([reading("temp", 1.0, ts=NOW, recv=NOW + 40_000)])
        assert out.values[0].ts == NOW
        assert out.values[0].flags == ()

    @pytest.mark.parametrize("ts", [946_684_800_000_000 - 1, 0, NOW + 11 * 60 * 1_000_000])
    def test_absurd_clock_uses_receive_time(self, site: Site, ts: int) -> None:
        n = Normaliser(site)
        out = n.normalise([reading("temp", 1.0, ts=ts, node="pump-2")])
        v = out.values[0]
        assert v.ts == NOW + 5_000
        assert v.flags == (Flag.RECEIVE_TIME,)
        labels = {"source": "plc/pump-2"}
        assert metrics.REGISTRY.get_sample_value("ft_agent_clock_absurd", labels) == 1
        n.normalise([reading("temp", 1.0, node="pump-2")])  # sane again
        assert metrics.REGISTRY.get_sample_value("ft_agent_clock_absurd", labels) == 0

    def test_no_source_timestamp_uses_receive_time_unflagged(self, site: Site) -> None:
        out = Normaliser(site).normalise([reading("temp", 1.0, ts=None)])
        assert out.values[0].ts == NOW + 5_000
        assert out.values[0].flags == ()


@given(
    value=st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=30),
    ),
    server=st.one_of(st.none(), st.integers(0, 2**62)),
    flags=st.lists(st.sampled_from(list(Flag)), max_size=3, unique=True),
    quality=st.sampled_from(list(Quality)),
)
def test_sample_json_is_the_wire_values_json(
    value: object, server: int | None, flags: list[Flag], quality: Quality
) -> None:
    s = Sample("m-1", "p.x", value, NOW, server, NOW + 1, quality, tuple(flags))  # type: ignore[arg-type]
    v = Value.model_validate_json(s.to_json())
    assert v == s.to_value()
    assert json.loads(s.to_json()) == json.loads(v.model_dump_json())
