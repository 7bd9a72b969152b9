"""The as-of grid of edge_agent.align: tolerance, watermark, revisions, and order independence."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.align import Aligner, AssetAligner
from plant.site import AlignmentDef, Site
from plant.wire import Flag, Frame, Quality, Value

S = 1_000_000  # µs per second
T0 = 1_763_900_000 * S
ALIGN = AlignmentDef(grid_ms=1000, tolerance_ms=1500, watermark_ms=2000)


def val(prop: str, t: float, x: object, q: Quality = Quality.GOOD) -> Value:
    return Value.model_construct(
        node="a",
        prop=prop,
        value=x,
        ts=T0 + int(t * S),
        server_ts=None,
        recv_ts=T0 + int(t * S),
        quality=q,
        flags=(),
    )


def final(frames: list[Frame]) -> dict[int, tuple[dict[str, object], dict[str, Quality]]]:
    out: dict[int, tuple[dict[str, object], dict[str, Quality]]] = {}
    for f in frames:
        out[f.ts] = (f.values, f.quality)
    return out


def run(values: list[Value], batch: int = 1) -> tuple[list[Frame], list[int]]:
    al = AssetAligner("a", ["x", "y"], ALIGN)
    frames: list[Frame] = []
    late: list[int] = []
    for i in range(0, len(values), batch):
        f, lt = al.add(values[i : i + batch])
        frames.extend(f)
        late.extend(i + j for j in lt)
    return frames, late


class TestAsOf:
    def test_latest_value_at_or_before_grid_point(self) -> None:
        frames, late = run(
            [
                val("x", 0.2, 1.0),
                val("y", 0.7, 2.0),
                val("x", 1.0, 3.0),
                val("x", 1.5, 4.0),
                val("x", 2.1, 5.0),
            ]
        )
        assert not late
        got = final(frames)
        assert got[T0 + 1 * S][0] == {"x": 3.0, "y": 2.0}  # a value exactly on the grid point counts
        assert got[T0 + 2 * S][0] == {"x": 4.0, "y": 2.0}
        assert T0 + 3 * S not in got  # not emitted until data past it arrives

    def test_missing_beyond_tolerance(self) -> None:
        frames, _ = run([val("x", 0.0, 1.0), val("y", 0.0, 1.0), val("y", 2.0, 2.0), val("y", 4.0, 3.0)])
        got = final(frames)
        assert got[T0 + 1 * S][0] == {"x": 1.0, "y": 1.0}
        assert got[T0 + 2 * S][0] == {"x": None, "y": 2.0}  # x is 2 s old, tolerance 1.5 s
        assert got[T0 + 3 * S][0] == {"x": None, "y": 2.0}

    def test_late_within_watermark_emits_revision(self) -> None:
        frames, late = run([val("x", 0.0, 1.0), val("x", 2.5, 2.0), val("y", 0.9, 7.0)])
        assert not late
        f1 = [f for f in frames if f.ts == T0 + 1 * S]
        assert [(f.revision, f.values["y"]) for f in f1] == [(0, None), (1, 7.0)]

    def test_beyond_watermark_goes_to_history_only(self) -> None:
        frames, late = run([val("x", 0.0, 1.0), val("x", 5.0, 2.0), val("y", 0.9, 7.0)])
        assert late == [2]
        assert all(f.values["y"] is None for f in frames)

    def test_quality_carried_for_non_good(self) -> None:
        frames, _ = run([val("x", 0.0, 1.0, Quality.UNCERTAIN), val("y", 0.0, 2.0), val("x", 1.5, 1.0)])
        assert final(frames)[T0 + 1 * S][1] == {"x": Quality.UNCERTAIN}

    def test_site_aligner_flags_late_values(self, site: Site) -> None:
        al = Aligner(site)

        def mk(t: int, x: float) -> Value:
            return Value(node="pump-2", prop="temp", value=x, ts=T0 + t * S, recv_ts=T0 + t * S)

        al.align([mk(0, 1.0), mk(10, 2.0)])
        out = al.align([mk(1, 3.0)])
        assert out.late == 1
        assert out.values[0].flags == (Flag.LATE,)
        assert not out.frames

    def test_hot_reload_keeps_state_of_unchanged_assets(self, site: Site) -> None:
        a = Aligner(site)
        b = Aligner(site, previous=a)
        assert b.assets["pump-1"] is a.assets["pump-1"]


values_st = st.lists(
    st.tuples(
        st.sampled_from(["x", "y"]),
        st.integers(0, 200),
        st.integers(-5, 5),
        st.sampled_from([Quality.GOOD, Quality.BAD]),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(
    items=values_st,
    delays=st.lists(st.integers(0, 20), min_size=60, max_size=60),
    seed=st.integers(0, 2**16),
    batch=st.integers(1, 5),
)
def test_same_frames_in_any_arrival_order_within_watermark(
    items: list[tuple[str, int, int, Quality]], delays: list[int], seed: int, batch: int
) -> None:
    values = [val(p, t / 10, x, q) for p, t, x, q in items]  # 100 ms steps over 20 s
    ordered = sorted(values, key=lambda v: v.ts)
    rng = random.Random(seed)
    # arrival = timestamp + a delay of at most the watermark (2 s), ties in random order
    keyed = [(v.ts + d * 100_000, rng.random(), v) for v, d in zip(values, delays, strict=False)]
    arrival = [v for _, _, v in sorted(keyed, key=lambda k: (k[0], k[1]))]
    f_sorted, late_sorted = run(ordered)
    f_arrival, late_arrival = run(arrival, batch)
    assert not late_sorted
    assert not late_arrival
    assert final(f_arrival) == final(f_sorted)


@settings(max_examples=150, deadline=None)
@given(items=values_st, seed=st.integers(0, 2**16), batch=st.integers(1, 5))
def test_any_order_gives_the_frames_of_its_on_time_values(
    items: list[tuple[str, int, int, Quality]], seed: int, batch: int
) -> None:
    values = [val(p, t / 10, x, q) for p, t, x, q in items]
    random.Random(seed).shuffle(values)
    frames, late = run(values, batch)
    late_set = set(late)
    on_time = sorted((v for i, v in enumerate(values) if i not in late_set), key=lambda v: v.ts)
    f_ref, late_ref = run(on_time)
    assert not late_ref
    assert final(frames) == final(f_ref)


class TestReportByException:
    """OPC-UA subscriptions and Sparkplug B send a value only when it changes: it holds until replaced or stale."""

    def test_a_held_signal_keeps_its_value_while_a_polled_one_goes_missing(self) -> None:
        al = AssetAligner("a", ["x", "y"], ALIGN, held=["x"])
        frames: list[Frame] = []
        frames += al.add([val("x", 0.0, 7.0), val("y", 0.0, 1.0)])[0]
        frames += al.add([val("y", 1.0, 1.0), val("y", 2.0, 2.0)])[0]  # then y stops
        frames += al.add([val("x", 29.5, 8.0)])[0]  # x changes again only at 29.5 s
        got = final(frames)
        assert all(got[T0 + g * S][0]["x"] == 7.0 for g in range(0, 29))
        assert got[T0 + 10 * S][0]["y"] is None  # past its tolerance of 1.5 s
        assert len(al._series["x"].ts) <= 2  # a held value costs one cell, however long it holds

    def test_a_stale_reading_ends_the_hold(self) -> None:
        al = AssetAligner("a", ["x", "y"], ALIGN, held=["x", "y"])
        frames: list[Frame] = []
        frames += al.add([val("x", 0.0, 7.0), val("y", 0.0, 1.0)])[0]
        frames += al.add([val("y", 3.0, 2.0)])[0]
        frames += al.add([val("x", 3.5, None, Quality.BAD)])[0]  # the session was lost
        frames += al.add([val("y", 9.0, 3.0)])[0]
        got = final(frames)
        assert got[T0 + 3 * S][0] == {"x": 7.0, "y": 2.0}
        assert got[T0 + 5 * S][0] == {"x": None, "y": 2.0}
        assert got[T0 + 5 * S][1] == {}  # None carries no quality: the cell is simply missing

    def test_hold_ms_bounds_the_hold(self) -> None:
        al = AssetAligner("a", ["x", "y"], AlignmentDef(grid_ms=1000, tolerance_ms=1500, hold_ms=5000), held=["x"])
        frames: list[Frame] = []
        frames += al.add([val("x", 0.0, 7.0)])[0]
        for t in range(1, 12):
            frames += al.add([val("y", t, float(t))])[0]
        got = final(frames)
        assert got[T0 + 5 * S][0]["x"] == 7.0
        assert got[T0 + 6 * S][0]["x"] is None

    def test_the_site_says_which_signals_report_by_exception(self) -> None:
        from pathlib import Path

        from edge_agent.align import reports_by_exception
        from plant.site import load_site

        site = load_site(Path(__file__).parents[2] / "examples" / "plant.yaml")
        nodes = {n.id: n for n in site.assets()}
        assert reports_by_exception(site, nodes["engine-1"]) == frozenset(nodes["engine-1"].bindings)  # OPC-UA
        assert reports_by_exception(site, nodes["mill-1"]) == frozenset()  # plain JSON over MQTT
        assert Aligner(site).assets["engine-1"].held == frozenset(nodes["engine-1"].bindings)
