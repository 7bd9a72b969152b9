"""Fault diagnosis on AI4I 2020: process readings → failure mode (none, TWF, HDF, PWF, OSF, RNF).

Teacher: a random forest on physics features and the data set's mode-rule margins. Student: one decision
tree fitted to the teacher's temperature-softened probabilities (distillation), depth-limited (pruning).
Probabilities are calibrated by temperature scaling on a held-out part of the training split.
Protocol: stratified 80/20 split with a fixed seed; inputs never include the mode columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import f1_score, precision_recall_fscore_support
from sklearn.model_selection import train_test_split
from sklearn.tree import DecisionTreeRegressor

from models import build
from models.datasets import file_names, files_hash, load_ai4i
from models.distill import fit_temperature, soft_targets
from models.errors import TrainingError
from models.export import sklearn_to_onnx
from models.features import AI4I_TYPES, FeatureSpec, features
from models.runtime import LoadedModel, calibrated_probabilities

LABELS = ("none", "TWF", "HDF", "PWF", "OSF", "RNF")
# A row with several modes gets the first of these: the rule-defined modes are the learnable ones.
_PRIORITY = ("HDF", "PWF", "OSF", "TWF", "RNF")
SPEC = FeatureSpec(
    task="faults",
    signals=(
        "product_type",
        "air_temperature",
        "process_temperature",
        "rotational_speed",
        "torque",
        "tool_wear",
    ),
    units=("", "K", "K", "rpm", "N·m", "min"),
    window=1,
    min_window=1,
    categories={"product_type": AI4I_TYPES},
)
SEED = 0
TEST_SIZE = 0.2
CAL_SIZE = 0.2
DISTILL_TEMPERATURE = 2.0
STUDENT_DEPTH = 8


def labels_of(frame: pd.DataFrame) -> NDArray[np.int64]:
    """Class index per row: ``none`` unless the machine failed; failures without a mode count as RNF."""
    labels = np.zeros(len(frame), dtype=np.int64)
    failed = frame["machine_failure"].to_numpy() == 1
    for mode in reversed(_PRIORITY):
        labels[failed & (frame[mode].to_numpy() == 1)] = LABELS.index(mode)
    labels[failed & (labels == 0)] = LABELS.index("RNF")
    return labels


def windows_of(frame: pd.DataFrame) -> NDArray[np.float64]:
    """Each row as a one-row window ``(n, 1, 6)``, product type coded by its index in L/M/H."""
    table = frame[list(SPEC.signals)].copy()
    codes = table["product_type"].map({t: i for i, t in enumerate(AI4I_TYPES)})
    if codes.isna().any():
        raise TrainingError(f"unknown product types {sorted(set(table['product_type'][codes.isna()]))}")
    table["product_type"] = codes
    windows: NDArray[np.float64] = table.to_numpy(dtype=np.float64)[:, None, :]
    return windows


def split(frame: pd.DataFrame, seed: int = SEED) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Row indices of the stratified training and held-out test parts."""
    index = np.arange(len(frame))
    train, test = train_test_split(index, test_size=TEST_SIZE, stratify=labels_of(frame), random_state=seed)
    return np.sort(train), np.sort(test)


