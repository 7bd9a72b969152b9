"""The edge/platform cascade: threshold choice, figures on the real held-out data, the manifest section, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from factory_twin.cli import cli
from models import cascade_threshold, registry, runtime
from models.errors import DataError, ModelLoadError


def _outcomes(truth, student, teacher, confidence) -> cascade_threshold.Outcomes:
    return cascade_threshold.Outcomes(*(np.asarray(x) for x in (truth, student, teacher, confidence)))


def test_cross_fitted_figure_scores_each_half_with_the_other_halfs_threshold() -> None:
    # Asset 0: the student is wrong where it is unsure; asset 1: unsure where it is right, wrong where sure.
    # Chosen on both, the threshold fixes asset 0's errors; chosen on one asset, it does nothing for the other.
    confidence = np.full(100, 0.9)
    confidence[:5] = confidence[50:55] = 0.1
    student = np.zeros(100)
    student[:5] = student[90:95] = 10.0  # RUL cycles off
    part = np.repeat([0, 1], 50)
    zeros = np.zeros(100)
    result = cascade_threshold.measure("rul", cascade_threshold.Outcomes(zeros, student, zeros, confidence, part))
    assert result["cascade"] == pytest.approx(np.sqrt(5.0))  # in-sample: asset 0's five errors re-checked
    check = result["cross_fitted"]
    assert check["thresholds"] == [0.0, 0.9]  # fold 0 gets asset 1's threshold (offload nothing), and back
    assert check["cascade"] == pytest.approx(np.sqrt(10.0))  # no better than the student on unseen windows
    assert check["offload_share"] == pytest.approx(0.05)  # asset 1's unsure windows, offloaded for nothing
    assert not check["within_tolerance"]
    assert "cross-fitted" in cascade_threshold.summary("rul", Path("x"), {**result, "student_variant": "student"})


def test_threshold_offloads_the_unsure_windows_within_the_limit() -> None:
    n = 100
    truth = np.arange(n) % 6  # every class present: macro F1 over the six is 1 for a perfect answer
    student = truth.copy()
    student[:8] = (truth[:8] + 1) % 6  # the student is wrong exactly where it is least sure
    confidence = np.linspace(0.5, 1.0, n)
    result = cascade_threshold.measure("faults", _outcomes(truth, student, truth, confidence))
    assert result["offload_share"] == pytest.approx(0.08)
    assert result["cascade"] == pytest.approx(1.0)
    assert result["teacher"] == pytest.approx(1.0)
    assert result["student"] < 1.0
    assert result["within_tolerance"]
    chosen = result["confidence_threshold"]
    assert np.mean(confidence < chosen) == pytest.approx(0.08)


def test_threshold_never_offloads_more_than_allowed_and_nothing_when_it_does_not_help() -> None:
    n = 100
    truth = np.zeros(n, dtype=int)
    student = truth.copy()
    student[:30] = 1  # wrong on 30 %: the limit lets the teacher fix only 10 of them
    confidence = np.linspace(0.1, 0.9, n)
    capped = cascade_threshold.measure("faults", _outcomes(truth, student, truth, confidence), max_offload=0.1)
    assert capped["offload_share"] <= 0.1
    assert capped["all_metrics"]["cascade"]["accuracy"] == pytest.approx(0.8)
    assert not capped["within_tolerance"]
    # A teacher no better than the student: nothing worth sending.
    same = cascade_threshold.measure("faults", _outcomes(truth, student, student, confidence))
    assert same["offload_share"] == 0.0
    assert same["confidence_threshold"] == 0.0


def test_rul_cascade_minimises_rmse() -> None:
    truth = np.array([10.0, 50.0, 100.0, 120.0] * 5)
    student = truth + np.array([0.0, 0.0, 0.0, 40.0] * 5)
    confidence = np.array([0.9, 0.9, 0.9, 0.5] * 5)
    result = cascade_threshold.measure("rul", _outcomes(truth, student, truth, confidence), max_offload=0.25)
    assert result["metric"] == "rmse"
    assert not result["higher_is_better"]
    assert result["cascade"] == pytest.approx(0.0)
    assert result["offload_share"] == pytest.approx(0.25)


def test_bad_input_is_refused() -> None:
    with pytest.raises(DataError, match="no held-out window"):
        cascade_threshold.measure("faults", _outcomes([], [], [], []))
    with pytest.raises(DataError, match="not a share"):
        cascade_threshold.measure("faults", _outcomes([0], [0], [0], [0.5]), max_offload=1.5)


@pytest.mark.datasets
def test_faults_cascade_on_the_test_rows_reproduces_evaluate(datasets: Path, registry_root: Path) -> None:
    directory = registry.latest(registry_root, "faults")
    manifest = registry.read_manifest(directory)
    result = cascade_threshold.run("faults", directory, [datasets / "ai4i2020" / "ai4i2020.csv"], rows=(7001, 10000))
    # The per-window path (predict_batch) gives the figures the protocol's batch evaluation recorded.
    student = manifest["variants"][result["student_variant"]]["metrics"]
    assert result["student"] == pytest.approx(student["macro_f1"])
    assert result["teacher"] == pytest.approx(manifest["variants"]["teacher"]["metrics"]["macro_f1"])
    assert result["n_windows"] == student["n_rows"]
    assert result["offload_share"] <= cascade_threshold.MAX_OFFLOAD
    assert result["within_tolerance"], result
    assert 0.0 <= result["all_metrics"]["cascade"]["accuracy"] <= 1.0
    assert [p["offload_share"] for p in result["curve"]] == sorted(p["offload_share"] for p in result["curve"])


@pytest.mark.datasets
def test_anomaly_cascade_scores_each_file_against_its_baseline(datasets: Path, registry_root: Path) -> None:
    directory = registry.latest(registry_root, "anomaly")
    manifest = registry.read_manifest(directory)
    skab = datasets / "skab"
    result = cascade_threshold.run("anomaly", directory, [skab / "valve2"])
    recorded = manifest["variants"][result["student_variant"]]["metrics"]
    assert result["student"] == pytest.approx(recorded["f1"], abs=1e-3)
    assert result["n_windows"] == recorded["n_rows"]
    assert result["offload_share"] <= cascade_threshold.MAX_OFFLOAD
    assert result["within_tolerance"], result


@pytest.mark.datasets
def test_cli_writes_the_manifest_section_and_the_model_still_loads(datasets: Path, registry_root: Path, tmp_path):
    directory = tmp_path / "faults" / "9.9.9"
    shutil.copytree(registry.latest(registry_root, "faults"), directory)
    args = ["models", "cascade", "faults", "--model", str(directory), "--data", str(datasets / "ai4i2020")]
    first = CliRunner().invoke(cli, [*args, "--write", "--json"])
    assert first.exit_code == 0, first.output
    printed = json.loads(first.stdout)
    manifest = runtime.load(directory).manifest  # sha256 of the ONNX files still match
    section = manifest["cascade"]
    for key in ("confidence_threshold", "offload_share", "metric", "student", "teacher", "cascade"):
        assert section[key] == printed[key], key
    again = CliRunner().invoke(cli, [*args, "--write"])  # re-runnable: the same figures
    assert again.exit_code == 0, again.output
    assert "target (within 0.005 of the teacher" in again.stdout
    assert registry.read_manifest(directory)["cascade"] == section
    data_root = ["--datasets", str(datasets)]
    report = CliRunner().invoke(cli, ["models", "report", "--registry", str(tmp_path), "--task", "faults", *data_root])
    assert report.exit_code == 0, report.output
    assert f"cascade (recorded): macro_f1 {section['cascade']:.3f}" in report.stdout


def test_missing_large_teacher_asks_for_its_directory(registry_root: Path, tmp_path: Path) -> None:
    source = registry_root / "rul" / "1.2.0"  # its 18.5 MB teacher was not committed
    directory = tmp_path / "rul" / "1.1.0"
    shutil.copytree(source, directory, ignore=shutil.ignore_patterns("*.large.onnx", "*.joblib"))
    result = CliRunner().invoke(cli, ["models", "cascade", "rul", "--model", str(directory), "--data", str(tmp_path)])
    assert result.exit_code != 0
    assert "--teacher DIR" in result.output
    with pytest.raises(ModelLoadError, match="not the one"):
        cascade_threshold.load_pair(directory, teacher_dir=registry.latest(registry_root, "faults"))
