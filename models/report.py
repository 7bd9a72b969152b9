"""``models report``: teacher, student and student-int8 side by side, measured in one run, against targets.

For each variant: ONNX file size, single-window latency through scikit-learn (when its pickle was kept at
training) and through the edge runtime (validation, features, onnxruntime, calibration: the whole path),
batch throughput, and the task's metrics on its evaluation protocol.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from models import build, registry, runtime, tasks
from models.datasets import Rows

TARGETS = {
    "rul": "student FD001 RMSE ≤ 12.6 (DCNN) and FD002 ≤ 17 against the capped truth, within 0.5 of the teacher",
    "faults": "student macro F1 within 1 point of the teacher, on rows 7,001-10,000",
    "anomaly": "on the experiments it was not trained on, student F1 > 0.78 at FAR ≤ 15 % (Conv-AE: 0.78 at 13.6 %)",
}
SKAB_BEST_CLASSICAL_F1 = 0.78
HEADLINE = {
    "rul": ("FD001_rmse", "FD001_nasa_score", "FD002_rmse", "FD002_rmse_capped"),
    "faults": ("f1_binary", "macro_f1"),
    "anomaly": ("f1", "far", "mar"),
}


def default_data(task: str, root: Path) -> list[Path]:
    """The test files each committed model is judged on (never fitted or tuned on), under a data set root."""
    if task == "rul":
        names = ("test_FD001.txt", "RUL_FD001.txt", "test_FD002.txt.gz", "RUL_FD002.txt.gz")
        return [root / "cmapss" / name for name in names]
    if task == "faults":
        return [root / "ai4i2020" / "ai4i2020.csv"]
    return [root / "skab" / "valve2"]  # trained and tuned on valve1 and the anomaly-free run


DEFAULT_ROWS = {"faults": (7001, 10000)}  # the AI4I rows the committed fault model was not trained on


def _timed_us(fn: Any, repeat: int) -> float:
    fn()
    timings = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        fn()
        timings.append(time.perf_counter_ns() - t0)
    return float(np.median(timings)) / 1000.0


def sklearn_latency_us(model: runtime.LoadedModel, estimator: Any, window: dict[str, Any], repeat: int = 50) -> float:
    """Median µs of the same window path ending in scikit-learn's predict instead of onnxruntime."""
    predict = getattr(estimator, "predict_proba", None) or estimator.predict

    def run() -> None:
        predict(model.feature_input(window))  # the edge's own validation and features.py, then scikit-learn

    return _timed_us(run, repeat)


def throughput(model: runtime.LoadedModel, window: dict[str, Any], n: int = 500) -> float:
    """Windows per second through ``predict_batch`` on ``n`` copies of a window."""
    batch = [window] * n
    t0 = time.perf_counter()
    model.predict_batch(batch)
    return n / (time.perf_counter() - t0)


def measure(
    task: str, directory: Path, data: Sequence[Path], keep_plot: bool = False, data_rows: Rows | None = None
) -> list[dict[str, Any]]:
    """One row per variant of a model directory: size, latencies, throughput and metrics (``data_rows``: of the
    AI4I table, faults)."""
    manifest = registry.read_manifest(directory)
    rows = []
    for variant, entry in manifest["variants"].items():
        if not (directory / entry["file"]).is_file():  # a large teacher is not committed
            rows.append(_from_manifest(variant, entry))
            continue
        row = tasks.evaluate(task, directory, data, variant=variant, keep_extras=True, rows=data_rows)
        window = row.pop("_window")
        plot = row.pop("_plot")
        if keep_plot:
            row["_plot"] = plot
        model = runtime.load(directory, variant)
        # An int8 student of its own architecture keeps its own pickle; otherwise it is the student's.
        estimator = build.load_estimator(directory, variant)
        if estimator is None:
            estimator = build.load_estimator(directory, variant.removesuffix("-int8"))
        row["sklearn_latency_us"] = sklearn_latency_us(model, estimator, window) if estimator is not None else None
        feats = model.model_input(window)
        row["onnx_model_only_us"] = _timed_us(partial(model.raw_outputs, feats), 200)
        row["batch_windows_per_s"] = throughput(model, window)
        rows.append(row)
    return rows


def _from_manifest(variant: str, entry: dict[str, Any]) -> dict[str, Any]:
    return {
        **entry["metrics"],
        "variant": variant,
        "model_bytes": entry["bytes"],
        "latency_us": None,
        "sklearn_latency_us": None,
        "onnx_model_only_us": None,
        "batch_windows_per_s": None,
        "note": f"{entry['file']} not present: size and metrics as recorded at training",
    }


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.0f}"


