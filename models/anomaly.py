"""Anomaly detection on the SKAB pump testbed, trained on normal operation only.

Following SKAB's protocol, every experiment's first 400 rows are its normal baseline: window features are
standardised against that asset's own baseline (``LoadedModel.with_baseline`` on the edge) and the detectors
score the distance from normal operation learned over all baselines. Teacher: Mahalanobis distance plus
k-nearest-neighbour distance (whitened), each scaled by its alarm level on held-out normal data. Student:
the ensemble pruned to its Mahalanobis member (three nodes, int8-quantizable), its threshold matched to the
teacher's alarm rate on held-out normal operation. The student's graph takes the raw window and the baseline
and computes the window features itself (nodes generated from ``SPEC``), so the edge scores a window in one
onnxruntime call; the teacher takes the features ``features.py`` computes.

Scoring mirrors the edge: each file is a machine, scored against its own baseline with its own threshold (the
larger of the calibrated one and the 0.99 quantile of its baseline windows' scores, ``adapted``). The figure that
counts is leave-one-group-out: trained and tuned on one group of experiments (valve1) with the anomaly-free run as
extra normal data, scored on the other (valve2), and the reverse; point-wise F1/FAR/MAR, the event view (detection
delay, SKAB's NAB-style score: ``models.events``) beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from models import build, events
from models.datasets import SKAB_COLUMNS, file_names, files_hash, load_skab
from models.distill import KnnDetector, MahalanobisDetector
from models.errors import DataError, TrainingError
from models.export import knn_ensemble_onnx, quadratic_score_onnx, window_input_onnx
from models.features import FeatureSpec, features, sliding_windows
from models.runtime import LoadedModel, baseline_features, baseline_stats

Array = NDArray[np.float64]
SPEC = FeatureSpec(
    task="anomaly",
    signals=tuple(SKAB_COLUMNS.values()),
    units=("g", "g", "A", "kPa", "°C", "°C", "V", "l/min"),
    window=30,
    min_window=30,
)
BASELINE_ROWS = 400  # SKAB protocol: the first 400 rows of each experiment are its training part
BASELINE_QUANTILE = 0.99  # an asset's threshold is at least this quantile of its baseline's scores (the edge's)
NORMAL_CHUNK = 1000  # the anomaly-free run is cut into pseudo-experiments of this length
ALARM_RATE = 0.05  # designed false-alarm rate on held-out normal operation
KEEP_CONFIRMED = 0.9  # share of the windows people confirmed as faults that must still alarm after retraining
SEED = 0


@dataclass
class Segment:
    """One experiment: z-scored features of its baseline windows and of its scored part."""

    name: str
    baseline: Array
    scored: Array
    labels: NDArray[np.bool_] | None  # None for normal-only data


@dataclass
class EnsembleScorer:
    """The teacher in scikit-learn form: scaled Mahalanobis + kNN distance."""

    maha: MahalanobisDetector
    knn: KnnDetector
    weights: tuple[float, float]

    def predict(self, X: Array) -> Array:
        """Ensemble score of each (baseline-standardised) feature row."""
        return self.weights[0] * self.maha.distance(X) + self.weights[1] * self.knn.distance(X)


def _segment(name: str, rows: Array, labels: NDArray[np.bool_] | None, spec: FeatureSpec) -> Segment:
    if rows.shape[0] <= BASELINE_ROWS:
        raise DataError(f"{name}: {rows.shape[0]} rows, need more than the {BASELINE_ROWS}-row baseline")
    mean, std = baseline_stats(baseline_features(rows[:BASELINE_ROWS], spec))
    feats = features(sliding_windows(rows, spec.window, spec.window), spec)
    z = (feats - mean) / std
    first_scored = BASELINE_ROWS - (spec.window - 1)  # window ending at row 400
    return Segment(name, z[:first_scored], z[first_scored:], labels[BASELINE_ROWS:] if labels is not None else None)


def segments(frames: Sequence[pd.DataFrame], spec: FeatureSpec = SPEC) -> list[Segment]:
    """Labelled experiments as they are; unlabelled (normal) runs cut into chunks of ``NORMAL_CHUNK`` rows."""
    out = []
    for frame in frames:
        rows = frame[list(spec.signals)].to_numpy(dtype=np.float64)
        name = str(frame.attrs.get("file", "skab"))
        if "anomaly" in frame.columns:
            out.append(_segment(name, rows, frame["anomaly"].to_numpy() == 1, spec))
            continue
        for start in range(0, rows.shape[0] - NORMAL_CHUNK + 1, NORMAL_CHUNK):
            out.append(_segment(f"{name}@{start}", rows[start : start + NORMAL_CHUNK], None, spec))
    return out


def train(
    paths: Sequence[Path], version: str, progress: build.Progress = build.quiet, extra: build.Extra | None = None
) -> build.Built:
    """Teacher ensemble and pruned student from SKAB CSVs (needs an unlabelled normal run for thresholds).

    ``extra``: windows people called false alarms (label 0) join the normal operation the detectors learn
    and the thresholds are set on; windows they confirmed as faults (label 1) cap the thresholds.
    """
    frames = load_skab(paths)
    segs = segments(frames)
    fit = np.concatenate([s.baseline for s in segs])
    held = [s.scored for s in segs if s.labels is None]
    if not held:
        raise TrainingError("no normal-only run (anomaly-free.csv) to set thresholds on")
    held_out = np.concatenate(held)
    false_alarms = extra.rows(0) if extra is not None else np.empty((0, fit.shape[1]))
    confirmed = extra.rows(1) if extra is not None else np.empty((0, fit.shape[1]))
    fit = np.concatenate([fit, false_alarms])
    progress(f"anomaly: detectors on {len(fit)} baseline windows, thresholds on {len(held_out)} normal windows")
    maha = MahalanobisDetector(alarm_rate=ALARM_RATE).fit(fit)
    knn = KnnDetector(alarm_rate=ALARM_RATE, random_state=SEED).fit(fit)
    level_m = float(np.quantile(maha.distance(held_out), 1 - ALARM_RATE))
    level_k = float(np.quantile(knn.distance(held_out), 1 - ALARM_RATE))
    teacher = EnsembleScorer(maha, knn, (0.5 / level_m, 0.5 / level_k))
    teacher_threshold = threshold(teacher.predict, held_out, false_alarms, confirmed)
    student_threshold = threshold(maha.distance, held_out, false_alarms, confirmed)
    normal = [f for f in frames if "anomaly" not in f.columns]
    default_rows = pd.concat(normal)[list(SPEC.signals)].to_numpy(dtype=np.float64)
    mean, std = baseline_stats(baseline_features(default_rows, SPEC))
    manifest = build.new_manifest(
        "anomaly",
        "skab-pump-anomaly",
        version,
        SPEC,
        output={"kind": "anomaly", "unit": ""},
        training={
            "files": file_names(paths),
            "data_sha256": files_hash(paths),
            "seed": SEED,
            "protocol": f"SKAB: first {BASELINE_ROWS} rows of each file are its normal baseline, the rest is "
            f"scored point-wise; detectors fitted on the baselines of the training files and the anomaly-free run, "
            f"thresholds at a {ALARM_RATE:.0%} alarm rate on held-out normal operation (the anomaly-free run); "
            "leave one group out: the test files (given apart) are another group of experiments, none of them "
            "fitted or tuned on",
            **({"feedback": extra.record} if extra is not None else {}),
        },
        baseline={
            "min_rows": BASELINE_ROWS,
            "policy": "per_asset: call with_baseline() on the asset's first normal rows; else the default",
            "default": {"mean": mean.tolist(), "std": std.tolist()},
        },
        description="Pump anomaly score and threshold (SKAB testbed signals), against the asset's baseline.",
        limits="Trained on SKAB valve experiments and one normal run; the leaderboard also covers other "
        "fault kinds. Without a per-asset baseline the default (one normal run) is far less sensitive; each "
        f"machine needs {BASELINE_ROWS} rows of its own healthy operation first.",
    )
    progress("anomaly: ONNX export")
    built = build.Built(manifest, estimators={"teacher": teacher, "student": maha})
    build.add_variants(
        built,
        knn_ensemble_onnx(knn.location_, knn.whitening_, knn.reference_, knn.n_neighbors, teacher.weights),
        window_input_onnx(SPEC, quadratic_score_onnx(maha.location_, maha.whitening_)),
        output_name="score",
        n_features=fit.shape[1],
        calibration={"teacher": {"threshold": teacher_threshold}, "student": {"threshold": student_threshold}},
    )
    architecture = "Mahalanobis member; window features and baseline computed in the graph"
    for variant, suffix in (("student", ""), ("student-int8", ", dynamic int8, a scale per weight column")):
        built.manifest["variants"][variant] |= {"graph_input": "window", "architecture": architecture + suffix}
    built.manifest["variants"]["teacher"]["architecture"] = "Mahalanobis + kNN distance ensemble"
    return built


def threshold(score: Callable[[Array], Array], normal: Array, false_alarms: Array, confirmed: Array) -> float:
    """The alarm-rate quantile of the scores of normal operation.

    Windows people called false alarms count as normal operation, which raises the threshold; the rise
    stops where ``KEEP_CONFIRMED`` of the windows they confirmed as faults would no longer alarm. Feedback
    never lowers the threshold below the one normal operation alone gives.
    """
    base = float(np.quantile(score(normal), 1 - ALARM_RATE))
    if not len(false_alarms):
        return base
    level = float(np.quantile(score(np.concatenate([normal, false_alarms])), 1 - ALARM_RATE))
    if len(confirmed):
        level = min(level, float(np.quantile(score(confirmed), 1 - KEEP_CONFIRMED)))
    return max(base, level)


def scored_frames(paths: Sequence[Path], model: LoadedModel | None, split: bool) -> list[pd.DataFrame]:
    """The labelled SKAB files given (``split``: only those the model was not trained on)."""
    frames = [f for f in load_skab(paths) if "anomaly" in f.columns]
    if split and model is not None:
        trained = set(model.manifest["training"].get("files", []))
        frames = [f for f in frames if str(f.attrs.get("file")) not in trained]
    if not frames:
        which = "labelled SKAB file the model was not trained on" if split else "labelled SKAB file"
        raise DataError(f"no {which} among the data given")
    return frames


def adapted(
    model: LoadedModel, baseline: Mapping[str, Any], quantile: float = BASELINE_QUANTILE
) -> tuple[LoadedModel, float]:
    """The model against an asset's own baseline (signal → its healthy rows) and the asset's threshold.

    As the edge agent adapts a machine (``edge_agent/diagnostics/baseline.py``): features standardised on the
    baseline, the threshold the larger of the calibrated one and the ``quantile`` of the baseline windows' own
    scores.
    """
    spec = model.spec
    asset = model.with_baseline(baseline)
    rows = np.column_stack([np.asarray(baseline[s], dtype=np.float64) for s in spec.signals])
    healthy = sliding_windows(rows, spec.window, spec.window)
    calibrated = _calibrated(model)
    own = asset.raw_outputs(asset.transform(healthy)).reshape(-1)
    return asset, max(calibrated, float(np.quantile(own, quantile))) if own.size else calibrated


def _calibrated(model: LoadedModel) -> float:
    return float(model.manifest["variants"][model.variant]["calibration"]["threshold"])


def evaluate(
    model: LoadedModel, paths: Sequence[Path], truth: Path | None = None, split: bool = False
) -> dict[str, Any]:
    """Pooled point-wise F1, FAR and MAR over the scored parts of the labelled files given, and the event view."""
    frames = scored_frames(paths, model, split)
    spec = model.spec
    true, pred, plot, runs, changepoints = [], [], [], [], []
    for frame in frames:
        rows = frame[list(spec.signals)].to_numpy(dtype=np.float64)
        asset, threshold = adapted(model, {s: rows[:BASELINE_ROWS, i] for i, s in enumerate(spec.signals)})
        windows = sliding_windows(rows, spec.window, spec.window)[BASELINE_ROWS - (spec.window - 1) :]
        scores = asset.raw_outputs(asset.transform(windows)).reshape(-1)
        labels = frame["anomaly"].to_numpy()[BASELINE_ROWS:] == 1
        alarms = scores > threshold
        true.append(labels)
        pred.append(alarms)
        runs.append((labels, alarms))
        changepoints.append((frame["changepoint"].to_numpy()[BASELINE_ROWS:] == 1, alarms))
        plot.append((str(frame.attrs.get("file")), scores, labels))
    last = frames[-1][list(spec.signals)].to_numpy(dtype=np.float64)[-spec.window :]
    window = {s: last[:, i].tolist() for i, s in enumerate(spec.signals)}
    names = sorted({str(f.attrs.get("file", "")).split("/")[0] for f in frames})
    return (
        metrics(np.concatenate(true), np.concatenate(pred))
        | events.delays(runs)
        | events.nab(changepoints)
        | {
            "n_files": len(frames),
            "protocol": f"{len(frames)} labelled files of {', '.join(names)}"
            + (" not trained on" if split else "")
            + f": each file's first {BASELINE_ROWS} rows are its baseline (features standardised on them, "
            f"threshold the larger of the calibrated one and the {BASELINE_QUANTILE} quantile of their scores, "
            "as the edge adapts a machine), every later row scored",
            "_plot": {"series": plot, "threshold": _calibrated(model)},
            "_window": window,
        }
    )


def metrics(true: NDArray[np.bool_], pred: NDArray[np.bool_]) -> dict[str, Any]:
    """SKAB's outlier metrics: F1, FAR and MAR (in %), point-wise over all scored rows."""
    tp = int((true & pred).sum())
    fp = int((~true & pred).sum())
    fn = int((true & ~pred).sum())
    tn = int((~true & ~pred).sum())
    return {
        "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
        "far": 100.0 * fp / (fp + tn) if fp + tn else 0.0,
        "mar": 100.0 * fn / (fn + tp) if fn + tp else 0.0,
        "n_rows": int(true.size),
    }
