"""On-device diagnostics: frames → windows → the committed models → Diagnosis, swaps, rollbacks, load, baselines.

The models are the committed registry's; the frames come from the example plant's data slices (the rows the
simulator replays), in the site's units.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edge_agent import metrics
from edge_agent.config import AgentSettings
from edge_agent.diagnostics.diagnose import Diagnoser
from edge_agent.diagnostics.model_slots import PACKAGE_REGISTRY
from edge_agent.errors import ModelUnusable
from edge_agent.units import affine
from factory_twin.simulator.datasets import FEEDS, convert
from factory_twin.simulator.examples import data_dir, example_site_path
from plant.site import Site, load_site
from plant.wire import Diagnosis, DiagnosisSource, Frame, Quality, Scalar

GRID = 1_000_000
# the newest RUL model shipped, which the agent loads unless told otherwise
RUL = max((p.name for p in (PACKAGE_REGISTRY / "rul").iterdir()), key=lambda v: tuple(map(int, v.split("."))))
FAULTS = max((p.name for p in (PACKAGE_REGISTRY / "faults").iterdir()), key=lambda v: tuple(map(int, v.split("."))))
T0 = 1_700_000_000_000_000
HEALTHY_MILL = {"product_type": "M", "air_temperature": 298.0, "process_temperature": 308.6,
                "rotational_speed": 1500.0, "torque": 40.0, "tool_wear": 10.0}  # fmt: skip
FAILING_MILL = {**HEALTHY_MILL, "air_temperature": 302.0, "process_temperature": 310.0, "rotational_speed": 1300.0}


def example_site() -> Site:
    """The example plant: mill-1 (faults), pump-1 (anomaly), engine-1 (rul)."""
    return load_site(example_site_path())


def site_of(
    machines: dict[str, str],
    types: dict[str, dict[str, Any]] | None = None,
    source: dict[str, Any] | None = None,
    binding: Any = None,
    **node_fields: Any,
) -> dict[str, Any]:
    """A site (as a mapping) with one hall of ``machines`` (id → type); the types default to the example
    plant's, every property bound on the MQTT source ``plc`` (``binding(node, prop)`` gives each binding)."""
    example = example_site().asset_types
    types = types or {t: example[t].model_dump(mode="json", exclude={"alerts"}) for t in set(machines.values())}
    bind = binding or (lambda node, prop: {"source": "plc", "topic": f"m/{node}", "path": prop})
    nodes = [
        {"id": node, "kind": "machine", "type": t, "bindings": {p: bind(node, p) for p in types[t]["properties"]},
         **node_fields}
        for node, t in machines.items()
    ]  # fmt: skip
    return {
        "site": {"id": "t"},
        "sources": {"plc": source or {"kind": "mqtt", "format": "json"}},
        "asset_types": types,
        "nodes": [{"id": "t", "kind": "site", "children": [{"id": "hall", "kind": "area", "children": nodes}]}],
    }


def feed_rows(site: Site, node_id: str, files: tuple[str, ...] | None = None) -> list[dict[str, Scalar]]:
    """The rows the simulator replays for a machine, as the agent's frames hold them (site units)."""
    node = site.node(node_id)
    assert node.type is not None
    feed = FEEDS[node.type]
    atype = site.asset_types[node.type]
    if files is not None:
        feed = replace(feed, files=files)
    out = []
    for raw in feed.load(data_dir()):
        row: dict[str, Scalar] = {}
        for prop in node.bindings:
            if prop in feed.setpoints:  # written, not replayed: no column of the data set
                continue
            v = convert(raw[feed.columns[prop]], atype.properties[prop].dtype, prop)
            if isinstance(v, float):
                scale, offset = affine(feed.units[prop], atype.properties[prop].unit)
                v = v * scale + offset
            row[prop] = v
        out.append(row)
    return out


def frame(node: str, i: int, values: dict[str, Any], **kw: Any) -> Frame:
    """The frame of grid point ``i``."""
    return Frame(node=node, ts=T0 + i * GRID, values=values, **kw)


def make(tmp_path: Path, site: Site | None = None, registry: Path = PACKAGE_REGISTRY, **settings: Any) -> Diagnoser:
    """A Diagnoser on the committed models, its state under ``tmp_path``."""
    s = AgentSettings(data_dir=tmp_path / "agent", **settings)
    return Diagnoser(site or example_site(), s, registry)


def run_frames(d: Diagnoser, frames_by_step: list[list[Frame]]) -> list[Diagnosis]:
    """Observe frames step by step, diagnosing after each step, as the agent's loop does."""
    out: list[Diagnosis] = []
    for frames in frames_by_step:
        d.observe(frames)
        out += d.diagnose_pending()
    return out


