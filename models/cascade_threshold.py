"""The edge/platform cascade, measured: the student answers, the teacher re-checks what the student is unsure of.

The agent sends a window to the platform when its student's calibrated confidence is below a threshold, and
the platform's teacher answers instead. Here that is measured on a task's held-out data (the part ``models
evaluate`` scores): per window the student's and the teacher's predictions and the student's confidence, a
sweep of the threshold, and the threshold that offloads at most ``MAX_OFFLOAD`` of the windows with the best
cascade metric. The result becomes the manifest's ``cascade`` section, which tells the agent its threshold.
Chosen and scored on the same windows that figure is a best case; ``cross_fitted`` scores each half of the
windows with the threshold chosen on the other half.

Every prediction goes through ``LoadedModel.predict_batch``: the same validation, features, baseline and
calibration the agent and the platform run, so the confidence swept is the one the agent sees.
Training side (pandas, through the task modules).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models import anomaly, faults, registry, rul, runtime
from models.datasets import Rows, file_names, load_cmapss
from models.errors import DataError, ModelLoadError
from models.features import FeatureSpec, sliding_windows

MAX_OFFLOAD = 0.10  # share of windows the platform's teacher may be asked to re-check
# "Within 0.5 point of the teacher": half a point of F1 (a fraction), half a cycle of RMSE.
TOLERANCE = {"rul": 0.5, "faults": 0.005, "anomaly": 0.005}
METRIC = {"rul": ("rmse", False), "faults": ("macro_f1", True), "anomaly": ("f1", True)}
CURVE_SHARES = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)  # offload shares shown in the report's curve


@dataclass(frozen=True)
class HeldOut:
    """One stretch of held-out data: windows as the agent delivers them, the truth, and the asset's baseline."""

    windows: list[dict[str, Any]]
    truth: NDArray[Any]
    baseline: dict[str, Any] | None = None  # anomaly: the asset's first normal rows (SKAB protocol)


@dataclass(frozen=True)
class Outcomes:
    """Per held-out window: the truth, both models' answers and the student's confidence."""

    truth: NDArray[Any]
    student: NDArray[Any]
    teacher: NDArray[Any]
    confidence: NDArray[np.float64]
    part: NDArray[np.int64] | None = None  # which HeldOut each window came from (one asset's file)

    def subset(self, keep: NDArray[np.bool_]) -> Outcomes:
        """The windows where ``keep`` holds."""
        part = None if self.part is None else self.part[keep]
        return Outcomes(self.truth[keep], self.student[keep], self.teacher[keep], self.confidence[keep], part)


def held_out(
    task: str,
    paths: Sequence[Path],
    truth: Path | None = None,
    model: runtime.LoadedModel | None = None,
    split: bool = False,
    rows: Rows | None = None,
) -> list[HeldOut]:
    """The windows ``evaluate`` scores for a model (every row given, or its held-out split), with their truth."""
    if task == "faults":
        if model is None:
            raise DataError("the faults windows depend on the model's training rows: give the model")
        return [_faults_held_out(model, paths, split, rows)]
    if task == "rul":
        if split:
            raise DataError("rul keeps no internal held-out split: give test files and their RUL files")
        return [_rul_held_out(paths, truth, model.spec if model is not None else rul.SPEC)]
    if task == "anomaly":
        return _anomaly_held_out(paths, model, split)
    raise DataError(f"unknown task {task!r}")


def _faults_held_out(model: runtime.LoadedModel, paths: Sequence[Path], split: bool, rows: Rows | None) -> HeldOut:
    frame, index, _ = faults.scored_rows(model, paths, split, rows)
    part = frame.iloc[index]
    columns = {name: part[name].tolist() for name in faults.SPEC.signals}
    windows = [{name: [columns[name][i]] for name in faults.SPEC.signals} for i in range(len(part))]
    return HeldOut(windows, faults.modes_of(frame)[index])  # compared by name: old models' labels differ


def _rul_held_out(paths: Sequence[Path], truth: Path | None, spec: FeatureSpec) -> HeldOut:
    data = load_cmapss([*paths, truth] if truth is not None else paths)
    if data.test is None or data.truth is None:
        raise DataError("the cascade needs a C-MAPSS test file and its RUL file")
    rul.check_frame(data, "test", spec)
    windows, units = rul.test_windows(data.test, spec)
    return HeldOut(_dicts(windows, spec.signals), data.truth.loc[units].to_numpy(dtype=np.float64))


