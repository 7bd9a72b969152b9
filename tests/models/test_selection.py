"""Recipe options chosen on training data alone: the RUL cap on truncated training engines, the anomaly recipe by
leaving one training file out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from factory_twin.cli.models import models
from models import registry, selection
from models.errors import TrainingError


def test_mean_residual_life_of_the_engines_still_running() -> None:
    lives = np.array([100.0, 200.0, 300.0])
    got = selection.mean_residual_life(lives, np.array([0.0, 150.0, 250.0, 300.0, 400.0]))
    # at 150 cycles two engines still run (200, 300): 50 and 150 cycles left, 100 on average
    assert got.tolist() == [200.0, 100.0, 50.0, 0.0, 0.0]


def test_residual_life_within_a_documented_truncation_range() -> None:
    lives = np.array([100.0, 200.0, 300.0])
    cycles = np.array([0.0, 60.0, 150.0, 250.0])
    got = selection.mean_residual_life(lives, cycles, (0.0, 145.0))
    # at 0 only the engine of 100 cycles has <= 145 left; at 60: 40 and 140 left (90); at 150: 50 (150 is beyond 145);
    # at 250 only 50 left; (0, inf) is the plain mean residual life
    assert got.tolist() == [100.0, 90.0, 50.0, 50.0]
    assert selection.mean_residual_life(lives, cycles, (0.0, np.inf)).tolist() == [200.0, 140.0, 100.0, 50.0]
    assert selection.mean_residual_life(lives, np.array([0.0]), (150.0, 160.0)).tolist() == [0.0]  # none: 0


def test_a_truncation_range_must_be_an_interval() -> None:
    with pytest.raises(TrainingError, match="remaining life range 145-7"):
        selection.rul_cap([], remaining=(145.0, 7.0))
    result = CliRunner().invoke(models, ["select", "rul", "--data", ".", "--remaining", "7..145"])
    assert result.exit_code == 2
    assert "--remaining" in result.output
    assert "LOW-HIGH" in result.output
    result = CliRunner().invoke(models, ["select", "anomaly", "--data", ".", "--remaining", "6-145"])
    assert result.exit_code == 2
    assert "only rul" in result.output


def test_the_tail_raises_only_saturated_predictions() -> None:
    predicted = np.array([40.0, 119.0, 121.0, 125.0])
    tail = np.array([200.0, 200.0, 200.0, 90.0])
    got = selection.with_tail(predicted, 125.0, tail)
    assert got.tolist() == [40.0, 119.0, 200.0, 125.0]  # within 5 cycles of the cap; never lowered


def test_threshold_rules() -> None:
    scores = np.linspace(0.0, 10.0, 101)
    assert selection.Rule("own", 0.01, 1.5).threshold(3.0, scores) == pytest.approx(15.0)
    assert selection.Rule("floor", 0.05, 0.99).threshold(3.0, scores) == pytest.approx(9.9)
    assert selection.Rule("floor", 0.05, 0.99).threshold(12.0, scores) == 12.0  # never below the calibrated one
    assert len(selection.rules()) == len(selection.ALARM_RATES) * len(selection.FLOOR_QUANTILES) + len(
        selection.OWN_FACTORS
    )


@pytest.mark.datasets
def test_rul_selection_needs_training_engines(datasets: Path) -> None:
    with pytest.raises(TrainingError, match="training file"):
        selection.rul_cap([datasets / "cmapss" / "test_FD001.txt", datasets / "cmapss" / "RUL_FD001.txt"])


@pytest.mark.datasets
@pytest.mark.slow
def test_rul_cap_on_a_few_engines(datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(selection, "CAPS", (125.0, 175.0))  # the protocol, not the study: two caps, two folds
    monkeypatch.setattr(selection, "FOLDS", 2)
    source = (datasets / "cmapss" / "train_FD001.txt").read_text().splitlines(keepends=True)
    train = tmp_path / "train_FD001.txt"
    train.write_text("".join(line for line in source if int(line.split()[0]) <= 10))
    result = selection.rul_cap([train], remaining=(0.0, 145.0))  # truncated within the README's range
    assert result["remaining"] == [0.0, 145.0]
    assert "0 < remaining life <= 145 cycles" in result["protocol"]
    assert set(result["candidates"]) == {f"cap {c:.0f}{t}" for c in selection.CAPS for t in ("", " + tail")}
    assert result["chosen"] in result["candidates"]
    best = min(row["all"]["rmse"] for row in result["candidates"].values())
    assert result["candidates"][result["chosen"]]["all"]["rmse"] == best
    assert result["candidates"]["cap 125"]["FD001"]["engines"] == 10  # every engine weighs one


@pytest.mark.datasets
def test_anomaly_selection_needs_two_labelled_files(datasets: Path) -> None:
    skab = datasets / "skab"
    with pytest.raises(TrainingError, match="two labelled files"):
        selection.anomaly_recipe([skab / "valve2" / "0.csv", skab / "anomaly-free"])


@pytest.mark.datasets
@pytest.mark.slow
def test_anomaly_selection_leaves_one_file_out_and_scores_the_test_once(datasets: Path) -> None:
    skab = datasets / "skab"
    data = [str(skab / "valve2" / n) for n in ("0.csv", "1.csv")] + [str(skab / "anomaly-free")]
    args = ["select", "anomaly", *(a for d in data for a in ("--data", d)), "--test", str(skab / "valve1" / "0.csv")]
    result = CliRunner().invoke(models, [*args, "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    assert len(found["candidates"]) == len(selection.WINDOWS) * len(selection.rules())
    chosen = found["chosen"]
    within = [c for c in found["candidates"] if c["far"] <= selection.MAX_FAR]
    assert chosen["f1"] == max(c["f1"] for c in within or found["candidates"])
    assert 0.0 <= found["test"]["f1"] <= 1.0
    assert found["test"]["n_rows"] > 0


def test_the_anomaly_student_is_quantized_per_column(registry_root: Path) -> None:
    directory = registry.latest(registry_root, "anomaly")
    graph = onnx.load(str(directory / "student-int8.onnx")).graph
    scales = [list(i.dims) for i in graph.initializer if i.name.endswith("_scale") and i.dims]
    assert scales, "no per-column weight scale in the int8 student"


@pytest.mark.parametrize("task", ["rul", "anomaly"])
def test_the_cards_state_the_option_study_and_its_decision(registry_root: Path, task: str) -> None:
    directory = registry.latest(registry_root, task)
    manifest = registry.read_manifest(directory)
    card = (directory / registry.MODEL_CARD).read_text()
    assert "Options chosen on validation from the training data" in card
    assert "Options chosen on validation from the training data" in registry.model_card(manifest)
    assert "Not adopted" in manifest["training"]["selection"]["decision"]
