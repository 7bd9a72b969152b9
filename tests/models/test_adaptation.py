"""Per-machine adaptation on SKAB: each experiment's own baseline against the model's default one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from factory_twin.cli import cli
from models import adaptation, registry, runtime, tasks
from models.errors import DataError

from .conftest import REGISTRY


@pytest.fixture(scope="module")
def model(registry_root: Path) -> runtime.LoadedModel:
    return runtime.load(registry.latest(registry_root, "anomaly"))


def test_equal_mar_threshold_misses_no_more_than_asked() -> None:
    labels = np.array([True] * 10 + [False] * 5)
    scores = np.concatenate([np.arange(1.0, 11.0), np.zeros(5)])
    for mar in (0.0, 10.0, 35.0, 100.0):
        t = adaptation.equal_mar_threshold(labels, scores, mar)
        missed = 100.0 * np.mean(scores[labels] <= t)
        assert missed <= mar + 1e-9
        assert missed >= mar - 10.0  # the highest such threshold: one more row would exceed it
    with pytest.raises(DataError, match="no labelled anomaly"):
        adaptation.equal_mar_threshold(labels[10:], scores[10:], 10.0)


@pytest.mark.datasets
def test_own_baseline_lowers_false_alarms_without_missing_more(model: runtime.LoadedModel, datasets: Path) -> None:
    result = adaptation.skab(model, [datasets / "skab"])
    overall = result["overall"]
    assert len(result["files"]) == 20
    assert result["far_lower"]
    assert result["mar_not_higher"]
    own, matched = overall["adapted"], overall["default_at_equal_mar"]
    assert own["far"] < matched["far"] / 2  # measured 8.9 % against 49 %
    assert own["faults_detected"] >= matched["faults_detected"]
    assert overall["auc"]["adapted"] > overall["auc"]["default"] + 0.1
    # Against the default baseline at the model's threshold, a new machine alarms nearly all the time.
    assert overall["default"]["far"] > 90.0
    # The study adapts each machine as evaluate (and the edge) does: the same figure on the same files.
    directory = registry.latest(REGISTRY, "anomaly")
    evaluated = tasks.evaluate("anomaly", directory, [datasets / "skab"], variant=model.variant)
    assert own["f1"] == pytest.approx(evaluated["f1"], abs=1e-3)


@pytest.mark.datasets
def test_baseline_rows_are_configurable_and_must_be_healthy(model: runtime.LoadedModel, datasets: Path) -> None:
    one = [datasets / "skab" / "valve1" / "0.csv"]
    longer = adaptation.skab(model, one, baseline_rows=500)
    assert longer["baseline_rows"] == 500
    assert longer["files"][0]["adapted"]["n_rows"] == adaptation.skab(model, one)["files"][0]["adapted"]["n_rows"] - 100
    with pytest.raises(DataError, match="labelled anomalies"):
        adaptation.skab(model, one, baseline_rows=700)  # the valve closes at row 573
    with pytest.raises(DataError, match="shorter than the model's minimum"):
        adaptation.skab(model, one, baseline_rows=100)
    with pytest.raises(DataError, match="no labelled SKAB file"):
        adaptation.skab(model, [datasets / "skab" / "anomaly-free"])


@pytest.mark.datasets
def test_cli_prints_the_comparison(datasets: Path, registry_root: Path) -> None:
    valve2 = str(datasets / "skab" / "valve2")
    result = CliRunner().invoke(cli, ["models", "adaptation", "--data", valve2, "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert [f["file"] for f in body["files"]] == [f"valve2/{i}.csv" for i in range(4)]
    text = CliRunner().invoke(cli, ["models", "adaptation", "--data", valve2])
    assert "default, equal MAR" in text.stdout
    bad = CliRunner().invoke(cli, ["models", "adaptation", "--data", valve2, "--baseline-rows", "50"])
    assert bad.exit_code != 0
    assert "minimum of 400" in bad.output
    wrong = CliRunner().invoke(cli, ["models", "adaptation", "--model", str(registry.latest(registry_root, "rul"))])
    assert wrong.exit_code != 0
    assert "anomaly" in wrong.output