def _anomaly_held_out(paths: Sequence[Path], model: runtime.LoadedModel | None, split: bool) -> list[HeldOut]:
    out = []
    spec = anomaly.SPEC if model is None else model.spec
    for frame in anomaly.scored_frames(paths, model, split):
        rows = frame[list(spec.signals)].to_numpy(dtype=np.float64)
        first_scored = anomaly.BASELINE_ROWS - (spec.window - 1)  # the window ending at the first scored row
        windows = sliding_windows(rows, spec.window, spec.window)[first_scored:]
        baseline = {s: rows[: anomaly.BASELINE_ROWS, i] for i, s in enumerate(spec.signals)}
        labels = frame["anomaly"].to_numpy()[anomaly.BASELINE_ROWS :] == 1
        out.append(HeldOut(_dicts(windows, spec.signals), labels, baseline))
    return out


def _dicts(windows: NDArray[np.float64], signals: Sequence[str]) -> list[dict[str, Any]]:
    """``(n, rows, signals)`` windows as the agent's signal → values mappings (column views, no copies)."""
    return [{s: w[:, i] for i, s in enumerate(signals)} for w in windows]


def _answer(task: str) -> Callable[[runtime.Prediction, runtime.LoadedModel], Any]:
    if task == "rul":
        return lambda p, _m: p.rul
    if task == "faults":
        modes = ("none", *faults.MODES)
        return lambda p, _m: modes.index(p.label)
    return lambda p, _m: p.label == "anomaly"


def outcomes(
    task: str, student: runtime.LoadedModel, teacher: runtime.LoadedModel, data: Sequence[HeldOut]
) -> Outcomes:
    """Both models on every held-out window (anomaly: each against its asset's own baseline)."""
    answer = _answer(task)
    truth, s_out, t_out, conf, parts = [], [], [], [], []
    for index, part in enumerate(data):
        s_model, t_model = student, teacher
        s_pred, t_pred = None, None
        if part.baseline is not None:  # each machine against its own baseline and threshold, as the edge adapts it
            (s_model, s_level), (t_model, t_level) = (anomaly.adapted(m, part.baseline) for m in (student, teacher))
            s_pred = [runtime.judged(p, s_level) for p in s_model.predict_batch(part.windows)]
            t_pred = [runtime.judged(p, t_level) for p in t_model.predict_batch(part.windows)]
        s_pred = s_pred or s_model.predict_batch(part.windows)
        t_pred = t_pred or t_model.predict_batch(part.windows)
        truth.append(np.asarray(part.truth))
        s_out.append(np.array([answer(p, s_model) for p in s_pred]))
        t_out.append(np.array([answer(p, t_model) for p in t_pred]))
        conf.append(np.array([p.confidence for p in s_pred], dtype=np.float64))
        parts.append(np.full(len(part.windows), index, dtype=np.int64))
    return Outcomes(*(np.concatenate(x) for x in (truth, s_out, t_out, conf, parts)))


def scores(task: str, truth: NDArray[Any], predicted: NDArray[Any]) -> dict[str, float]:
    """The task's protocol metrics of one set of answers (faults: plus accuracy)."""
    if task == "rul":
        return rul.metrics(truth.astype(np.float64), np.clip(predicted.astype(np.float64), 0.0, rul.CAP))
    if task == "faults":
        numbers = faults.metrics(truth, predicted)
        found = {k: float(v) for k, v in numbers.items() if k in ("f1_binary", "macro_f1")}
        return found | {"accuracy": float(np.mean(truth == predicted))}
    found = anomaly.metrics(truth.astype(bool), predicted.astype(bool))
    return {k: float(v) for k, v in found.items() if k in ("f1", "far", "mar")}


def cascade_answers(result: Outcomes, threshold: float) -> NDArray[Any]:
    """The cascade's answers: the teacher's where the student's confidence is below the threshold."""
    return np.where(result.confidence < threshold, result.teacher, result.student)


def candidates(confidence: NDArray[np.float64], max_offload: float) -> list[float]:
    """Thresholds worth trying: 0 (offload nothing) and each distinct confidence offloading ≤ max_offload."""
    distinct = np.unique(confidence)
    # conf < t offloads every window below t: the count below each distinct value is its rank in the sort.
    below = np.searchsorted(np.sort(confidence), distinct, side="left")
    allowed = distinct[below <= max_offload * confidence.size]
    return [0.0, *(float(t) for t in allowed if t > 0.0)]


