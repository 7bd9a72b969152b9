"""TwinStore.apply on SQLite and PostgreSQL: storage, idempotency, monotonic latest state, bad input."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import Engine, func, select, text

from plant.wire import Diagnosis, Frame, Quality, UplinkBatch
from twin.config import TwinSettings
from twin.errors import StoreError
from twin.site_sync import sync_site
from twin.store import Change, TwinStore, prune_rejections
from twin.tables import DiagnosisRecord, FramePoint, HistoryRow, IngestRejection

from .store_helpers import NOW, SEC, SITE_YAML, batch, history_count, prop, site, value


@pytest.fixture
def store(empty_engine: Engine) -> TwinStore:
    s = TwinStore(empty_engine, TwinSettings())
    s.sync_site(site())
    return s


def test_values_are_stored_in_history_and_latest(store: TwinStore) -> None:
    b = batch(value(v=20.5, ts=NOW - 2 * SEC), value(v=21.0, ts=NOW - SEC), value("p2", "mode", "auto"))
    result = store.apply(b, now_us=NOW)
    assert (result.accepted, result.duplicates, result.rejected) == (3, 0, ())
    assert history_count(store.engine) == 3
    p = prop(store.engine, "p1", "temp")
    assert (p.value_num, p.ts, p.quality) == (21.0, NOW - SEC, 0)
    assert prop(store.engine, "p2", "mode").value_text == "auto"
    assert set(result.changes) == {
        Change("p1", "temp", 21.0, NOW - SEC, Quality.GOOD),
        Change("p2", "mode", "auto", NOW, Quality.GOOD),
    }
    assert result.nodes_changed == {"p1", "p2"}
    ack = result.ack(b)
    assert ack.stored
    assert ack.accepted == 3
    assert ack.batch == "b1"


def test_same_key_twice_is_stored_once(store: TwinStore) -> None:
    b = batch(value(v=1.0, ts=NOW - SEC), value(v=2.0, ts=NOW))
    store.apply(b, now_us=NOW)
    again = store.apply(b, now_us=NOW)
    assert (again.accepted, again.duplicates, again.changes) == (0, 2, ())
    assert history_count(store.engine) == 2
    # the same key twice within one batch: the first is kept
    twice = store.apply(batch(value(v=5.0, ts=NOW + SEC), value(v=6.0, ts=NOW + SEC)), now_us=NOW)
    assert (twice.accepted, twice.duplicates) == (1, 1)
    assert prop(store.engine, "p1", "temp").value_num == 5.0


def test_latest_state_never_moves_backwards(store: TwinStore) -> None:
    store.apply(batch(value(v=30.0, ts=NOW)), now_us=NOW)
    late = store.apply(batch(value(v=10.0, ts=NOW - 60 * SEC)), now_us=NOW)
    assert late.accepted == 1
    assert late.changes == ()
    same_ts = store.apply(batch(value(v=99.0, ts=NOW)), now_us=NOW)
    assert same_ts.duplicates == 1
    assert same_ts.changes == ()
    p = prop(store.engine, "p1", "temp")
    assert (p.value_num, p.ts) == (30.0, NOW)
    assert history_count(store.engine) == 2


def test_newest_value_of_a_batch_becomes_latest(store: TwinStore) -> None:
    vals = [value(v=float(i), ts=NOW - i * SEC) for i in range(5)]
    result = store.apply(batch(*vals), now_us=NOW)
    assert result.changes == (Change("p1", "temp", 0.0, NOW, Quality.GOOD),)
    assert history_count(store.engine) == 5


BAD_VALUES = [
    (value("nope", "temp"), "unknown_node"),
    (value("p1", "nope"), "unknown_property"),
    (value(v="hot"), "wrong_type"),
    (value(prop="count", v=1.5), "wrong_type"),
    (value(prop="running", v=1), "wrong_type"),
    (value(prop="mode", v=3.0), "wrong_type"),
    (value(v=math.nan), "not_finite"),
    (value(v=math.inf), "not_finite"),
    (value(prop="count", v=-math.inf), "not_finite"),
    (value(v=None), "missing_value"),
    (value(ts=NOW + 601 * SEC), "ts_in_future"),
    (value(ts=946_684_799_000_000), "ts_too_old"),  # 1999-12-31T23:59:59Z
]


def test_bad_values_are_rejected_without_blocking_the_good(store: TwinStore) -> None:
    items = []
    for i, (bad, _) in enumerate(BAD_VALUES):  # each bad value between two good ones
        items += [value("p2", "count", i, ts=NOW - (100 - i) * SEC), bad]
    items.append(value("p2", "temp", 1.0))
    result = store.apply(batch(*items), now_us=NOW)
    assert result.accepted == len(BAD_VALUES) + 1
    assert [(r.kind, r.index, r.reason) for r in result.rejected] == [
        ("value", 2 * i + 1, reason) for i, (_, reason) in enumerate(BAD_VALUES)]
    assert all(r.detail for r in result.rejected)
    assert history_count(store.engine) == len(BAD_VALUES) + 1
    assert prop(store.engine, "p2", "count").value_num == len(BAD_VALUES) - 1
    ack = result.ack(batch())
    assert [r.reason for r in ack.rejected] == [reason for _, reason in BAD_VALUES]
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(IngestRejection.reason, IngestRejection.gateway, IngestRejection.kind)).all()
    assert sorted(rows) == sorted((reason, "gw1", "value") for _, reason in BAD_VALUES)


def test_a_number_far_outside_its_declared_range_is_rejected(store: TwinStore) -> None:
    """temp is declared 0-120: an excursion (the reason alerts exist) is kept, 1e300 from a broken sensor is not."""
    items = [value(v=150.0, ts=NOW), value(v=-1000.0, ts=NOW + 1), value(v=1e300, ts=NOW + 2),
             value(v=10**6, ts=NOW + 3), value("p2", "count", 10**15, ts=NOW + 4)]  # count has no range
    frame = Frame(node="p1", ts=NOW, values={"temp": -5000.0})
    result = store.apply(batch(*items, frames=[frame]), now_us=NOW)
    assert [(r.kind, r.index, r.reason) for r in result.rejected] == [
        ("value", 2, "out_of_range"), ("value", 3, "out_of_range"), ("frame", 0, "out_of_range")]
    assert "far outside its range" in result.rejected[0].detail
    assert result.accepted == 3


def test_limits_at_the_edges_are_accepted(store: TwinStore) -> None:
    edge = [value(ts=NOW + 600 * SEC), value(ts=946_684_800_000_000, v=1.0)]
    assert store.apply(batch(*edge), now_us=NOW).accepted == 2


def test_types_round_trip_into_changes(store: TwinStore) -> None:
    vals = [value(prop="count", v=3), value(prop="count", v=4.0, ts=NOW + 1),
            value(prop="running", v=True), value(prop="mode", v="")]
    result = store.apply(batch(*vals), now_us=NOW)
    assert result.accepted == 4
    latest = {c.prop: c.value for c in result.changes}
    assert latest == {"count": 4, "running": True, "mode": ""}
    assert isinstance(latest["count"], int)


def test_bad_quality_without_value_is_kept(store: TwinStore) -> None:
    store.apply(batch(value(v=5.0, ts=NOW - SEC)), now_us=NOW)
    result = store.apply(batch(value(v=None, quality=Quality.BAD, flags=("stale",))), now_us=NOW)
    assert result.changes == (Change("p1", "temp", None, NOW, Quality.BAD),)
    p = prop(store.engine, "p1", "temp")
    assert (p.value_num, p.quality, p.flags) == (None, 2, "stale")


def test_frames_higher_revision_replaces(store: TwinStore) -> None:
    f0 = Frame(node="p1", ts=NOW, values={"temp": 1.0, "count": 2}, revision=0)
    f1 = Frame(node="p1", ts=NOW, values={"temp": 1.5, "count": 2}, quality={"temp": Quality.UNCERTAIN},
               revision=1)
    assert store.apply(batch(frames=[f0]), now_us=NOW).accepted == 1
    assert store.apply(batch(frames=[f0]), now_us=NOW).duplicates == 1
    assert store.apply(batch(frames=[f1]), now_us=NOW).accepted == 1
    assert store.apply(batch(frames=[f0]), now_us=NOW).duplicates == 1
    with store.engine.connect() as conn:
        row = conn.execute(select(FramePoint.revision, FramePoint.values, FramePoint.quality)).one()
    assert row == (1, {"temp": 1.5, "count": 2}, {"temp": "uncertain"})


def test_bad_frames_are_rejected(store: TwinStore) -> None:
    frames = [Frame(node="p1", ts=NOW, values={"nope": 1.0}), Frame(node="zz", ts=NOW, values={}),
              Frame(node="p1", ts=NOW, values={"temp": math.nan}),
              Frame(node="p2", ts=NOW, values={"temp": None})]
    result = store.apply(batch(frames=frames), now_us=NOW)
    assert [(r.index, r.reason) for r in result.rejected] == [
        (0, "unknown_property"), (1, "unknown_node"), (2, "not_finite")]
    assert result.accepted == 1


def _diag(**kw: object) -> Diagnosis:
    base: dict[str, object] = {"node": "p1", "task": "anomaly", "ts": NOW, "model": "iforest", "version": "1",
                               "confidence": 0.9, "score": 0.7, "threshold": 0.5}
    return Diagnosis.model_validate(base | kw)


def test_diagnoses_are_stored_and_become_properties(store: TwinStore) -> None:
    d = _diag()
    result = store.apply(batch(diagnoses=[d]), now_us=NOW)
    assert (result.accepted, result.diagnoses) == (1, (d,))
    assert {c.prop for c in result.changes} == {"diag.anomaly.score", "diag.anomaly.threshold",
                                                "diag.anomaly.confidence"}
    assert prop(store.engine, "p1", "diag.anomaly.score").value_num == 0.7
    with store.engine.connect() as conn:
        assert conn.execute(select(DiagnosisRecord.payload)).scalar_one() == {"score": 0.7, "threshold": 0.5,
                                                                              "unit": ""}
    again = store.apply(batch(diagnoses=[d]), now_us=NOW)
    assert (again.accepted, again.duplicates, again.diagnoses, again.changes) == (0, 1, (), ())
    later = _diag(ts=NOW + SEC, task="faults", score=None, threshold=None, label="bearing", probability=0.8)
    result = store.apply(batch(diagnoses=[later]), now_us=NOW)
    changes = {c.prop: c.value for c in result.changes}
    assert changes == {"diag.faults.label": "bearing", "diag.faults.probability": 0.8,
                       "diag.faults.confidence": 0.9}
    assert prop(store.engine, "p1", "diag.faults.label").dtype == "string"


def test_rul_diagnosis_property_carries_the_unit(store: TwinStore) -> None:
    d = _diag(task="rul", score=None, threshold=None, rul=120.0, rul_low=90.0, rul_high=150.0, unit="cycle")
    store.apply(batch(diagnoses=[d]), now_us=NOW)
    assert prop(store.engine, "p1", "diag.rul.rul").unit == "cycle"
    # a new store instance (another process) finds the diagnosis properties in the database
    other = TwinStore(store.engine, store.settings)
    assert other.apply(batch(diagnoses=[d]), now_us=NOW).duplicates == 1


def test_bad_diagnoses_are_rejected(store: TwinStore) -> None:
    bad = [_diag(node="zz"), _diag(score=math.inf), _diag(ts=NOW + 3600 * SEC)]
    result = store.apply(batch(diagnoses=bad), now_us=NOW)
    assert [(r.kind, r.reason) for r in result.rejected] == [
        ("diagnosis", "unknown_node"), ("diagnosis", "not_finite"), ("diagnosis", "ts_in_future")]
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(DiagnosisRecord)).scalar_one() == 0


def test_site_changes_reach_the_store(store: TwinStore) -> None:
    grown = SITE_YAML.replace("mode: {dtype: string}", "mode: {dtype: string}\n      flow: {unit: l/min}")
    assert store.apply(batch(value(prop="flow", v=3.0)), now_us=NOW).rejected[0].reason == "unknown_property"
    store.sync_site(site(grown))
    assert store.apply(batch(value(prop="flow", v=3.0)), now_us=NOW).accepted == 1
    # a sync by another process is found when a batch names something unknown
    sync_site(store.engine, site(grown.replace("flow: {unit: l/min}", "flow: {unit: l/min}\n      rpm: {}")))
    store.catalog.refresh_s = 0.0
    assert store.apply(batch(value(prop="rpm", v=3.0)), now_us=NOW).accepted == 1


def test_retired_node_refuses_values(store: TwinStore) -> None:
    store.apply(batch(value("p2", "temp", 1.0)), now_us=NOW)
    store.sync_site(site(SITE_YAML.replace("          - {id: p2, kind: machine, type: pump}\n", "")))
    result = store.apply(batch(value("p2", "temp", 2.0, ts=NOW + 1)), now_us=NOW)
    assert result.rejected[0].reason == "retired"
    assert history_count(store.engine) == 1


def test_database_failure_raises_store_error(store: TwinStore) -> None:
    store.apply(batch(value(v=1.0)), now_us=NOW)
    with store.engine.begin() as conn:
        conn.execute(text("DROP TABLE twin_history"))
    with pytest.raises(StoreError, match="could not store batch 'b1'"):
        store.apply(batch(value(v=2.0, ts=NOW + 1)), now_us=NOW)
    with store.engine.begin() as conn:
        HistoryRow.__table__.create(conn)
    assert store.apply(batch(value(v=2.0, ts=NOW + 1)), now_us=NOW).accepted == 1


def test_rejections_are_bounded(store: TwinStore) -> None:
    bad = [value("zz", v=float(i)) for i in range(150)]
    many = UplinkBatch(gateway="gw", batch="x", sent=NOW, values=bad)
    result = store.apply(many, now_us=NOW)
    assert len(result.rejected) == 150  # all answered and counted...
    with store.engine.begin() as conn:
        kept = conn.execute(select(func.count()).select_from(IngestRejection)).scalar_one()
        assert kept == 100  # ...some kept
        assert prune_rejections(conn, keep=10) == 90
        assert conn.execute(select(func.count()).select_from(IngestRejection)).scalar_one() == 10


def test_large_batch_over_many_properties(store: TwinStore) -> None:
    props = [("p1", "temp"), ("p2", "temp"), ("p1", "count"), ("p2", "count")]
    vals = [value(n, p, i if p == "count" else i % 120, ts=NOW - (2000 - i) * 1000)  # temp is declared 0-120
            for i in range(2000) for n, p in [props[i % 4]]]
    result = store.apply(batch(*vals), now_us=NOW)
    assert (result.accepted, len(result.changes)) == (2000, 4)
    assert prop(store.engine, "p2", "count").value_num == 1999


def test_concurrent_writers_keep_the_newest(store: TwinStore) -> None:
    import random
    from concurrent.futures import ThreadPoolExecutor

    keys = [(n, p) for n in ("p1", "p2") for p in ("temp", "count")]
    stamps = list(range(40))
    random.Random(7).shuffle(stamps)
    batches = [batch(*(value(n, p, t, ts=NOW - (100 - t) * SEC) for n, p in keys for t in stamps[i::4]),
                     name=f"b{i}") for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda b: store.apply(b, now_us=NOW), batches + batches))
    assert sum(r.accepted for r in results) == 160
    assert sum(r.duplicates for r in results) == 160
    assert history_count(store.engine) == 160
    for n, p in keys:
        assert prop(store.engine, n, p).ts == NOW - 61 * SEC  # the newest, t = 39, whatever the order


def test_batches_stored_together_count_as_one_after_another(store: TwinStore) -> None:
    first = batch(value(v=1.0, ts=NOW - SEC), name="b1")
    second = batch(value(v=1.0, ts=NOW - SEC), value(v=2.0, ts=NOW), value("p2", "mode", "on"), name="b2")
    late = batch(value(v=0.5, ts=NOW - 9 * SEC), name="b3")
    results = store.apply_many([(first, None), (second, None), (late, None)], now_us=NOW)
    assert [(r.accepted, r.duplicates) for r in results] == [(1, 0), (2, 1), (1, 0)]
    # each property's change is told once, by the batch holding its newest value
    assert [set(r.changes) for r in results] == [
        set(), {Change("p1", "temp", 2.0, NOW, Quality.GOOD), Change("p2", "mode", "on", NOW, Quality.GOOD)}, set()]
    assert history_count(store.engine) == 4
    assert prop(store.engine, "p1", "temp").value_num == 2.0
    with store.engine.connect() as conn:  # one feed row per batch, new keys only
        assert conn.execute(text("SELECT count(*) FROM alert_feed")).scalar_one() == 3


def test_deleting_a_property_deletes_its_history(store: TwinStore) -> None:
    store.apply(batch(value(v=1.0, ts=NOW - SEC), value("p2", "mode", "on")), now_us=NOW)
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM twin_properties WHERE id = :i"), {"i": prop(store.engine, "p1", "temp").id})
    assert history_count(store.engine) == 1