def targets(task: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets for a task, checked on the measured rows."""
    by = {r["variant"]: r for r in rows}
    teacher = by["teacher"]
    student = by.get("student-int8", by["student"])
    checks: dict[str, Any] = {}
    if task == "rul":
        for row in (student, by["student"]):
            checks[f"{row['variant']}_FD001_rmse_le_12.6"] = row.get("FD001_rmse", row["rmse"]) <= 12.6
            checks[f"{row['variant']}_FD002_rmse_capped_le_17"] = row.get("FD002_rmse_capped", 0.0) <= 17.0
        checks["rmse_within_0.5_of_teacher"] = student["rmse"] - teacher["rmse"] <= 0.5
    elif task == "faults":
        checks["macro_f1_within_1pt"] = teacher["macro_f1"] - student["macro_f1"] <= 0.01
    else:
        checks["f1_above_best_classical"] = student["f1"] > SKAB_BEST_CLASSICAL_F1
        checks["far_le_15pct"] = student["far"] <= 15.0
    checks["size_le_10pct_of_teacher"] = student["model_bytes"] <= 0.1 * teacher["model_bytes"]
    if teacher.get("sklearn_latency_us"):
        checks["latency_10x_below_teacher_sklearn"] = student["latency_us"] * 10 <= teacher["sklearn_latency_us"]
    checks["latency_under_1ms"] = student["latency_us"] < 1000.0
    checks["student_variant"] = student["variant"]
    return checks


def table(task: str, rows: list[dict[str, Any]]) -> str:
    """The report table of one task as aligned text."""
    metric_names = HEADLINE[task]
    header = ["variant", "bytes", "sklearn µs", "edge µs", "onnx-only µs", "batch win/s", *metric_names]
    lines = [f"{task}: {TARGETS[task]}", "  ".join(f"{h:>12}" for h in header)]
    for r in rows:
        cells = [
            r["variant"],
            str(r["model_bytes"]),
            _cell(r.get("sklearn_latency_us")),
            _cell(r["latency_us"]),
            _cell(r["onnx_model_only_us"]),
            _cell(r["batch_windows_per_s"]),
            *(f"{r[m]:.3f}" for m in metric_names),
        ]
        lines.append("  ".join(f"{c:>12}" for c in cells))
    return "\n".join(lines)


def recorded_cascade(directory: Path) -> dict[str, Any] | None:
    """The cascade figures the manifest records (``models cascade --write``, or training), if any."""
    section = registry.read_manifest(directory).get("cascade")
    return section if isinstance(section, dict) else None


def cascade_text(section: dict[str, Any]) -> str:
    """One line: the cascade against student and teacher, and the share of windows offloaded."""
    metric = section["metric"]
    return (
        f"cascade (recorded): {metric} {section['cascade']:.3f} (student {section['student']:.3f}, teacher "
        f"{section['teacher']:.3f}) offloading {100 * section['offload_share']:.1f} % below confidence "
        f"{section['confidence_threshold']:.3f}" + _cross_fitted_text(section)
    )


def _cross_fitted_text(section: dict[str, Any]) -> str:
    check = section.get("cross_fitted")
    if not isinstance(check, dict):
        return ""
    return f"; cross-fitted {check['cascade']:.3f} offloading {100 * check['offload_share']:.1f} %"


def write_plots(task: str, rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """PNG plots of the edge variant: RUL per engine, confusion matrix, or anomaly score over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    by = {r["variant"]: r for r in rows}
    row = by.get("student-int8", by["student"])
    plot = row["_plot"]
    written = []
    if task == "rul":
        fig, ax = plt.subplots(figsize=(10, 4))
        order = np.argsort(plot["true"])
        ax.plot(np.asarray(plot["true"])[order], "k.-", label="true RUL")
        ax.plot(np.asarray(plot["pred"])[order], "r.", label=f"predicted ({row['variant']})")
        ax.set(
            xlabel="test engine (sorted by true RUL)",
            ylabel="RUL, cycles",
            title=f"C-MAPSS RMSE {row['rmse']:.2f}",
        )
        ax.legend()
        written.append(_save(fig, out_dir / "rul_per_engine.png"))
    elif task == "faults":
        from sklearn.metrics import ConfusionMatrixDisplay

        from models.faults import MODES

        fig, ax = plt.subplots(figsize=(6, 5))
        ConfusionMatrixDisplay.from_predictions(
            plot["true"],
            plot["pred"],
            labels=list(range(len(MODES) + 1)),
            display_labels=("none", *MODES),
            ax=ax,
            colorbar=False,
        )
        ax.set_title(f"AI4I rows 7,001-10,000 (not trained on), {row['variant']}")
        written.append(_save(fig, out_dir / "faults_confusion.png"))
    else:
        series = plot["series"][:4]
        fig, axes = plt.subplots(len(series), 1, figsize=(10, 2.2 * len(series)), squeeze=False)
        for ax, (name, scores, labels) in zip(axes[:, 0], series, strict=True):
            ax.plot(scores, lw=0.8, label="score")
            ax.axhline(plot["threshold"], color="r", ls="--", lw=0.8, label="threshold")
            ax.fill_between(
                np.arange(len(labels)),
                0,
                labels * np.max(scores),
                color="orange",
                alpha=0.2,
                label="labelled anomaly",
            )
            ax.set_title(name, fontsize=9)
        axes[0, 0].legend(fontsize=7)
        written.append(_save(fig, out_dir / "anomaly_scores.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
