"""`factory-twin models evaluate` on the real data sets reproduces the committed models' metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from factory_twin.cli import cli
from models import registry

pytestmark = pytest.mark.datasets


def _data(task: str, root: Path) -> list[str]:
    """The test data of the committed models: what they were scored on, never fitted or tuned on."""
    if task == "rul":
        cmapss = root / "cmapss"
        files = ("test_FD001.txt", "RUL_FD001.txt", "test_FD002.txt.gz", "RUL_FD002.txt.gz")
        return [arg for name in files for arg in ("--data", str(cmapss / name))]
    if task == "faults":
        return ["--data", str(root / "ai4i2020" / "ai4i2020.csv"), "--rows", "7001-10000"]
    return ["--data", str(root / "skab" / "valve2")]  # the group of experiments it was not trained on


@pytest.mark.parametrize("task", ["rul", "faults", "anomaly"])
def test_evaluate_reproduces_committed_metrics(task: str, datasets: Path, registry_root: Path) -> None:
    directory = registry.latest(registry_root, task)
    manifest = registry.read_manifest(directory)
    variant = manifest["default_variant"]
    result = CliRunner().invoke(
        cli, ["models", "evaluate", task, "--model", str(registry_root), *_data(task, datasets), "--json"]
    )
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert scores["variant"] == variant
    assert scores["model_bytes"] == manifest["variants"][variant]["bytes"]
    assert 0 < scores["latency_us"] < 1000
    committed = manifest["variants"][variant]["metrics"]
    headline = {
        "rul": ["rmse", "nasa_score"],
        "faults": ["f1_binary", "macro_f1"],
        "anomaly": ["f1", "far", "mar"],
    }
    for name in headline[task]:
        assert scores[name] == pytest.approx(committed[name], rel=1e-6), name


def test_evaluate_refuses_wrong_task_and_bad_data(datasets: Path, registry_root: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    faults_dir = registry.latest(registry_root, "faults")
    wrong = runner.invoke(cli, ["models", "evaluate", "rul", "--model", str(faults_dir), "--data", str(tmp_path)])
    assert wrong.exit_code != 0
    junk = tmp_path / "junk.csv"
    junk.write_text("x\n1\n")
    bad = runner.invoke(cli, ["models", "evaluate", "faults", "--model", str(registry_root), "--data", str(junk)])
    assert bad.exit_code == 1
    assert "missing columns" in bad.output
    nodata = runner.invoke(cli, ["models", "evaluate", "faults", "--model", str(registry_root)])
    assert nodata.exit_code == 2


def test_report_with_plots(datasets: Path, registry_root: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "models",
            "report",
            "--task",
            "faults",
            "--datasets",
            str(datasets),
            "--plots",
            str(tmp_path),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["faults"]
    assert {r["variant"] for r in report["rows"]} == {"teacher", "student"}
    assert "macro_f1_within_1pt" in report["targets"]
    assert (tmp_path / "faults_confusion.png").stat().st_size > 1000


def test_committed_int8_students_reproduce_and_meet_the_quality_targets(datasets: Path, registry_root: Path) -> None:
    # The quality targets, on the committed int8 students as the CLI scores them (timings: models report).
    scores = {}
    for task in ("rul", "anomaly"):
        directory = registry.latest(registry_root, task)
        args = ["models", "evaluate", task, "--model", str(directory), *_data(task, datasets)]
        result = CliRunner().invoke(cli, [*args, "--variant", "student-int8", "--json"])
        assert result.exit_code == 0, result.output
        scores[task] = json.loads(result.stdout)
        manifest = registry.read_manifest(directory)
        variants = manifest["variants"]
        assert scores[task]["model_bytes"] <= 0.1 * variants["teacher"]["bytes"]
        metric = "rmse" if task == "rul" else "f1"
        assert scores[task][metric] == pytest.approx(variants["student-int8"]["metrics"][metric], rel=1e-6)
    teacher = registry.read_manifest(registry.latest(registry_root, "rul"))["variants"]["teacher"]["metrics"]
    assert scores["rul"]["FD001_rmse"] <= 12.6  # DCNN's 12.61, true RUL as given
    # FD002 true RUL as given cannot reach 17 (docs/models.md: 57 test engines hold more than the 125-cycle cap);
    # against the capped truth, as the papers score it:
    assert scores["rul"]["FD002_rmse_capped"] <= 17.0
    assert scores["rul"]["FD001_rmse"] - teacher["FD001_rmse"] <= 0.5
    # On the group of SKAB experiments it was neither trained nor tuned on (Conv-AE: 0.78 at 13.6 %):
    assert scores["anomaly"]["f1"] > 0.78
    assert scores["anomaly"]["far"] <= 15.0


@pytest.mark.slow
def test_anomaly_trained_on_valve2_meets_the_target_on_valve1(datasets: Path, tmp_path: Path) -> None:
    # Leave one group out, the other way round: trained and tuned on valve2 (and the normal run), scored on valve1.
    skab = datasets / "skab"
    args = ["models", "train", "anomaly", "--data", str(skab / "valve2"), "--data", str(skab / "anomaly-free")]
    result = CliRunner().invoke(cli, [*args, "--test", str(skab / "valve1"), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    int8 = registry.read_manifest(registry.latest(tmp_path, "anomaly"))["variants"]["student-int8"]["metrics"]
    assert int8["f1"] > 0.78
    assert int8["far"] <= 15.0


def test_evaluate_scores_every_row_unless_asked_for_the_split(datasets: Path, registry_root: Path) -> None:
    csv = str(datasets / "ai4i2020" / "ai4i2020.csv")
    base = ["models", "evaluate", "faults", "--model", str(registry_root), "--data", csv]
    every = CliRunner().invoke(cli, [*base, "--json"])
    assert every.exit_code == 0, every.output
    assert json.loads(every.stdout)["n_rows"] == 10_000
    split = CliRunner().invoke(cli, [*base, "--split"])
    assert split.exit_code == 0, split.output
    # The committed model trained on rows 1-7,000 and held a stratified 20 % of them out: those are its split.
    assert "scored: the held-out 20% split of rows 1-7000 of ai4i2020/ai4i2020.csv (1400 rows)" in split.stdout
    wrong = CliRunner().invoke(cli, [*base, "--split", "--rows", "7001-10000"])
    assert wrong.exit_code == 1
    assert "not rows [7001, 10000]" in wrong.output
    rul = CliRunner().invoke(
        cli, ["models", "evaluate", "rul", "--model", str(registry_root), *_data("rul", datasets), "--split"]
    )
    assert rul.exit_code == 1
    assert "rul keeps no internal held-out split" in rul.output


@pytest.mark.slow
def test_training_needs_only_training_data(datasets: Path, tmp_path: Path) -> None:
    source = (datasets / "cmapss" / "train_FD001.txt").read_text().splitlines(keepends=True)
    train = tmp_path / "train_FD001.txt"
    train.write_text("".join(line for line in source if int(line.split()[0]) <= 10))
    result = CliRunner().invoke(cli, ["models", "train", "rul", "--data", str(train), "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert "no test data given" in result.output
    manifest = registry.read_manifest(Path(result.stdout.strip().splitlines()[-1]))
    assert "evaluation" not in manifest
    assert "cascade" not in manifest
    assert set(manifest["training"]["validation"]) >= {"FD001", "engines"}
    card = (tmp_path / "m" / "rul" / manifest["version"] / "MODEL_CARD.md").read_text()
    assert "No test data was given" in card
    rows = CliRunner().invoke(cli, ["models", "train", "rul", "--data", str(train), "--rows", "1-10", "--out", "x"])
    assert rows.exit_code == 1
    assert "faults only" in rows.output
