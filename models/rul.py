"""Remaining useful life on C-MAPSS: a turbofan's trailing window of cycles → RUL in cycles.

One recipe for single- and multi-condition fleets. The operating regimes are found from the setting columns
(``models.regimes``: k-means, the number of regimes chosen by silhouette, so FD001 gets one and FD002 six), and
every sensor is standardised within the regime of its row before the window features (last, mean, std, slope,
min, max, weighted means per sensor; the cycle count) are computed. Sensors constant within every regime are
left out. Target: the piecewise-linear RUL, capped at 125 cycles. Teacher: histogram gradient boosting (800
trees, depth 6). Student: 150 trees of depth 4 fitted to the teacher's outputs (distillation and pruning),
float32 (trees have no weights onnxruntime can quantize). Int8 student: the same trees compiled to matrices
(``models.tree_matrix``), their path and leaf-value matrices dynamically quantized to int8.
Prediction interval: split-conformal residual quantiles per band of predicted RUL, from a fifth of the training
engines held out of a calibration fit; the same held-out engines give the validation figures.
Protocol: training needs only the training files; test files given with their RUL files are scored at each test
engine's last cycle (true RUL as given, and capped).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.ensemble import HistGradientBoostingRegressor

from models import build, regimes
from models.datasets import CMAPSS_SENSORS, CMAPSS_SETTINGS, CmapssData, file_names, files_hash, load_cmapss
from models.distill import interval_bands
from models.errors import DataError, TrainingError, WindowRejected
from models.export import hist_boosting_onnx
from models.features import FeatureSpec, features, pad_oldest, sliding_windows
from models.runtime import LoadedModel
from models.tree_matrix import trees_to_matrix_onnx

Array = NDArray[np.float64]
CAP = 125.0
_UNITS = {  # as examples/plant.yaml declares them
    "t2": "°R", "t24": "°R", "t30": "°R", "t50": "°R", "p2": "psia", "p15": "psia", "p30": "psia", "nf": "rpm",
    "nc": "rpm", "epr": "", "ps30": "psia", "phi": "pps/psi", "nrf": "rpm", "nrc": "rpm", "bpr": "", "farb": "",
    "htbleed": "", "nf_dmd": "rpm", "pcnfr_dmd": "rpm", "w31": "lbm/s", "w32": "lbm/s",
}  # fmt: skip
# FD001's informative sensors: the recipe without regimes (a trained model's spec is ``spec_for`` its data).
SENSORS = ("t24", "t30", "t50", "p30", "nf", "nc", "ps30", "phi", "nrf", "nrc", "bpr", "htbleed", "w31", "w32")
WINDOW = 80  # chosen on held-out training engines (models/README.md: grouped cross-validation, capped RMSE)
SPEC = FeatureSpec(
    task="rul",
    signals=("cycle", *SENSORS),
    units=("cycle", *(_UNITS[s] for s in SENSORS)),
    window=WINDOW,
    min_window=15,
    ewm_alphas=(0.05, 0.1, 0.3),
)
SEED = 0
VALIDATION_ENGINES = 0.2  # share of training engines held out to calibrate the interval and validate the recipe
BAND_EDGES = (30.0, 60.0, 90.0)
TEACHER = {"max_iter": 800, "learning_rate": 0.03, "max_depth": 6, "min_samples_leaf": 40, "l2_regularization": 1.0}
STUDENT = {"max_iter": 150, "learning_rate": 0.1, "max_depth": 4}


def spec_for(found: regimes.Found) -> FeatureSpec:
    """The model's input: the cycle, the operating settings, the informative sensors, and the regimes."""
    sensors = tuple(found.sensors)
    return FeatureSpec(
        task="rul",
        signals=("cycle", *CMAPSS_SETTINGS, *sensors),
        units=("cycle", *("" for _ in CMAPSS_SETTINGS), *(_UNITS[s] for s in sensors)),
        window=SPEC.window,
        min_window=SPEC.min_window,
        ewm_alphas=SPEC.ewm_alphas,
        regimes=found.regimes,
    )


def _unit_rows(frame: pd.DataFrame, spec: FeatureSpec) -> list[tuple[str, Array]]:
    columns = list(spec.signals)
    return [(str(u), g[columns].to_numpy(dtype=np.float64)) for u, g in frame.groupby("unit", sort=False)]


