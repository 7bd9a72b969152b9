"""Fault diagnosis on AI4I 2020: process readings → failure mode (none, HDF, PWF, OSF, RNF); tool wear by rule.

Teacher: a random forest on physics features and the data set's mode-rule margins. Student: one decision
tree fitted to the teacher's temperature-softened probabilities (distillation), depth-limited (pruning).
Probabilities are calibrated by temperature scaling on a held-out part of the training split.

Tool wear failures (TWF) are drawn at random once the tool has worn about 200-240 minutes: nothing in the other
readings predicts the row they happen on, and no model learned them (recall 0). They are left to a maintenance
rule on the tool wear itself, apart from the learned model: ``tool_wear_rule`` measures the limit the plant's
alert rule uses (``tool-wear`` in examples/plant.yaml, advice in examples/knowledge/cnc_mill.yaml) on the
data: which share of the tool wear failures it warns of, how early, and how often it is active. The learned model
labels a row with TWF alone ``none``.

Protocol: the model trains on the rows given (``rows``: a range of them) and holds out a stratified 20 % of them
(seed 0) for its own figures; ``evaluate`` scores every row of the data it is given unless asked for that split.
Inputs never include the mode columns. Modes are reported one by one: the model's for HDF, PWF, OSF and RNF,
the rule's for TWF.
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
from models.datasets import Rows, file_names, files_hash, load_ai4i
from models.distill import fit_temperature, soft_targets
from models.errors import DataError, TrainingError
from models.export import sklearn_to_onnx
from models.features import AI4I_TYPES, FeatureSpec, features
from models.runtime import LoadedModel, calibrated_probabilities

LABELS = ("none", "HDF", "PWF", "OSF", "RNF")  # what the learned model tells apart
MODES = ("TWF", "HDF", "PWF", "OSF", "RNF")  # every AI4I failure mode, as reported
# A row with several modes gets the first of these: the rule-defined modes are the learnable ones.
_PRIORITY = ("HDF", "PWF", "OSF", "TWF", "RNF")
TOOL_WEAR_LIMIT = 200.0  # min: the hi limit of the plant's tool-wear alert rule (examples/plant.yaml)
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


def modes_of(frame: pd.DataFrame) -> NDArray[np.int64]:
    """Index in ``("none", *MODES)`` of each row's mode: ``none`` unless the machine failed; a failure without a
    mode flag counts as RNF; a row with several modes gets the first of ``_PRIORITY``."""
    modes = np.zeros(len(frame), dtype=np.int64)
    failed = frame["machine_failure"].to_numpy() == 1
    names = ("none", *MODES)
    for mode in reversed(_PRIORITY):
        modes[failed & (frame[mode].to_numpy() == 1)] = names.index(mode)
    modes[failed & (modes == 0)] = names.index("RNF")
    return modes


def labels_of(frame: pd.DataFrame) -> NDArray[np.int64]:
    """The learned model's class index per row (``LABELS``): its mode, with TWF left to the tool-wear rule."""
    return to_modes_index(modes_of(frame), inverse=True)


def to_modes_index(index: NDArray[np.int64], inverse: bool = False) -> NDArray[np.int64]:
    """Model class indices (``LABELS``) as indices of ``("none", *MODES)``, or back (TWF becomes ``none``)."""
    names = ("none", *MODES)
    if inverse:
        table = np.array([LABELS.index(n) if n in LABELS else 0 for n in names])
    else:
        table = np.array([names.index(n) for n in LABELS])
    mapped: NDArray[np.int64] = table[index]
    return mapped


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
    """Row indices of the stratified (by mode) training and held-out parts."""
    index = np.arange(len(frame))
    train, test = train_test_split(index, test_size=TEST_SIZE, stratify=modes_of(frame), random_state=seed)
    return np.sort(train), np.sort(test)


