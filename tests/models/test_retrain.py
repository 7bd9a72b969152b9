"""Retraining with maintenance feedback: labels from verdicts, the same held-out data, no promotion, bad input."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine

from factory_twin.cli import cli
from models import anomaly, build, faults, registry, retrain, runtime, tasks
from models.datasets import AI4I_COLUMNS
from models.errors import DataError
from tests.conftest import schema_engine

_AI4I = {column: name for column, name in AI4I_COLUMNS.items() if name in faults.SPEC.signals}  # CSV → signal


def _window(row: dict[str, str]) -> dict[str, list]:
    return {name: [row[col] if col == "Type" else float(row[col])] for col, name in _AI4I.items()}


def _rows(datasets: Path) -> list[dict[str, str]]:
    text = (datasets / "ai4i2020" / "ai4i2020.csv").read_text(encoding="utf-8-sig")
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture(scope="module")
def ai4i(datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every third AI4I row as the data set, its model as the old version, feedback from rows outside it."""
    root = tmp_path_factory.mktemp("retrain")
    lines = (datasets / "ai4i2020" / "ai4i2020.csv").read_bytes().splitlines(keepends=True)
    data = root / "ai4i_subset.csv"
    data.write_bytes(b"".join([lines[0], *lines[1::3]]))
    old = tasks.train("faults", [data], root / "registry", version="1.0.0")
    items = []
    for row in _rows(datasets)[1::3]:  # none of these rows is in the data set
        modes = [m for m in ("HDF", "PWF", "OSF", "TWF") if row[m] == "1"]
        if modes:
            items.append({"node": "mill-1", "task": "faults", "verdict": "true_fault", "label": modes[0],
                          "window": _window(row), "ts": "2026-01-01T00:00:00Z"})  # fmt: skip
        elif sum(i["verdict"] == "false_alarm" for i in items) < 300:
            items.append({"node": "mill-1", "task": "faults", "verdict": "false_alarm", "window": _window(row)})
    items.append({"node": "mill-1", "verdict": "cause_found", "evidence": {"task": "faults"}})
    items.append({"node": "pump-1", "task": "anomaly", "verdict": "false_alarm", "window": {}})
    feedback = root / "feedback.json"
    feedback.write_text(json.dumps({"items": items}))
    return {"data": data, "old": old, "feedback": feedback, "root": root}


