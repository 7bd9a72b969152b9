"""Tiny training runs on real data subsets: the pipeline end to end, and scikit-learn/onnxruntime parity."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from models import anomaly, build, faults, rul, runtime, tasks
from models.datasets import load_cmapss
from models.errors import DataError, TrainingError
from models.features import sliding_windows

pytestmark = pytest.mark.datasets


@pytest.fixture(scope="module")
def ai4i_subset(datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every third AI4I row (all failure modes occur), gzip-compressed (the loaders take either form)."""
    lines = (datasets / "ai4i2020" / "ai4i2020.csv").read_bytes().splitlines(keepends=True)
    path = tmp_path_factory.mktemp("ai4i") / "ai4i_subset.csv.gz"
    path.write_bytes(gzip.compress(b"".join([lines[0], *lines[1::3]])))
    return path


@pytest.fixture(scope="module")
def faults_model(ai4i_subset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tasks.train("faults", [ai4i_subset], tmp_path_factory.mktemp("reg"), version="0.0.1")


def test_faults_pipeline_builds_a_loadable_model(faults_model: Path) -> None:
    model = runtime.load(faults_model)
    metrics = model.manifest["variants"]["student"]["metrics"]
    assert metrics["f1_binary"] > 0.5
    assert {"teacher", "student"} <= set(model.manifest["variants"])


def test_faults_parity_sklearn_vs_onnxruntime(faults_model: Path, ai4i_subset: Path) -> None:
    frame = faults.load_ai4i([ai4i_subset])
    for variant in ("teacher", "student"):
        model = runtime.load(faults_model, variant)
        estimator = build.load_estimator(faults_model, variant)
        feats = model.transform(faults.windows_of(frame))
        expected = estimator.predict_proba(feats) if variant == "teacher" else estimator.predict(feats)
        got = model.raw_outputs(feats)
        # float32 thresholds in ONNX trees may route a row on a split boundary differently: allow a few.
        agree = np.mean(expected.argmax(axis=1) == got.argmax(axis=1))
        assert agree >= 0.999, (variant, agree)
        assert np.median(np.abs(expected - got)) < 1e-5


def test_training_is_reproducible(faults_model: Path, ai4i_subset: Path, tmp_path: Path) -> None:
    again = tasks.train("faults", [ai4i_subset], tmp_path, version="0.0.1")
    first = runtime.load(faults_model).manifest
    second = runtime.load(again).manifest
    assert first["variants"]["student"]["sha256"] == second["variants"]["student"]["sha256"]
    assert first["variants"]["student"]["metrics"] == second["variants"]["student"]["metrics"]


@pytest.mark.slow
def test_anomaly_pipeline_and_parity(datasets: Path, tmp_path: Path) -> None:
    skab = datasets / "skab"
    data = [skab / "anomaly-free" / "anomaly-free.csv", skab / "valve1" / "0.csv", skab / "valve2" / "1.csv"]
    directory = tasks.train("anomaly", data, tmp_path)
    result = tasks.evaluate("anomaly", directory, data[1:], keep_extras=True)
    assert 0.0 <= result["f1"] <= 1.0
    assert result["latency_us"] > 0
    # The students take raw windows and the baseline (features computed in the graph), the teacher takes
    # features.py's features: all must score what scikit-learn scores on features.py's features.
    spec = anomaly.SPEC
    frame = anomaly.load_skab(data[1:2])[0]
    rows = frame[list(spec.signals)].to_numpy(dtype=np.float64)
    history = {s: rows[: anomaly.BASELINE_ROWS, i] for i, s in enumerate(spec.signals)}
    windows = sliding_windows(rows, spec.window, spec.window)[anomaly.BASELINE_ROWS - (spec.window - 1) :]
    z = anomaly.segments([frame])[0].scored
    for variant in ("teacher", "student", "student-int8"):
        model = runtime.load(directory, variant).with_baseline(history)
        assert (variant != "teacher") == (model.manifest["variants"][variant].get("graph_input") == "window")
        got = model.raw_outputs(model.transform(windows)).reshape(-1)
        estimator = build.load_estimator(directory, variant.removesuffix("-int8"))
        expected = estimator.predict(z) if variant == "teacher" else estimator.distance(z)
        tolerance = 0.05 if variant == "student-int8" else 1e-3
        assert np.allclose(got, expected, rtol=tolerance, atol=tolerance), variant


@pytest.mark.slow
def test_rul_pipeline_on_a_few_engines(datasets: Path, tmp_path: Path) -> None:
    source = (datasets / "cmapss" / "train_FD001.txt").read_text().splitlines(keepends=True)
    few = [line for line in source if int(line.split()[0]) <= 12]
    train = tmp_path / "train_FD001.txt"
    train.write_text("".join(few))
    cmapss = datasets / "cmapss"
    directory = tasks.train("rul", [train, cmapss / "test_FD001.txt", cmapss / "RUL_FD001.txt"], tmp_path / "reg")
    variants = runtime.load(directory).manifest["variants"]
    # The int8 student is the student's trees compiled to matrices; the edge runs the faster float32 trees.
    assert runtime.load(directory).variant == "student"
    assert 0 < variants["student"]["metrics"]["rmse"] < 60
    assert 0 < variants["student-int8"]["metrics"]["rmse"] < 60
    frame = load_cmapss([train]).train
    assert frame is not None
    model = runtime.load(directory, "student")
    assert model.spec.regimes is not None
    assert len(model.spec.regimes.centres) == 1  # FD001 flies one operating condition
    feats = rul.training_set(frame, model.spec)[0].astype(np.float32)
    onnx_out = model.raw_outputs(feats).reshape(-1)
    # Tree thresholds are float32 in ONNX: a row on a split boundary may take the other branch.
    close = np.abs(onnx_out - build.load_estimator(directory, "student").predict(feats)) < 1e-2
    assert close.mean() > 0.99
    # int8 parity: the same leaves as the trees, the leaf values rounded to each tree's int8 step.
    int8 = runtime.load(directory, "student-int8").raw_outputs(feats).reshape(-1)
    assert np.abs(int8 - onnx_out).max() < 0.5


def test_bad_data_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.csv"
    junk.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="missing columns"):
        tasks.train("faults", [junk], tmp_path)
    with pytest.raises(DataError, match="C-MAPSS"):
        tasks.train("rul", [junk], tmp_path)
    with pytest.raises(DataError, match="no such file"):
        tasks.train("anomaly", [tmp_path / "absent.csv"], tmp_path)
    broken = tmp_path / "train_FD001.txt.gz"
    broken.write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(DataError, match="gzip"):
        tasks.train("rul", [broken], tmp_path)
    labelled_only = tmp_path / "skab.csv"
    labelled_only.write_text("datetime;Accelerometer1RMS\n2020-01-01 00:00:00;0.1\n")
    with pytest.raises((DataError, TrainingError)):
        tasks.train("anomaly", [labelled_only], tmp_path)
