"""Per-machine baselines: learnt from healthy operation, persisted across restarts, visible, fewer false alarms."""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs

from edge_agent import metrics
from edge_agent.baseline import Adapted, adapt
from factory_twin.simulator.datasets import read_skab
from factory_twin.simulator.examples import data_dir
from models import runtime
from models.runtime import Prediction
from plant.site import Site
from tests.edge.test_diagnose import (
    FAILING_MILL,
    GRID,
    HEALTHY_MILL,
    T0,
    example_site,
    feed_rows,
    frame,
    make,
    run_frames,
    site_of,
)

HOURS = 420 / 3600  # 420 rows at the pump's 1 s grid; the model needs 400 at least
VALVE = "skab_valve1_0.csv.gz"  # SKAB: normal operation, then a valve fault from row 573 on


def progress(node: str) -> float:
    return float(metrics.BASELINE_PROGRESS.labels(node, "anomaly")._value.get())


def test_learns_from_healthy_operation_resumes_after_restart_and_is_ready(tmp_path: Path) -> None:
    site = example_site()
    rows = feed_rows(site, "pump-1", (VALVE,))
    d = make(tmp_path, site, baseline_hours=HOURS)
    out = run_frames(d, [[frame("pump-1", i, rows[i])] for i in range(200)])
    assert out == []  # no anomaly verdict against the fleet's default while learning
    assert d.skipped["baseline_learning"] == 200 - 29
    assert d.baselines() == {"pump-1": "47%"}  # 198 closed rows of 420 (the newest two can still change)
    assert progress("pump-1") == 198 / 420
    d.close_store()

    d = make(tmp_path, site, baseline_hours=HOURS)  # restart: learning resumes where it stopped
    run_frames(d, [[frame("pump-1", i, rows[i])] for i in range(200, 260)])
    assert d.baselines() == {"pump-1": "60%"}  # 198 + 58: the two rows still open at the stop are lost
    with capture_logs() as logs:
        out = run_frames(d, [[frame("pump-1", i, rows[i])] for i in range(260, 450)])
    assert d.baselines() == {"pump-1": "ready"}
    events = [e["event"] for e in logs if e["event"].startswith("baseline")]
    assert "baseline_ready" in events
    assert events.count("baseline_in_use") == 2
    assert out[0].ts == T0 + 404 * GRID  # the 400th row (frame 401) is closed by frame 403; used from 404
    assert progress("pump-1") == 1.0
    d.close_store()

    d = make(tmp_path, site, baseline_hours=HOURS)  # restart: the baseline is ready at once
    out = run_frames(d, [[frame("pump-1", i, rows[i])] for i in range(450, 480)])
    assert [x.ts for x in out] == [T0 + 479 * GRID]
    assert d.baselines() == {"pump-1": "ready"}
    d.close_store()


def test_adaptation_cuts_false_alarms_and_still_sees_the_fault(tmp_path: Path) -> None:
    site = example_site()
    rows = feed_rows(site, "pump-1", (VALVE,))
    labels = [float(r["anomaly"]) for r in read_skab(data_dir() / VALVE)]
    shares = {}
    for hours in (0, HOURS):
        d = make(tmp_path / str(hours), site, baseline_hours=hours)
        out = run_frames(d, [[frame("pump-1", i, rows[i])] for i in range(len(rows))])
        scored = [(x.label == "anomaly", labels[(x.ts - T0) // GRID]) for x in out if x.ts >= T0 + 430 * GRID]
        normal = [alarm for alarm, label in scored if label == 0]
        faulty = [alarm for alarm, label in scored if label == 1]
        shares[hours] = (sum(normal) / len(normal), sum(faulty) / len(faulty))
        d.close_store()
    default_far, _ = shares[0]
    far, detected = shares[HOURS]
    assert default_far > 0.9  # this pump's normal operation is far from the fleet's
    assert far < 0.2
    assert detected > 2 * far  # the valve fault still raises alarms, far more often than normal operation


def _combined_site(**node_fields: object) -> Site:
    """One machine type carrying both the mill's and the pump's signals, diagnosed by faults and anomaly."""
    example = example_site().asset_types
    props = {**example["cnc_mill"].model_dump(mode="json")["properties"],
             **example["pump"].model_dump(mode="json")["properties"]}  # fmt: skip
    rig = {"models": ["faults", "anomaly"], "properties": props}
    return Site.model_validate(site_of({"rig-1": "rig"}, types={"rig": rig}, **node_fields))


def test_an_open_fault_or_the_site_pauses_learning(tmp_path: Path) -> None:
    pump = feed_rows(example_site(), "pump-1", (VALVE,))
    d = make(tmp_path / "a", _combined_site(), baseline_hours=HOURS)
    run_frames(d, [[frame("rig-1", i, {**FAILING_MILL, **pump[i]})] for i in range(50)])
    assert d.latest[("rig-1", "faults")].label == "HDF"
    assert d.baselines() == {"rig-1": "0%"}  # a machine with an open fault is not learnt from
    run_frames(d, [[frame("rig-1", i, {**HEALTHY_MILL, **pump[i]})] for i in range(50, 100)])
    assert d.baselines() == {"rig-1": "11%"}  # 48 rows: the fault cleared at 50, two newest still open
    d.close_store()

    d = make(tmp_path / "b", _combined_site(attributes={"healthy": False}), baseline_hours=HOURS)
    run_frames(d, [[frame("rig-1", i, {**HEALTHY_MILL, **pump[i]})] for i in range(100)])
    assert d.baselines() == {"rig-1": "0%"}  # marked in the site: commissioning, a known defect
    d.close_store()


def test_the_threshold_never_drops_below_the_calibrated_one() -> None:
    rows = feed_rows(example_site(), "pump-1", (VALVE,))
    model = runtime.load(runtime_dir := Path(runtime.__file__).parent / "registry" / "anomaly" / "1.0.0")
    assert runtime_dir.is_dir()
    signals = model.spec.signals
    adapted = adapt(model, [[float(r[s]) for s in signals] for r in rows[:500]], {}, 0.99)
    calibrated = float(model.manifest["variants"][model.variant]["calibration"]["threshold"])
    assert adapted.threshold >= calibrated
    # a machine whose own normal windows score high gets its own, higher threshold
    rough = Adapted(adapted.model, 2 * calibrated)
    judged = rough.apply(Prediction(confidence=1.0, score=1.5 * calibrated, threshold=calibrated, label="anomaly"))
    assert (judged.label, judged.threshold) == ("normal", 2 * calibrated)
    assert abs(judged.confidence - 0.25) < 1e-9