def copy_model(src: Path, dst: Path, version: str, edit: Any = None) -> Path:
    """A registry model directory copied under another version, its manifest optionally edited."""
    shutil.copytree(src, dst / version)
    manifest = json.loads((dst / version / "manifest.json").read_text())
    manifest["version"] = version
    if edit is not None:
        edit(manifest)
    (dst / version / "manifest.json").write_text(json.dumps(manifest))
    return dst / version


def test_each_machine_is_diagnosed_by_its_types_models(tmp_path: Path) -> None:
    site = example_site()
    rows = {n: feed_rows(site, n) for n in ("mill-1", "pump-1", "engine-1")}
    d = make(tmp_path, site, baseline_hours=0)  # the pump scores against the fleet's default baseline
    assert set(d.versions()) == {"cnc_mill", "pump", "turbofan"}
    out = run_frames(d, [[frame(n, i, r[i]) for n, r in rows.items()] for i in range(40)])
    by = {(x.node, x.task): [y for y in out if (y.node, y.task) == (x.node, x.task)] for x in out}
    faults, rul, anomaly = by[("mill-1", "faults")], by[("engine-1", "rul")], by[("pump-1", "anomaly")]
    assert len(faults) == 40  # a window of one row: every grid point
    assert len(rul) == 40 - 14  # from the model's shortest window (15 cycles) on
    assert len(anomaly) == 40 - 29  # windows of 30 rows
    f = faults[0]
    assert (f.ts, f.model, f.source) == (T0, "ai4i-faults", DiagnosisSource.EDGE)
    assert f.label == "none"
    assert f.probability is not None
    assert 0.5 < f.probability <= 1
    r = rul[-1]
    assert r.ts == T0 + 39 * GRID
    assert r.unit == "cycle"
    assert r.model == "cmapss-rul"
    assert r.rul is not None
    assert r.rul_low is not None
    assert r.rul_high is not None
    assert 0 <= r.rul_low <= r.rul <= r.rul_high
    a = anomaly[-1]
    assert a.score is not None
    assert a.threshold is not None
    assert a.label in ("normal", "anomaly")
    assert d.latest[("engine-1", "rul")] == r


def test_a_window_missing_a_signal_is_skipped_and_counted(tmp_path: Path) -> None:
    site = example_site()
    rows = feed_rows(site, "engine-1")
    d = make(tmp_path, site)
    before = metrics.WINDOWS_SKIPPED.labels("rul", "missing_signal")._value.get()
    steps = [[frame("engine-1", i, rows[i])] for i in range(20)]
    steps[17] = [frame("engine-1", 17, {**rows[17], "t24": None})]
    out = run_frames(d, steps)
    # windows ending at 14..16 are fine; 17, 18, 19 hold the hole: 17 is skipped once it is past the watermark
    # (no revision can fill it any more), 18 and 19 wait for one
    assert [x.ts for x in out] == [T0 + i * GRID for i in (14, 15, 16)]
    assert d.skipped["missing_signal"] == 1
    assert metrics.WINDOWS_SKIPPED.labels("rul", "missing_signal")._value.get() == before + 1
    # a revision that fills the hole in time makes the waiting windows whole: diagnosed after all
    out = run_frames(d, [[frame("engine-1", 17, rows[17], revision=1), frame("engine-1", 20, rows[20])]])
    assert [x.ts for x in out] == [T0 + i * GRID for i in (18, 19, 20)]
    assert d.skipped["missing_signal"] == 1


def test_a_signal_arriving_late_within_the_watermark_is_diagnosed_after_all(tmp_path: Path) -> None:
    # A source lagging past the alignment tolerance: the frame is emitted without it, then revised.
    site = example_site()
    rows = feed_rows(site, "engine-1")
    d = make(tmp_path, site)
    steps = [[frame("engine-1", i, rows[i])] for i in range(17)]
    steps.append([frame("engine-1", 17, {**rows[17], "t24": None})])
    steps.append([frame("engine-1", 17, rows[17], revision=1), frame("engine-1", 18, rows[18])])
    out = run_frames(d, steps)
    assert [x.ts for x in out] == [T0 + i * GRID for i in range(14, 19)]  # 17 too, no window lost
    assert "missing_signal" not in d.skipped


