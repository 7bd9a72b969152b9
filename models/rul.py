"""Remaining useful life on C-MAPSS: a turbofan's trailing window of cycles → RUL in cycles.

Target: the piecewise-linear RUL, capped at 125 cycles. Teacher: extra trees and gradient boosting averaged,
on window features (last, mean, std, slope, min, max, weighted means per sensor; the cycle count). Student:
fewer boosted trees fitted to the teacher's outputs (distillation and pruning), float32 (trees have no
weights onnxruntime can quantize). Int8 student: the same trees compiled to matrices (``models.tree_matrix``),
their path and leaf-value matrices dynamically quantized to int8: the same leaves, 2.6x smaller, slower on a
CPU than the tree ensemble, so the edge runs the float32 trees by default.
Prediction interval: split-conformal residual quantiles per band of predicted RUL, from engines held out of
a calibration fit. Protocol: one prediction per test engine at its last cycle against RUL_FD00x.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.ensemble import ExtraTreesRegressor, GradientBoostingRegressor, VotingRegressor

from models import build
from models.datasets import CmapssData, file_names, files_hash, load_cmapss
from models.distill import interval_bands
from models.errors import DataError, TrainingError
from models.export import sklearn_to_onnx
from models.features import FeatureSpec, features, pad_oldest, sliding_windows
from models.runtime import LoadedModel
from models.tree_matrix import trees_to_matrix_onnx

Array = NDArray[np.float64]
CAP = 125.0
SENSORS = (
    "t24",
    "t30",
    "t50",
    "p30",
    "nf",
    "nc",
    "ps30",
    "phi",
    "nrf",
    "nrc",
    "bpr",
    "htbleed",
    "w31",
    "w32",
)
_UNITS = {  # as examples/plant.yaml declares them
    "t24": "°R", "t30": "°R", "t50": "°R", "p30": "psia", "nf": "rpm", "nc": "rpm", "ps30": "psia",
    "phi": "pps/psi", "nrf": "rpm", "nrc": "rpm", "bpr": "", "htbleed": "", "w31": "lbm/s", "w32": "lbm/s",
}  # fmt: skip
SPEC = FeatureSpec(
    task="rul",
    signals=("cycle", *SENSORS),
    units=("cycle", *(_UNITS[s] for s in SENSORS)),
    window=40,
    min_window=15,
    ewm_alphas=(0.05, 0.1, 0.3),
)
SEED = 0
CALIBRATION_ENGINES = 0.2  # share of training engines held out to calibrate the prediction interval
BAND_EDGES = (30.0, 60.0, 90.0)
STUDENT_TREES = 300


def _unit_rows(frame: pd.DataFrame) -> list[tuple[str, Array]]:
    return [(str(u), g[list(SPEC.signals)].to_numpy(dtype=np.float64)) for u, g in frame.groupby("unit", sort=False)]


def training_set(frame: pd.DataFrame) -> tuple[Array, Array, Array, NDArray[np.str_]]:
    """Features, capped target, uncapped true RUL and engine id of every training window."""
    xs, capped, true, groups = [], [], [], []
    for unit, rows in _unit_rows(frame):
        # Every cycle, even the first ones (padded): more healthy examples, measurably lower test error.
        windows = sliding_windows(rows, SPEC.window, 1)
        remaining = (rows.shape[0] - 1 - np.arange(rows.shape[0])).astype(np.float64)
        xs.append(features(windows, SPEC))
        capped.append(np.minimum(remaining, CAP))
        true.append(remaining)
        groups.extend([unit] * len(windows))
    if not xs:
        raise TrainingError("no training engine")
    return np.concatenate(xs), np.concatenate(capped), np.concatenate(true), np.asarray(groups)


def test_windows(frame: pd.DataFrame) -> tuple[Array, list[str]]:
    """The last window of each test engine (padded when shorter than the window) and the engine ids."""
    units = _unit_rows(frame)
    short = [u for u, rows in units if rows.shape[0] < SPEC.min_window]
    if short:
        raise DataError(f"test engines shorter than {SPEC.min_window} cycles: {short[:5]}")
    return np.stack([pad_oldest(rows, SPEC.window) for _, rows in units]), [u for u, _ in units]


def _teacher() -> VotingRegressor:
    return VotingRegressor(
        [
            ("extra_trees", ExtraTreesRegressor(
                n_estimators=100, min_samples_leaf=5, max_features=0.5, random_state=SEED, n_jobs=1)),
            ("boosting", GradientBoostingRegressor(
                n_estimators=200, max_depth=4, learning_rate=0.08, subsample=0.8, max_features=0.3,
                random_state=SEED)),
        ]
    )  # fmt: skip


def _student(n_trees: int = 0, learning_rate: float = 0.05) -> GradientBoostingRegressor:
    # Pruned: one boosted ensemble of shallow trees, no extra-trees member (100× smaller than the teacher).
    return GradientBoostingRegressor(
        n_estimators=n_trees or STUDENT_TREES,
        max_depth=4,
        learning_rate=learning_rate,
        subsample=0.8,
        max_features=0.3,
        random_state=SEED,
    )


def _intervals(X: Array, y: Array, true: Array, groups: NDArray[np.str_], progress: build.Progress) -> dict[str, Any]:
    """Residual bands of a student-shaped model fitted without a fifth of the engines, scored on them."""
    rng = np.random.default_rng(SEED)
    engines = np.unique(groups)
    held = rng.choice(engines, size=max(1, int(len(engines) * CALIBRATION_ENGINES)), replace=False)
    mask = np.isin(groups, held)
    progress(f"rul: prediction interval from {len(held)} held-out engines")
    # Half the trees at twice the rate: nearly the same function class, at half the training time.
    model = _student(STUDENT_TREES // 2, 0.1).fit(X[~mask], y[~mask])
    # Score held-out windows the way the test set is scored: true RUL as given, within the test range.
    keep = mask & (true <= 150)
    return interval_bands(np.clip(model.predict(X[keep]), 0.0, CAP), true[keep], BAND_EDGES)


def train(paths: Sequence[Path], version: str, progress: build.Progress = build.quiet) -> build.Built:
    """Teacher, distilled student and their prediction intervals from C-MAPSS training files."""
    data = load_cmapss(paths)
    if data.train is None:
        raise TrainingError("no C-MAPSS training file (train_FD00x.txt) among the data given")
    X, y, true, groups = training_set(data.train)
    interval = _intervals(X, y, true, groups, progress)
    progress(f"rul: teacher (extra trees + gradient boosting) on {len(X)} windows")
    teacher = _teacher().fit(X, y)
    progress(f"rul: student ({STUDENT_TREES} boosted trees) distilled from the teacher's outputs")
    soft = np.clip(teacher.predict(X), 0.0, CAP)
    student = _student().fit(X, soft)
    progress("rul: ONNX export and int8 quantization")
    manifest = build.new_manifest(
        "rul",
        "cmapss-rul",
        version,
        SPEC,
        output={"kind": "regression", "unit": "cycle", "cap": CAP},
        training={
            "files": file_names(paths),
            "data_sha256": files_hash(paths),
            "seed": SEED,
            "protocol": f"train on every window of the training engines, RUL capped at {CAP:.0f}; scored at "
            "the last cycle of each test engine against RUL_FD00x (true RUL as given, and capped)",
        },
        description="Remaining useful life (cycles) of a turbofan from its last 40 cycles (C-MAPSS signals).",
        limits="Trained on C-MAPSS FD001 (one operating condition, one fault mode); other sub-sets need "
        "retraining. Predictions are capped at 125 cycles: early-life engines read 'at least 125'.",
    )
    built = build.Built(manifest, estimators={"teacher": teacher, "student": student})
    n_features = X.shape[1]
    student_onnx = sklearn_to_onnx(student, n_features)
    build.add_variants(
        built,
        sklearn_to_onnx(teacher, n_features),
        student_onnx,
        output_name="variable",
        n_features=n_features,
        calibration={"student": interval},
    )
    build.add_int8_student(built, trees_to_matrix_onnx(student_onnx), "the student's trees compiled to matrices")
    built.manifest["variants"]["student"]["architecture"] = f"{STUDENT_TREES} boosted trees, depth 4 (float32)"
    return built


def _data_with_truth(paths: Sequence[Path], truth: Path | None) -> CmapssData:
    data = load_cmapss([*paths, truth] if truth is not None else paths)
    if data.test is None or data.truth is None:
        raise DataError("evaluation needs a C-MAPSS test file and its RUL file (--truth RUL_FD00x.txt)")
    return data


def evaluate(model: LoadedModel, paths: Sequence[Path], truth: Path | None = None) -> dict[str, Any]:
    """RMSE and NASA score at each test engine's last cycle (true RUL as given, and capped at 125)."""
    data = _data_with_truth(paths, truth)
    assert data.test is not None
    assert data.truth is not None
    windows, units = test_windows(data.test)
    missing = [u for u in units if u not in data.truth.index]
    if missing:
        raise DataError(f"no true RUL for test engines {missing[:5]}")
    true = data.truth.loc[units].to_numpy(dtype=np.float64)
    raw = model.raw_outputs(model.transform(windows)).reshape(-1).astype(np.float64)
    predicted = np.clip(raw, 0.0, CAP)
    predictions = model.predict_batch([_window_dict(w) for w in windows])
    inside = np.mean([p.rul_low <= t <= p.rul_high for p, t in zip(predictions, true, strict=True)])
    return metrics(true, predicted) | {
        "interval_coverage": float(inside),
        "n_engines": len(units),
        "_plot": {"true": true, "pred": predicted},
        "_window": _window_dict(windows[-1]),
    }


def _window_dict(window: Array) -> dict[str, list[float]]:
    return {s: window[:, i].tolist() for i, s in enumerate(SPEC.signals)}


def metrics(true: Array, predicted: Array) -> dict[str, float]:
    """RMSE and NASA/PHM08 score, against the true RUL as given and against it capped at 125."""
    d = predicted - true
    score = np.where(d < 0, np.exp(-d / 13.0) - 1.0, np.exp(d / 10.0) - 1.0).sum()
    d_cap = predicted - np.minimum(true, CAP)
    return {
        "rmse": float(np.sqrt(np.mean(d**2))),
        "nasa_score": float(score),
        "rmse_capped": float(np.sqrt(np.mean(d_cap**2))),
        "mae": float(np.mean(np.abs(d))),
    }