def training_set(frame: pd.DataFrame, spec: FeatureSpec = SPEC) -> tuple[Array, Array, Array, NDArray[np.str_]]:
    """Features, capped target, uncapped true RUL and engine id of every training window."""
    xs, capped, true, groups = [], [], [], []
    for unit, rows in _unit_rows(frame, spec):
        # Every cycle, even the first ones (padded): more healthy examples, measurably lower test error.
        windows = sliding_windows(rows, spec.window, 1)
        remaining = (rows.shape[0] - 1 - np.arange(rows.shape[0])).astype(np.float64)
        xs.append(features(windows, spec))
        capped.append(np.minimum(remaining, CAP))
        true.append(remaining)
        groups.extend([unit] * len(windows))
    if not xs:
        raise TrainingError("no training engine")
    return np.concatenate(xs), np.concatenate(capped), np.concatenate(true), np.asarray(groups)


def test_windows(frame: pd.DataFrame, spec: FeatureSpec) -> tuple[Array, list[str]]:
    """The last window of each test engine (padded when shorter than the window) and the engine ids."""
    units = _unit_rows(frame, spec)
    short = [u for u, rows in units if rows.shape[0] < spec.min_window]
    if short:
        raise DataError(f"test engines shorter than {spec.min_window} cycles: {short[:5]}")
    return np.stack([pad_oldest(rows, spec.window) for _, rows in units]), [u for u, _ in units]


def check_frame(data: CmapssData, kind: str, spec: FeatureSpec) -> None:
    """DataError naming the file when its rows leave the model's regimes or a sensor it reads is stuck."""
    frame = data.train if kind == "train" else data.test
    assert frame is not None
    for unit_prefix, part in frame.groupby(frame["unit"].str.split("/").str[0], sort=True):
        name = data.source(kind, f"{unit_prefix}/")
        if spec.regimes is not None:
            n = spec.regimes.settings
            try:
                spec.regimes.standardise(
                    part[list(spec.signals[1 : 1 + n])].to_numpy(dtype=np.float64),
                    part[list(spec.signals[1 + n :])].to_numpy(dtype=np.float64),
                )
            except WindowRejected as exc:
                raise DataError(f"{name}: rows in no operating regime the model knows ({exc.detail})") from None
        sensors = [s for s in spec.signals[1:] if s not in CMAPSS_SETTINGS]
        stuck = [s for s in sensors if len(part) >= 100 and part[s].nunique() == 1]
        if stuck:
            raise DataError(f"{name}: sensors {stuck} are constant over all {len(part)} rows (stuck or missing?)")