@pytest.mark.datasets
def test_faults_feedback_builds_a_new_version_judged_on_the_same_held_out_data(ai4i: dict[str, Path]) -> None:
    old_manifest = (ai4i["old"] / "manifest.json").read_bytes()
    out = ai4i["root"] / "candidates"
    args = ["models", "retrain", "faults", "--feedback", str(ai4i["feedback"]), "--data", str(ai4i["data"])]
    result = CliRunner().invoke(cli, [*args, "--model", str(ai4i["old"]), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["new"]["version"] == "1.1.0"
    assert report["promoted"] is False
    new = Path(report["new"]["model"])
    assert new == out / "faults" / "1.1.0"
    manifest = runtime.load(new).manifest
    feedback = manifest["training"]["feedback"]
    assert feedback["parent"] == "1.0.0"
    twf = sum(1 for item in json.loads(ai4i["feedback"].read_text())["items"] if item.get("label") == "TWF")
    # TWF is the tool-wear rule's, not the model's: confirmed tool wear failures teach the model nothing.
    assert feedback["skipped"] == {"cause_found": 1, "task anomaly": 1, "TWF: a rule's mode, not the model's": twf}
    assert feedback["windows"]["none"] == 300
    assert sum(feedback["windows"].values()) == feedback["items"] == report["feedback"]["items"]
    assert (
        feedback["sha256"]
        == hashlib.sha256(
            json.dumps(json.loads(ai4i["feedback"].read_text())["items"], sort_keys=True, default=str).encode()
        ).hexdigest()
    )
    assert "cascade" in manifest  # training measures the new version's cascade
    # The old figures are the old model's on the held-out split of the same data, as evaluate gives them.
    evaluated = tasks.evaluate("faults", ai4i["old"], [ai4i["data"]], variant="student", split=True)
    assert report["old"]["metrics"]["student"]["macro_f1"] == pytest.approx(evaluated["macro_f1"])
    assert manifest["variants"]["student"]["metrics"]["n_rows"] == evaluated["n_rows"]
    for variant in ("teacher", "student"):
        for metric, change in report["delta"][variant].items():
            assert change == pytest.approx(
                report["new"]["metrics"][variant][metric] - report["old"]["metrics"][variant][metric]
            )
    old_student = registry.read_manifest(ai4i["old"])["variants"]["student"]["sha256"]
    assert manifest["variants"]["student"]["sha256"] != old_student  # the feedback changed the model
    assert (ai4i["old"] / "manifest.json").read_bytes() == old_manifest  # the old version is untouched
    text = CliRunner().invoke(cli, [*args, "--model", str(ai4i["old"]), "--out", str(out)])
    assert text.exit_code == 0, text.output
    assert "1.0.0 → 1.2.0" in text.stdout  # 1.1.0 is taken: the next free minor version
    assert "not promoted" in text.stdout


@pytest.mark.datasets
def test_feedback_repeating_held_out_rows_is_left_out(ai4i: dict[str, Path], datasets: Path) -> None:
    model = runtime.load(ai4i["old"])
    held = retrain.held_out_rows(model, [ai4i["data"]], None)
    subset = _rows(datasets)[0::3]
    _, test_idx = faults.split(faults.load_ai4i([ai4i["data"]]))
    inside = [
        {"node": "m", "task": "faults", "verdict": "false_alarm", "window": _window(subset[i])} for i in test_idx[:5]
    ]
    outside = [
        {"node": "m", "task": "faults", "verdict": "false_alarm", "window": _window(r)} for r in _rows(datasets)[1:4:3]
    ]
    _, labels, counts = retrain.examples(model, retrain.parse(inside + outside, "faults").items, held)
    assert counts["dropped_held_out"] == 5
    assert len(labels) == len(outside)
    with pytest.raises(DataError, match="no feedback window left"):
        retrain.examples(model, retrain.parse(inside, "faults").items, held)


def test_bad_feedback_is_refused_with_the_item_named(registry_root: Path, tmp_path: Path) -> None:
    faults = runtime.load(registry.latest(registry_root, "faults"))
    row = {"product_type": ["L"], "air_temperature": [300.0], "process_temperature": [310.0],
           "rotational_speed": [1500.0], "torque": [40.0], "tool_wear": [10.0]}  # fmt: skip
    with pytest.raises(DataError, match="verdict 'maybe'"):
        retrain.parse([{"node": "m", "task": "faults", "verdict": "maybe", "window": row}], "faults")
    with pytest.raises(DataError, match=r"feedback item 0 .*no window"):
        retrain.parse([{"node": "m", "task": "faults", "verdict": "false_alarm"}], "faults")
    with pytest.raises(DataError, match="ts 'yesterday'"):
        retrain.parse(
            [{"node": "m", "task": "faults", "verdict": "false_alarm", "window": row, "ts": "yesterday"}], "faults"
        )
    fault = retrain.parse([{"node": "m", "task": "faults", "verdict": "true_fault", "window": row}], "faults")
    with pytest.raises(DataError, match="needs its mode as label"):
        retrain.examples(faults, fault.items, set())
    broken = {k: v for k, v in row.items() if k != "torque"}
    items = retrain.parse([{"node": "m", "task": "faults", "verdict": "false_alarm", "window": broken}], "faults")
    with pytest.raises(DataError, match=r"feedback item 0 .*torque"):
        retrain.examples(faults, items.items, set())
    pump = {"node": "p", "task": "anomaly", "verdict": "false_alarm", "window": {"current": [1.0]}}
    assert retrain.parse([pump], "anomaly").skipped == {"no baseline": 1}
    assert retrain.parse([pump | {"unusable": "no frames in its window"}], "anomaly").skipped == {
        "no frames in its window": 1
    }
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    with pytest.raises(DataError, match="not JSON"):
        retrain.read_file(junk)
    junk.write_text('{"verdict": "false_alarm"}')
    with pytest.raises(DataError, match="expected a JSON list"):
        retrain.read_file(junk)


def test_retrain_refuses_rul_the_registry_itself_and_unclear_sources(registry_root: Path, tmp_path: Path) -> None:
    feedback = tmp_path / "fb.json"
    feedback.write_text("[]")
    old = registry.latest(registry_root, "faults")
    with pytest.raises(DataError, match="the edge would load the new version"):
        retrain.retrain("faults", old, [], [tmp_path], registry_root)
    with pytest.raises(DataError, match="no label to train on"):
        retrain.retrain("rul", registry.latest(registry_root, "rul"), [], [tmp_path], tmp_path / "out")
    runner = CliRunner()
    base = ["models", "retrain", "faults", "--data", str(tmp_path), "--out", str(tmp_path / "out")]
    neither = runner.invoke(cli, base)
    assert neither.exit_code == 2
    assert "--feedback FILE.json or --platform" in neither.output
    both = runner.invoke(cli, [*base, "--feedback", str(feedback), "--platform", "http://127.0.0.1:1", "--key", "k"])
    assert both.exit_code == 2
    keyless = runner.invoke(cli, [*base, "--platform", "http://127.0.0.1:1"], env={"FACTORY_TWIN_KEY": ""})
    assert keyless.exit_code == 2
    assert "--key" in keyless.output
    down = runner.invoke(cli, [*base, "--platform", "http://127.0.0.1:1", "--key", "k"])
    assert down.exit_code == 1
    assert "platform unreachable" in down.output
    assert not (tmp_path / "out").exists()


def test_anomaly_thresholds_rise_with_false_alarms_but_keep_confirmed_faults() -> None:
    rng = np.random.default_rng(0)
    normal = rng.normal(0.0, 1.0, (2000, 1))
    score = lambda x: x[:, 0]  # noqa: E731
    base = anomaly.threshold(score, normal, np.empty((0, 1)), np.empty((0, 1)))
    assert base == pytest.approx(np.quantile(normal[:, 0], 0.95))
    false_alarms = np.full((500, 1), 3.0)
    raised = anomaly.threshold(score, normal, false_alarms, np.empty((0, 1)))
    assert raised > base
    confirmed = np.linspace(2.0, 4.0, 100)[:, None]  # 10 % of them lie below 2.2
    capped = anomaly.threshold(score, normal, false_alarms, confirmed)
    assert np.mean(score(confirmed) > capped) >= anomaly.KEEP_CONFIRMED - 0.01
    assert base <= capped < raised
    low = np.full((100, 1), -5.0)  # confirmed faults below normal operation never lower it
    assert anomaly.threshold(score, normal, false_alarms, low) == pytest.approx(base)


@pytest.mark.datasets
def test_anomaly_feedback_from_another_pump(datasets: Path, registry_root: Path, tmp_path: Path) -> None:
    skab = datasets / "skab"
    data = [skab / "anomaly-free" / "anomaly-free.csv", skab / "valve1" / "0.csv", skab / "valve2" / "1.csv"]
    frame = anomaly.load_skab([skab / "valve1" / "5.csv"])[0]  # another pump: not in the data
    rows = frame[list(anomaly.SPEC.signals)].to_numpy()
    labels = frame["anomaly"].to_numpy() == 1
    start = int(np.argmax(labels))

    def columns(a: int, b: int) -> dict[str, list[float]]:
        return {s: rows[a:b, i].tolist() for i, s in enumerate(anomaly.SPEC.signals)}

    baseline = columns(0, 400)
    pump = {"node": "pump-5", "task": "anomaly", "baseline": baseline}
    items = [
        pump | {"verdict": "false_alarm", "window": columns(400, start)},
        pump | {"verdict": "true_fault", "window": columns(start, start + 200)},
    ]
    old = registry.latest(registry_root, "anomaly")
    report = retrain.retrain("anomaly", old, items, data, tmp_path)
    manifest = registry.read_manifest(Path(report["new"]["model"]))
    windows = manifest["training"]["feedback"]["windows"]
    assert windows == {"false_alarm": start - 400 - 29, "true_fault": 200 - 29}
    assert manifest["variants"]["student"]["metrics"]["n_rows"] == tasks.evaluate("anomaly", old, data[1:])["n_rows"]
    assert set(report["old"]["metrics"]) == set(report["new"]["metrics"]) == set(manifest["variants"])
    assert "mar" in report["delta"]["student"]
    assert registry.latest(registry_root, "anomaly") == old  # nothing promoted


def test_extra_rows_select_by_label() -> None:
    extra = build.Extra(np.arange(6.0).reshape(3, 2), np.array([0, 1, 0]))
    assert extra.rows(0).tolist() == [[0.0, 1.0], [4.0, 5.0]]
    assert extra.rows(1).shape == (1, 2)


@pytest.fixture
def twin_db(db_url: str) -> Iterator[Engine]:
    """A fresh platform schema (SQLite and PostgreSQL), disposed afterwards."""
    with schema_engine(db_url) as engine:
        yield engine


@pytest.mark.datasets
def test_feedback_and_its_windows_read_from_the_platform(
    twin_db: Engine, datasets: Path, registry_root: Path, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient
    from sqlalchemy.orm import Session

    from plant.site import load_site
    from plant.wire import Diagnosis, Frame, UplinkBatch
    from twin.alerts import AlertEngine
    from twin.api import create_app
    from twin.auth import Role, create_key
    from twin.config import TwinSettings
    from twin.store import TwinStore

    engine = twin_db
    site = load_site(Path(__file__).resolve().parents[2] / "examples" / "plant.yaml")
    settings = TwinSettings(data_dir=tmp_path)
    TwinStore(engine, settings).sync_site(site)
    signals = anomaly.SPEC.signals
    frame = anomaly.load_skab([datasets / "skab" / "valve1" / "0.csv"])[0]
    rows = frame[list(signals)].to_numpy()[:1000]
    t0, second = 1_790_000_000_000_000, 1_000_000
    frames = [
        Frame(node="pump-1", ts=t0 + i * second, values={s: float(v) for s, v in zip(signals, row, strict=True)})
        for i, row in enumerate(rows)
    ]
    stored = TwinStore(engine, settings).apply(
        UplinkBatch(gateway="gw", batch="b1", sent=t0, frames=frames), now_us=t0 + len(rows) * second
    )
    assert stored.accepted == len(rows), stored.rejected[:3]
    raised = t0 + 700 * second
    diagnosis = Diagnosis(node="pump-1", task="anomaly", ts=raised, model="skab-pump-anomaly", version="1.0.0",
                          confidence=0.9, score=30.0, threshold=14.0)  # fmt: skip
    with Session(engine) as s, s.begin():
        AlertEngine(site, started=t0).process(s, (), [diagnosis])
    with Session(engine) as s:
        keys = {r: {"Authorization": f"Bearer {create_key(s, r, r.value)}"} for r in (Role.TECHNICIAN, Role.ENGINEER)}
    model = runtime.load(registry.latest(registry_root, "anomaly"))
    with TestClient(create_app(settings, engine)) as client:
        listed = client.get("/api/v1/alerts", headers=keys[Role.TECHNICIAN]).json()["items"]
        by_rule = {a["rule"]: a["id"] for a in listed}  # the anomaly, and stale sensors (no diagnosis behind it)
        verdicts = [("pump-anomaly", v) for v in ("false_alarm", "true_fault", "cause_found")]
        for rule, verdict in [*verdicts, ("sensors-stale", "false_alarm")]:
            posted = client.post(
                f"/api/v1/alerts/{by_rule[rule]}/feedback", json={"verdict": verdict}, headers=keys[Role.TECHNICIAN]
            )
            assert posted.status_code == 201, posted.text
        client.headers.update(keys[Role.TECHNICIAN])
        with pytest.raises(DataError, match="refused the key"):
            retrain.fetch(client, "anomaly", model)
        client.headers.update(keys[Role.ENGINEER])
        raws = retrain.fetch(client, "anomaly", model)
    parsed = retrain.parse(raws, "anomaly")
    assert parsed.skipped == {"cause_found": 1, "no model task": 1}
    false_alarm, true_fault = parsed.items
    opened = 100  # the feedback's window opens ten minutes before the alert
    assert false_alarm.window == {s: rows[opened:, i].tolist() for i, s in enumerate(signals)}
    start = 700 - (anomaly.SPEC.window - 1)  # a confirmed fault: from the window that raised the alert on
    assert true_fault.window == {s: rows[start:, i].tolist() for i, s in enumerate(signals)}
    assert true_fault.baseline == {s: rows[:400, i].tolist() for i, s in enumerate(signals)}
    assert true_fault.ts == t0 + (len(rows) - 1) * second
    _, labels, counts = retrain.examples(model, parsed.items, set())
    assert counts["windows"] == {"false_alarm": 900 - 29, "true_fault": len(rows) - start - 29}
    assert labels.sum() == counts["windows"]["true_fault"]