def test_bad_quality_and_gaps_give_no_window(tmp_path: Path) -> None:
    site = example_site()
    rows = feed_rows(site, "engine-1")
    d = make(tmp_path, site)
    steps = [[frame("engine-1", i, rows[i])] for i in range(15)]
    steps[14] = [frame("engine-1", 14, rows[14], quality={"t50": Quality.BAD})]
    assert run_frames(d, steps) == []
    assert "bad_quality" not in d.skipped  # not yet: a revision may still come within the watermark
    # an outage of five grid points: a new window needs 15 consecutive frames again
    out = run_frames(d, [[frame("engine-1", i, rows[i])] for i in range(20, 40)])
    assert [x.ts for x in out] == [T0 + i * GRID for i in range(34, 40)]
    assert d.skipped["bad_quality"] == 1


def test_swap_model_checks_before_use_and_keeps_the_old_one_on_failure(tmp_path: Path) -> None:
    d = make(tmp_path)
    assert d.versions()["turbofan"]["rul"] == RUL
    broken = copy_model(PACKAGE_REGISTRY / "rul" / RUL, tmp_path / "reg" / "rul", "2.0.0")
    (broken / "student.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelUnusable, match="sha256"):
        d.swap_model("turbofan", "rul", broken)
    with pytest.raises(ModelUnusable, match="not rul"):
        d.swap_model("turbofan", "rul", PACKAGE_REGISTRY / "faults" / "1.0.0")
    with pytest.raises(ModelUnusable, match="no faults model"):
        d.swap_model("turbofan", "faults", PACKAGE_REGISTRY / "faults" / "1.0.0")
    assert d.versions()["turbofan"]["rul"] == RUL
    assert d.swap_model("turbofan", "rul", PACKAGE_REGISTRY / "rul" / "1.0.0") == "1.0.0"
    assert d.versions()["turbofan"]["rul"] == "1.0.0"
    rows = feed_rows(example_site(), "engine-1")
    out = run_frames(d, [[frame("engine-1", i, rows[i])] for i in range(16)])
    assert {x.version for x in out} == {"1.0.0"}


def test_a_model_reading_signals_the_type_lacks_is_refused(tmp_path: Path) -> None:
    d = make(tmp_path)
    odd = copy_model(
        PACKAGE_REGISTRY / "faults" / "1.0.0",
        tmp_path / "reg" / "faults",
        "2.0.0",
        lambda m: m["input"]["signals"].__setitem__(1, "spindle_vibration"),
    )
    with pytest.raises(ModelUnusable, match="spindle_vibration"):
        d.swap_model("cnc_mill", "faults", odd)
    assert d.versions()["cnc_mill"]["faults"] == FAULTS


def _bad_band(manifest: dict[str, Any]) -> None:
    """RUL from 60 to 120 cycles gets an interval below its estimate: out of range on live engine data only
    (the probe window scores above 120)."""
    for entry in manifest["variants"].values():
        entry["calibration"] = {"coverage": 0.8, "edges": [30.0, 60.0, 120.0],
                                "lower": [-5.0, -9.0, -20.0, -24.0], "upper": [4.0, 11.0, -50.0, 31.0]}  # fmt: skip


def test_out_of_range_output_on_live_data_rolls_back_and_reports(tmp_path: Path) -> None:
    registry = tmp_path / "reg"  # empty: the package's models are used
    bad = copy_model(PACKAGE_REGISTRY / "rul" / RUL, tmp_path / "download" / "rul", "9.9.9", _bad_band)
    reports: list[tuple[str, str, str, str]] = []
    d = make(tmp_path, registry=registry)
    d.on_rollback = lambda *args: reports.append(args)
    rows = feed_rows(example_site(), "engine-1")
    out = run_frames(d, [[frame("engine-1", i, rows[i])] for i in range(20)])
    assert {x.version for x in out} == {RUL}
    assert d.swap_model("turbofan", "rul", bad) == "9.9.9"  # passes the probe
    out = run_frames(d, [[frame("engine-1", i, rows[i])] for i in range(20, 23)])
    assert reports == [("turbofan", "rul", "9.9.9", "out_of_range")]
    assert d.versions()["turbofan"]["rul"] == RUL
    assert [x.version for x in out] == [RUL, RUL]  # the failing window is skipped, not uplinked
    assert d.skipped["out_of_range"] == 1
    # remembered: a restart does not load it, though it is now the newest in the registry
    shutil.copytree(bad, registry / "rul" / "9.9.9")
    assert make(tmp_path, registry=registry).versions()["turbofan"]["rul"] == RUL
    assert make(tmp_path / "elsewhere", registry=registry).versions()["turbofan"]["rul"] == "9.9.9"


def _set_cascade(value: Any) -> Any:
    return lambda m: m.__setitem__("cascade", {**(m.get("cascade") or {}), "confidence_threshold": value})


def _no_lower_bounds(manifest: dict[str, Any]) -> None:
    for entry in manifest["variants"].values():
        entry["calibration"]["lower"] = [None] * len(entry["calibration"]["lower"])


@pytest.mark.parametrize(
    ("task", "asset_type", "edit", "match"),
    [
        ("rul", "turbofan", lambda m: m["output"].pop("cap"), "output.cap"),
        ("rul", "turbofan", lambda m: m["output"].__setitem__("cap", "125"), "output.cap"),
        ("rul", "turbofan", _set_cascade("0,5"), "confidence_threshold"),
        ("faults", "cnc_mill", _set_cascade(1.5), "confidence_threshold"),
        ("faults", "cnc_mill", lambda m: m.__setitem__("cascade", [0.5]), "cascade"),
        ("anomaly", "pump", lambda m: m["baseline"].pop("min_rows"), "min_rows"),
        ("anomaly", "pump", lambda m: m["baseline"].pop("default"), "KeyError"),
        ("rul", "turbofan", _no_lower_bounds, "probe window"),  # the probe's band: TypeError in the runtime
    ],
)
def test_a_malformed_manifest_field_is_a_model_error_and_the_old_model_stays(
    tmp_path: Path, task: str, asset_type: str, edit: Any, match: str
) -> None:
    d = make(tmp_path)
    before = d.versions()[asset_type][task]
    bad = copy_model(PACKAGE_REGISTRY / task / before, tmp_path / "reg" / task, "9.9.9", edit)
    with pytest.raises(ModelUnusable, match=match):
        d.swap_model(asset_type, task, bad)
    assert d.versions()[asset_type][task] == before
    # nor does it stop an agent starting with it as the newest in its registry: the next version is used
    assert make(tmp_path / "restart", registry=tmp_path / "reg").versions()[asset_type][task] == before


def _none_in_band(manifest: dict[str, Any]) -> None:
    """RUL from 60 to 120 cycles has no lower bound: predict raises TypeError on live engine data only (the probe
    window scores above 120)."""
    for entry in manifest["variants"].values():
        entry["calibration"] = {"coverage": 0.8, "edges": [30.0, 60.0, 120.0],
                                "lower": [-5.0, -9.0, None, -24.0], "upper": [4.0, 11.0, 20.0, 31.0]}  # fmt: skip


def test_a_model_raising_any_error_on_live_data_is_rolled_back(tmp_path: Path) -> None:
    bad = copy_model(PACKAGE_REGISTRY / "rul" / RUL, tmp_path / "download" / "rul", "9.9.9", _none_in_band)
    reports: list[tuple[str, str, str, str]] = []
    d = make(tmp_path, registry=tmp_path / "reg")
    d.on_rollback = lambda *args: reports.append(args)
    rows = feed_rows(example_site(), "engine-1")
    run_frames(d, [[frame("engine-1", i, rows[i])] for i in range(20)])
    assert d.swap_model("turbofan", "rul", bad) == "9.9.9"  # passes the probe
    out = run_frames(d, [[frame("engine-1", i, rows[i])] for i in range(20, 23)])
    assert reports == [("turbofan", "rul", "9.9.9", "inference_failed")]
    assert d.versions()["turbofan"]["rul"] == RUL
    assert [x.version for x in out] == [RUL, RUL]
    assert d.skipped["inference_failed"] == 1


def test_a_swapped_in_model_keeps_one_predecessor_only(tmp_path: Path) -> None:
    d = make(tmp_path)
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        d.swap_model("turbofan", "rul", PACKAGE_REGISTRY / "rul" / version)
    slot = d.models.get(("turbofan", "rul"))
    assert slot is not None
    assert slot.previous is not None
    assert slot.previous.version == "1.1.0"
    assert slot.previous.previous is None  # the older sessions are freed


def test_a_numeric_manifest_version_is_a_string_on_the_wire(tmp_path: Path) -> None:
    numbered = copy_model(
        PACKAGE_REGISTRY / "rul" / RUL, tmp_path / "reg" / "rul", "7", lambda m: m.__setitem__("version", 7)
    )
    d = make(tmp_path)
    assert d.swap_model("turbofan", "rul", numbered) == "7"
    rows = feed_rows(example_site(), "engine-1")
    out = run_frames(d, [[frame("engine-1", i, rows[i])] for i in range(16)])
    assert [x.version for x in out] == ["7", "7"]
    for x in out:  # what the platform validates
        assert Diagnosis.model_validate_json(x.model_dump_json()) == x
