"""Per-machine baselines: learnt from healthy operation, persisted across restarts, visible, fewer false alarms."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from edge_agent import metrics
from edge_agent.diagnostics.baseline import Adapted, BaselineLearner, BaselineStore, adapt
from edge_agent.errors import ModelUnusable
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
    props = {name: p for name, p in props.items() if not p.get("writable")}  # measured signals only
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


def _fill(learner: BaselineLearner, start: int, n: int) -> list[tuple[int, list[float]]]:
    """``n`` healthy rows fed to the learner, taken out of its pending rows as the Diagnoser does."""
    learner.feed([(T0 + i * GRID, [float(i)] * len(learner.signals)) for i in range(start, start + n)], True)
    rows, learner.pending = learner.pending, []
    return rows


def test_a_full_disk_is_a_model_error(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path / "baselines.sqlite")
    learner = BaselineLearner("pump-1", "anomaly", ("a", "b", "c"), GRID, 3600 * GRID, 400, 20_000)
    store.save(learner, _fill(learner, 0, 10))
    db = store._db  # a full disk, as SQLite sees it: no page beyond those in use (it rolls back by itself)
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
    with pytest.raises(ModelUnusable, match="cannot write baseline rows"):
        store.save(learner, _fill(learner, 10, 1000))
    assert not db.in_transaction
    db.execute("PRAGMA max_page_count = 1000000")
    store.save(learner, _fill(learner, 1010, 10))  # usable again once there is room
    store.close()


def test_rows_a_full_store_could_not_take_are_written_later(tmp_path: Path) -> None:
    site = example_site()
    rows = feed_rows(site, "pump-1", (VALVE,))
    d = make(tmp_path, site, baseline_hours=HOURS)
    run_frames(d, [[frame("pump-1", i, rows[i])] for i in range(50)])
    assert d._store is not None
    db = d._store._db
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
    with capture_logs() as logs:
        run_frames(d, [[frame("pump-1", i, rows[i])] for i in range(50, 150)])  # diagnosing goes on
    assert "baseline_store_failed" in [e["event"] for e in logs]
    db.execute("PRAGMA max_page_count = 1000000")
    run_frames(d, [[frame("pump-1", i, rows[i])] for i in range(150, 152)])
    d.close_store()

    d = make(tmp_path, site, baseline_hours=HOURS)  # restart: the 150 closed rows are all there
    run_frames(d, [[frame("pump-1", 152, rows[152])]])
    assert d.baselines() == {"pump-1": "35%"}  # 150 of 420 rows
    d.close_store()


def test_a_damaged_store_is_reported_and_learning_goes_on(tmp_path: Path) -> None:
    site = example_site()
    rows = feed_rows(site, "pump-1", (VALVE,))
    d = make(tmp_path, site, baseline_hours=HOURS)
    run_frames(d, [[frame("pump-1", i, rows[i])] for i in range(200)])
    d.close_store()
    path = tmp_path / "agent" / "baselines.sqlite"
    data = path.read_bytes()
    path.write_bytes(data[:4096] + b"\xa5" * (len(data) - 4096))  # the schema page intact, the tables not

    learner = BaselineLearner("pump-1", "anomaly", ("a",), GRID, 3600 * GRID, 400, 20_000)
    store = BaselineStore(path)
    with pytest.raises(ModelUnusable, match="cannot read the baseline"):
        store.load(learner)
    store.close()

    d = make(tmp_path, site, baseline_hours=HOURS)
    with capture_logs() as logs:
        out = run_frames(d, [[frame("pump-1", i, rows[i])] for i in range(200, 240)])
    assert "baseline_store_failed" in [e["event"] for e in logs]
    assert out == []  # learning from scratch, in memory
    assert d.baselines() == {"pump-1": "9%"}
    d.close_store()


def test_while_learning_it_says_so_with_progress_and_when_it_will_judge(tmp_path: Path) -> None:
    site = example_site()
    rows = feed_rows(site, "pump-1", (VALVE,))
    d = make(tmp_path, site, baseline_hours=HOURS)
    out: list = []
    for i in range(420):
        d.observe([frame("pump-1", i, rows[i])])
        out += d.diagnose_pending(learning=True)
    learning = [x for x in out if x.learning is not None]
    verdicts = [x for x in out if x.learning is None]
    assert learning, "no diagnosis said the model is learning"
    assert all(x.task == "anomaly" and x.score is None and x.confidence == 0.0 for x in learning)
    gaps = {(b.ts - a.ts) // GRID for a, b in itertools.pairwise(learning)}
    assert gaps == {15}  # one every 15 s of the machine's time, not one per window
    shares = [x.learning for x in learning]
    assert shares == sorted(shares)
    assert 0 < shares[0] < 0.1
    assert shares[-1] > 0.9
    # it expects to judge once it has the model's 400 healthy rows, a row per grid step from now
    first = learning[0]
    assert first.ready_at is not None
    assert abs((first.ready_at - first.ts) / GRID - (400 - first.learning * 400)) <= 1
    assert verdicts
    assert verdicts[0].ts > learning[-1].ts  # it stops saying so once it judges