def train(
    paths: Sequence[Path],
    version: str,
    progress: build.Progress = build.quiet,
    extra: build.Extra | None = None,
    rows: Rows | None = None,
) -> build.Built:
    """Teacher, distilled student and their calibration from the AI4I CSV (``rows`` of it; plus feedback rows)."""
    frame = load_ai4i(paths, rows)
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
        raise TrainingError(f"training part lacks classes: has {teacher.classes_.tolist()} of {list(LABELS)}")
    progress(f"faults: student (decision tree, depth {STUDENT_DEPTH}) on soft targets, T={DISTILL_TEMPERATURE}")
    soft = soft_targets(teacher.predict_proba(X_fit), DISTILL_TEMPERATURE)
    student = DecisionTreeRegressor(max_depth=STUDENT_DEPTH, random_state=SEED).fit(X_fit, soft)
    calibration = {
        "teacher": {"temperature": fit_temperature(teacher.predict_proba(X[cal_idx]), labels[cal_idx])},
        "student": {"temperature": fit_temperature(student.predict(X[cal_idx]), labels[cal_idx])},
    }
    progress("faults: ONNX export")
    where = f"rows {rows[0]}-{rows[1]}" if rows else "every row"
    manifest = build.new_manifest(
        "faults",
        "ai4i-faults",
        version,
        SPEC,
        output={"kind": "classification", "labels": list(LABELS), "unit": ""},
        training={
            "files": file_names(paths),
            "rows": list(rows) if rows else None,
            "data_sha256": files_hash(paths),
            "seed": SEED,
            "protocol": f"fitted on {where} of the table less a stratified {TEST_SIZE:.0%} (seed {SEED}) held out "
            f"(evaluate --split); {CAL_SIZE:.0%} of the fitting part held out for calibration",
            "distill_temperature": DISTILL_TEMPERATURE,
            "tool_wear_rule": tool_wear_rule(frame),
            **({"feedback": extra.record} if extra is not None else {}),
        },
        description="Failure mode of a milling process step (AI4I 2020 signals): none, HDF, PWF, OSF, RNF. Tool "
        f"wear failures are left to the plant's tool-wear rule (tool wear >= {TOOL_WEAR_LIMIT:.0f} min).",
        limits="TWF and RNF are random in the data and essentially unpredictable: TWF is covered by the tool-wear "
        "rule, not by this model; HDF, PWF and OSF follow exact rules of the inputs. Failures with no mode flag are "
        "labelled RNF. Synthetic data.",
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


def scored_rows(
    model: LoadedModel, paths: Sequence[Path], split_: bool, rows: Rows | None
) -> tuple[pd.DataFrame, NDArray[np.int64], str]:
    """The table, the indices to score and what they are: every row given, or the model's held-out split."""
    names = ", ".join(file_names(paths))
    if not split_:
        frame = load_ai4i(paths, rows)
        where = f" rows {rows[0]}-{rows[1]}" if rows else ""
        return frame, np.arange(len(frame)), f"every row of {names}{where} ({len(frame)} rows)"
    trained = model.manifest["training"].get("rows")
    if rows is not None and trained is not None and list(rows) != list(trained):
        raise DataError(f"--split scores the held-out part of the training rows {trained}, not rows {list(rows)}")
    frame = load_ai4i(paths, (int(trained[0]), int(trained[1])) if trained else rows)
    _, test_idx = split(frame, int(model.manifest["training"]["seed"]))
    where = f"rows {trained[0]}-{trained[1]} of " if trained else ""
    return frame, test_idx, f"the held-out {TEST_SIZE:.0%} split of {where}{names} ({len(test_idx)} rows)"


def evaluate(
    model: LoadedModel,
    paths: Sequence[Path],
    truth: Path | None = None,
    split: bool = False,
    rows: Rows | None = None,
) -> dict[str, Any]:
    """Binary and 6-class macro F1 and per-mode figures on every row given (or the held-out split)."""
    frame, index, protocol = scored_rows(model, paths, split, rows)
    modes = modes_of(frame)[index]
    raw = model.raw_outputs(model.transform(windows_of(frame)[index]))
    temperature = float(model.manifest["variants"][model.variant]["calibration"]["temperature"])
    best = calibrated_probabilities(raw.astype(np.float64), temperature).argmax(axis=1)
    names = ("none", *MODES)
    predicted = np.array([names.index(n) for n in model.manifest["output"]["labels"]])[best]
    first = frame.iloc[int(index[0])]
    window = {name: [first[name]] for name in SPEC.signals}
    return metrics(modes, predicted) | {
        "n_rows": len(index),
        "protocol": protocol,
        "tool_wear_rule": tool_wear_rule(frame.iloc[index]),
        "_plot": {"true": modes, "pred": predicted},
        "_window": window,
    }


def metrics(modes: NDArray[np.int64], predicted: NDArray[np.int64]) -> dict[str, Any]:
    """Failure-class F1, macro F1 over the classes (none and the five modes) that occur in the truth or the
    predictions (rows 7,001-10,000 of AI4I hold no HDF), per-mode precision, recall and support."""
    classes = list(range(len(MODES) + 1))
    precision, recall, _, support = precision_recall_fscore_support(modes, predicted, labels=classes, zero_division=0)
    present = sorted(set(modes.tolist()) | set(predicted.tolist()))
    result: dict[str, Any] = {
        "f1_binary": float(f1_score(modes > 0, predicted > 0, zero_division=0)),
        "macro_f1": float(f1_score(modes, predicted, labels=present, average="macro", zero_division=0)),
        "macro_f1_classes": len(present),
    }
    for i, name in enumerate(MODES, start=1):
        seen = i in present  # a mode neither present nor predicted has no precision or recall (None)
        result[f"precision_{name}"] = float(precision[i]) if seen else None
        result[f"recall_{name}"] = float(recall[i]) if seen else None
        result[f"support_{name}"] = int(support[i])
    return result


def tool_wear_rule(frame: pd.DataFrame, limit: float = TOOL_WEAR_LIMIT) -> dict[str, Any]:
    """The tool-wear rule on some rows: the tool wear failures it warns of, how early, how often it is active.

    Tool wear only grows until the tool is changed, so a failure at wear ``w >= limit`` came after the rule had
    warned for ``w - limit`` minutes of cutting; a failure below the limit is missed.
    """
    wear = frame["tool_wear"].to_numpy(dtype=np.float64)
    at_failure = wear[(frame["TWF"].to_numpy() == 1) & (frame["machine_failure"].to_numpy() == 1)]
    caught = at_failure >= limit
    return {
        "limit_min": limit,
        "twf_failures": int(at_failure.size),
        "twf_warned": int(caught.sum()),
        "twf_recall": float(caught.mean()) if at_failure.size else None,
        "median_warning_min": float(np.median(at_failure[caught] - limit)) if caught.any() else None,
        "rows_warned_share": float(np.mean(wear >= limit)) if wear.size else 0.0,
        "twf_wear_range_min": [float(at_failure.min()), float(at_failure.max())] if at_failure.size else None,
    }