def _validation(
    X: Array, y: Array, true: Array, groups: NDArray[np.str_], progress: build.Progress
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Interval bands and validation figures of a student-shaped model fitted without a fifth of the engines.

    Scored on every cycle of the held-out engines from ``min_window`` on (each a possible truncation point).
    """
    rng = np.random.default_rng(SEED)
    engines = np.unique(groups)
    held = rng.choice(engines, size=max(1, int(len(engines) * VALIDATION_ENGINES)), replace=False)
    mask = np.isin(groups, held)
    progress(f"rul: prediction interval and validation on {len(held)} held-out engines")
    model = _boosting(STUDENT).fit(X[~mask], y[~mask])
    scored = mask & (X[:, 0] >= SPEC.min_window)
    predicted = np.clip(model.predict(X[scored]), 0.0, CAP)
    figures: dict[str, Any] = {"engines": len(held), "windows": int(scored.sum())}
    for subset in sorted({str(g).split("/")[0] for g in held}):
        here = np.char.startswith(groups[scored].astype(str), subset + "/")
        error = predicted[here] - np.minimum(true[scored][here], CAP)  # what the recipe is tuned on
        figures[subset] = {"rmse_capped": float(np.sqrt(np.mean(error**2))), "windows": int(here.sum())}
    # Calibrate on held-out windows the way the test set is scored: true RUL as given, within the test range.
    keep = mask & (true <= 150)
    return interval_bands(np.clip(model.predict(X[keep]), 0.0, CAP), true[keep], BAND_EDGES), figures


def _boosting(params: dict[str, Any]) -> HistGradientBoostingRegressor:
    return HistGradientBoostingRegressor(**params, early_stopping=False, random_state=SEED)


def train(paths: Sequence[Path], version: str, progress: build.Progress = build.quiet) -> build.Built:
    """Teacher, distilled student and their prediction intervals from C-MAPSS training files."""
    data = load_cmapss(paths)
    if data.train is None:
        raise TrainingError("no C-MAPSS training file (train_FD00x.txt) among the data given")
    found = regimes.fit(data.train, CMAPSS_SETTINGS, CMAPSS_SENSORS, SEED)
    k = len(found.regimes.centres)
    progress(f"rul: {k} operating regime(s); sensors left out: {found.dropped or 'none'}")
    spec = spec_for(found)
    X, y, true, groups = training_set(data.train, spec)
    interval, validation = _validation(X, y, true, groups, progress)
    progress(f"rul: teacher ({TEACHER['max_iter']} boosted trees) on {len(X)} windows")
    teacher = _boosting(TEACHER).fit(X, y)
    progress(f"rul: student ({STUDENT['max_iter']} boosted trees) distilled from the teacher's outputs")
    student = _boosting(STUDENT).fit(X, np.clip(teacher.predict(X), 0.0, CAP))
    progress("rul: ONNX export and int8 quantization")
    manifest = build.new_manifest(
        "rul",
        "cmapss-rul",
        version,
        spec,
        output={"kind": "regression", "unit": "cycle", "cap": CAP},
        training={
            "files": file_names(paths),
            "data_sha256": files_hash(paths),
            "seed": SEED,
            "regimes": {"count": k, "silhouette": found.silhouette, "sensors_left_out": found.dropped},
            "validation": validation,
            "protocol": f"train on every window of the training engines, RUL capped at {CAP:.0f}; validation: "
            f"{VALIDATION_ENGINES:.0%} of the training engines held out of a same-recipe fit, scored at "
            "every cycle; test: the last cycle of each test engine against RUL_FD00x (true RUL as given, and capped)",
        },
        description=f"Remaining useful life (cycles) of a turbofan from its last {spec.window} cycles (C-MAPSS "
        "signals), sensors standardised within the operating regime of each cycle.",
        limits=f"Trained on C-MAPSS {', '.join(sorted({u.split('/')[0] for u in groups}))} ({k} operating "
        "regime(s), one fault mode). A window with a cycle in none of these regimes is refused (unknown_regime). "
        f"Predictions are capped at {CAP:.0f} cycles: early-life engines read 'at least {CAP:.0f}'.",
    )
    built = build.Built(manifest, estimators={"teacher": teacher, "student": student})
    n_features = X.shape[1]
    student_onnx = hist_boosting_onnx(student, n_features)
    build.add_variants(
        built,
        hist_boosting_onnx(teacher, n_features),
        student_onnx,
        output_name="variable",
        n_features=n_features,
        calibration={"student": interval},
    )
    build.add_int8_student(built, trees_to_matrix_onnx(student_onnx), "the student's trees compiled to matrices")
    built.manifest["variants"]["student"]["architecture"] = f"{STUDENT['max_iter']} boosted trees, depth 4 (float32)"
    built.manifest["variants"]["teacher"]["architecture"] = f"{TEACHER['max_iter']} boosted trees, depth 6"
    return built


def _data_with_truth(paths: Sequence[Path], truth: Path | None) -> CmapssData:
    data = load_cmapss([*paths, truth] if truth is not None else paths)
    if data.test is None or data.truth is None:
        raise DataError("evaluation needs a C-MAPSS test file and its RUL file (--truth RUL_FD00x.txt)")
    return data


def evaluate(
    model: LoadedModel, paths: Sequence[Path], truth: Path | None = None, split: bool = False
) -> dict[str, Any]:
    """RMSE and NASA score at each test engine's last cycle (true RUL as given, and capped at 125), per sub-set."""
    if split:
        raise DataError(
            "rul keeps no internal held-out split (every training engine is fitted; the validation figures are "
            "in the manifest): give test files and their RUL files"
        )
    data = _data_with_truth(paths, truth)
    assert data.test is not None
    assert data.truth is not None
    spec = model.spec
    check_frame(data, "test", spec)
    windows, units = test_windows(data.test, spec)
    true = data.truth.loc[units].to_numpy(dtype=np.float64)
    raw = model.raw_outputs(model.transform(windows)).reshape(-1).astype(np.float64)
    predicted = np.clip(raw, 0.0, CAP)
    predictions = model.predict_batch([_window_dict(w, spec) for w in windows])
    inside = np.mean([p.rul_low <= t <= p.rul_high for p, t in zip(predictions, true, strict=True)])
    subsets = np.array([u.split("/")[0] for u in units])
    per_subset = {}
    for subset in sorted(set(subsets)):
        here = subsets == subset
        per_subset.update({f"{subset}_{k}": v for k, v in metrics(true[here], predicted[here]).items()})
    files = sorted(data.sources[k] for k in data.sources if not k.startswith("train/"))
    return (
        metrics(true, predicted)
        | (per_subset if len(set(subsets)) > 1 else {})
        | {
            "interval_coverage": float(inside),
            "n_engines": len(units),
            "protocol": f"last cycle of each of the {len(units)} test engines of {', '.join(files)}",
            "_plot": {"true": true, "pred": predicted},
            "_window": _window_dict(windows[-1], spec),
        }
    )


def _window_dict(window: Array, spec: FeatureSpec = SPEC) -> dict[str, list[float]]:
    return {s: window[:, i].tolist() for i, s in enumerate(spec.signals)}


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