def best_threshold(task: str, result: Outcomes, max_offload: float) -> float:
    """The threshold offloading at most ``max_offload`` with the best cascade metric (ties: less offloaded)."""
    metric, higher = METRIC[task]
    sign = 1.0 if higher else -1.0
    best: tuple[float, float, float] | None = None  # (signed metric, -share, threshold)
    for threshold in candidates(result.confidence, max_offload):
        share = float(np.mean(result.confidence < threshold))
        value = scores(task, result.truth, cascade_answers(result, threshold))[metric]
        key = (sign * value, -share, threshold)
        if best is None or key[:2] > best[:2]:
            best = key
    assert best is not None  # 0.0 is always a candidate
    return best[2]


def folds(result: Outcomes, seed: int = 0) -> NDArray[np.int64]:
    """Two halves of the held-out windows: alternate assets where there are several, else a seeded shuffle."""
    n = result.truth.size
    if result.part is not None and np.unique(result.part).size >= 2:
        return result.part % 2
    fold = np.ones(n, dtype=np.int64)
    fold[np.random.default_rng(seed).permutation(n)[: n // 2]] = 0
    return fold


def cross_fitted(task: str, result: Outcomes, max_offload: float, seed: int = 0) -> dict[str, Any]:
    """The cascade scored on windows its threshold was not chosen on: each half with the other half's threshold.

    Choosing the threshold on the windows it is scored on gives the best case at that offload share; this
    is what to expect on new data.
    """
    metric, higher = METRIC[task]
    fold = folds(result, seed)
    answers = result.student.copy()
    offloaded = np.zeros(result.truth.size, dtype=bool)
    thresholds = []
    for k in (0, 1):
        threshold = best_threshold(task, result.subset(fold != k), max_offload)
        here = fold == k
        offloaded[here] = result.confidence[here] < threshold
        thresholds.append(threshold)
    answers[offloaded] = result.teacher[offloaded]
    value = scores(task, result.truth, answers)[metric]
    teacher = scores(task, result.truth, result.teacher)[metric]
    gap = (teacher - value) if higher else (value - teacher)
    share = float(np.mean(offloaded))
    return {
        "cascade": value,
        "offload_share": share,
        "thresholds": thresholds,
        "within_tolerance": bool(gap <= TOLERANCE[task] + 1e-12),
        "how": "two halves (alternate assets, or a seeded shuffle); each scored with the other's threshold",
    }


def measure(task: str, result: Outcomes, max_offload: float = MAX_OFFLOAD) -> dict[str, Any]:
    """Student, teacher and the best cascade offloading at most ``max_offload``: the manifest section.

    The threshold the agent gets is chosen on all held-out windows; ``cross_fitted`` scores the choice on
    windows it was not made on.
    """
    if result.truth.size == 0:
        raise DataError("no held-out window to measure the cascade on")
    if not 0.0 <= max_offload <= 1.0:
        raise DataError(f"max offload {max_offload} is not a share in [0, 1]")
    metric, higher = METRIC[task]
    sign = 1.0 if higher else -1.0
    threshold = best_threshold(task, result, max_offload)
    student = scores(task, result.truth, result.student)
    teacher = scores(task, result.truth, result.teacher)
    chosen = scores(task, result.truth, cascade_answers(result, threshold))
    gap = sign * (teacher[metric] - chosen[metric])  # how far the cascade falls short of the teacher
    return {
        "confidence_threshold": threshold,
        "offload_share": float(np.mean(result.confidence < threshold)),
        "max_offload": max_offload,
        "metric": metric,
        "higher_is_better": higher,
        "student": student[metric],
        "teacher": teacher[metric],
        "cascade": chosen[metric],
        "tolerance": TOLERANCE[task],
        "within_tolerance": bool(gap <= TOLERANCE[task] + 1e-12),
        "all_metrics": {"student": student, "teacher": teacher, "cascade": chosen},
        "curve": curve(task, result),
        "cross_fitted": cross_fitted(task, result, max_offload),
        "n_windows": int(result.truth.size),
        "rule": "the agent sends a window to the platform's teacher when the student's confidence is below "
        "confidence_threshold",
    }


def curve(task: str, result: Outcomes) -> list[dict[str, float]]:
    """The cascade metric at a few offload shares (threshold at that quantile of the confidence).

    Tied confidences (a tree's leaves, RUL's interval bands) offload together: shares that land on the same
    threshold appear once.
    """
    metric = METRIC[task][0]
    points: list[dict[str, float]] = []
    ranked = np.sort(result.confidence)
    for share in CURVE_SHARES:
        k = round(share * ranked.size)
        threshold = float(ranked[k]) if k < ranked.size else float(np.nextafter(ranked[-1], np.inf))
        if points and points[-1]["confidence_threshold"] == threshold:
            continue
        answers = cascade_answers(result, threshold)
        points.append(
            {
                "confidence_threshold": threshold,
                "offload_share": float(np.mean(result.confidence < threshold)),
                metric: scores(task, result.truth, answers)[metric],
            }
        )
    return points


def load_pair(
    directory: Path, student_variant: str | None = None, teacher_dir: Path | None = None
) -> tuple[runtime.LoadedModel, runtime.LoadedModel]:
    """The edge student and the teacher of a model directory.

    A teacher over 2 MB is not committed (``teacher.large.onnx``): ``teacher_dir`` names another model
    directory holding it (the local training output), accepted only if its sha256 is the manifest's.
    """
    student = runtime.load(directory, student_variant)
    if teacher_dir is None:
        entry = student.manifest["variants"].get("teacher")
        if entry is not None and not (directory / entry["file"]).is_file():
            raise ModelLoadError(
                f"{directory}: {entry['file']} is not here (a teacher over 2 MB is not committed); give the "
                "directory of a training run that built it (--teacher DIR, e.g. the output of models train)"
            )
        return student, runtime.load(directory, "teacher")
    teacher = runtime.load(teacher_dir, "teacher")
    expected = student.manifest["variants"]["teacher"]["sha256"]
    if teacher.manifest["variants"]["teacher"]["sha256"] != expected:
        raise ModelLoadError(f"{teacher_dir}: its teacher is not the one {directory}'s manifest records")
    return student, teacher


def run(
    task: str,
    directory: Path,
    paths: Sequence[Path],
    truth: Path | None = None,
    student_variant: str | None = None,
    teacher_dir: Path | None = None,
    max_offload: float = MAX_OFFLOAD,
    split: bool = False,
    rows: Rows | None = None,
) -> dict[str, Any]:
    """Measure the cascade of a model directory on the data ``evaluate`` scores; the manifest section."""
    student, teacher = load_pair(directory, student_variant, teacher_dir)
    if student.task != task:
        raise DataError(f"{directory} holds a {student.task} model, not {task}")
    result = outcomes(task, student, teacher, held_out(task, paths, truth, student, split, rows))
    section = measure(task, result, max_offload)
    files = [*paths, truth] if truth is not None else list(paths)
    return {"student_variant": student.variant, "data": file_names(files), **section}


def write(directory: Path, section: dict[str, Any]) -> None:
    """Store the section as the manifest's ``cascade``; the ONNX files and their sha256 stay as they are."""
    manifest = registry.read_manifest(directory)
    manifest["cascade"] = section
    registry.check_manifest(manifest, directory)
    (directory / registry.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def summary(task: str, directory: Path, section: dict[str, Any]) -> str:
    """The measured cascade in a few lines of text."""
    metric = section["metric"]
    verdict = "met" if section["within_tolerance"] and section["offload_share"] <= section["max_offload"] else "missed"
    lines = [
        f"{task} {directory}: {section['student_variant']} answers, the teacher re-checks windows with "
        f"confidence < {section['confidence_threshold']:.4f}",
        f"{metric}: student {section['student']:.4f}, teacher {section['teacher']:.4f}, cascade "
        f"{section['cascade']:.4f}, offloading {100 * section['offload_share']:.1f} % of "
        f"{section['n_windows']} windows",
        f"target (within {section['tolerance']} of the teacher, ≤ {100 * section['max_offload']:.0f} % "
        f"offloaded): {verdict}",
        *_cross_fitted_line(metric, section),
        "offload share → "
        + metric
        + ": "
        + ", ".join(f"{100 * p['offload_share']:.1f} % → {p[metric]:.4f}" for p in section["curve"]),
    ]
    return "\n".join(lines)


def _cross_fitted_line(metric: str, section: dict[str, Any]) -> list[str]:
    check = section.get("cross_fitted")
    if check is None:  # a section written before cross-fitting
        return []
    verdict = "within" if check["within_tolerance"] else "not within"
    return [
        f"cross-fitted (threshold chosen on the other half): {metric} {check['cascade']:.4f}, offloading "
        f"{100 * check['offload_share']:.1f} %, {verdict} {section['tolerance']} of the teacher"
    ]