def train(
    paths: Sequence[Path], version: str, progress: build.Progress = build.quiet, extra: build.Extra | None = None
) -> build.Built:
    """Teacher, distilled student and their calibration from the AI4I CSV (plus labelled feedback rows)."""
    frame = load_ai4i(paths)
    labels = labels_of(frame)
    X = features(windows_of(frame), SPEC).astype(np.float32)
    train_idx, _ = split(frame)
    fit_idx, cal_idx = train_test_split(train_idx, test_size=CAL_SIZE, stratify=labels[train_idx], random_state=SEED)
    X_fit, y_fit = X[fit_idx], labels[fit_idx]
    if extra is not None:  # feedback joins the fitting part only: held-out and calibration rows stay as they were
        X_fit = np.concatenate([X_fit, extra.features.astype(np.float32)])
        y_fit = np.concatenate([y_fit, extra.labels])
    progress(f"faults: teacher (random forest) on {len(X_fit)} rows")
    teacher = RandomForestClassifier(n_estimators=150, min_samples_leaf=1, random_state=SEED, n_jobs=1)
    teacher.fit(X_fit, y_fit)
    if len(teacher.classes_) != len(LABELS):
        raise TrainingError(f"training part lacks classes: has {teacher.classes_.tolist()}")
    progress(f"faults: student (decision tree, depth {STUDENT_DEPTH}) on soft targets, T={DISTILL_TEMPERATURE}")
    soft = soft_targets(teacher.predict_proba(X_fit), DISTILL_TEMPERATURE)
    student = DecisionTreeRegressor(max_depth=STUDENT_DEPTH, random_state=SEED).fit(X_fit, soft)
    calibration = {
        "teacher": {"temperature": fit_temperature(teacher.predict_proba(X[cal_idx]), labels[cal_idx])},
        "student": {"temperature": fit_temperature(student.predict(X[cal_idx]), labels[cal_idx])},
    }
    progress("faults: ONNX export")
    manifest = build.new_manifest(
        "faults",
        "ai4i-faults",
        version,
        SPEC,
        output={"kind": "classification", "labels": list(LABELS), "unit": ""},
        training={
            "files": file_names(paths),
            "data_sha256": files_hash(paths),
            "seed": SEED,
            "protocol": f"stratified {1 - TEST_SIZE:.0%}/{TEST_SIZE:.0%} split (seed {SEED}); "
            f"{CAL_SIZE:.0%} of the training part held out for calibration",
            "distill_temperature": DISTILL_TEMPERATURE,
            **({"feedback": extra.record} if extra is not None else {}),
        },
        description="Failure mode of a milling process step (AI4I 2020 signals): none, TWF, HDF, PWF, OSF, RNF.",
        limits="TWF and RNF are random in the data and essentially unpredictable; HDF, PWF and OSF follow "
        "exact rules of the inputs. Failures with no mode flag are labelled RNF. Synthetic data.",
    )
    built = build.Built(manifest, estimators={"teacher": teacher, "student": student})
    n_features = X.shape[1]
    build.add_variants(
        built,
        sklearn_to_onnx(teacher, n_features, classifier=True),
        sklearn_to_onnx(student, n_features, n_outputs=len(LABELS)),
        output_name="probabilities",
        n_features=n_features,
        calibration=calibration,
    )
    # The student is a regressor: its output is named "variable", not "probabilities".
    built.manifest["variants"]["student"]["output_name"] = "variable"
    return built


def evaluate(model: LoadedModel, paths: Sequence[Path], truth: Path | None = None) -> dict[str, Any]:
    """Binary and macro F1 and per-mode precision/recall on the held-out split of the given CSV."""
    frame = load_ai4i(paths)
    _, test_idx = split(frame, int(model.manifest["training"]["seed"]))
    labels = labels_of(frame)[test_idx]
    raw = model.raw_outputs(model.transform(windows_of(frame)[test_idx]))
    temperature = float(model.manifest["variants"][model.variant]["calibration"]["temperature"])
    predicted = calibrated_probabilities(raw.astype(np.float64), temperature).argmax(axis=1)
    first = frame.iloc[int(test_idx[0])]
    window = {name: [first[name]] for name in SPEC.signals}
    return metrics(labels, predicted) | {
        "n_rows": len(test_idx),
        "_plot": {"true": labels, "pred": predicted},
        "_window": window,
    }


def metrics(labels: NDArray[np.int64], predicted: NDArray[np.int64]) -> dict[str, Any]:
    """The protocol's figures: failure-class F1, 6-class macro F1, per-mode precision and recall."""
    classes = list(range(len(LABELS)))
    precision, recall, _, support = precision_recall_fscore_support(labels, predicted, labels=classes, zero_division=0)
    result: dict[str, Any] = {
        "f1_binary": float(f1_score(labels > 0, predicted > 0, zero_division=0)),
        "macro_f1": float(f1_score(labels, predicted, labels=classes, average="macro", zero_division=0)),
    }
    for i, name in enumerate(LABELS[1:], start=1):
        result[f"precision_{name}"] = float(precision[i])
        result[f"recall_{name}"] = float(recall[i])
        result[f"support_{name}"] = int(support[i])
    return result
