"""Per-machine adaptation: a new machine of a known type scored against its own first rows of healthy operation.

A pump model trained on a fleet ships with a default baseline (the feature mean and spread of the training
data's normal operation). A new machine differs from it in level and spread (its sensors, its load, its
installation), so against the default baseline nearly everything it does looks abnormal. Adapted as the edge
agent adapts it (``edge_agent/diagnostics/baseline.py``): feature normalisation from the machine's first N rows marked
healthy (``LoadedModel.with_baseline``), and the threshold the larger of the model's calibrated one and the
``threshold_quantile`` quantile of the scores of those healthy windows.

This module measures the difference on SKAB: every labelled experiment plays a new machine; its first
``baseline_rows`` rows (healthy in every file) are the baseline and the rest is scored point-wise. Reported
per file and pooled: F1, FAR and MAR, whether the fault was detected at all, the false alarm rate the
default baseline gives at the same missed alarm rate (its threshold re-tuned to the adapted MAR with
hindsight, the default's best case), and the ROC AUC of both scores (each relative to its threshold).
Training side (pandas).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import roc_auc_score

from models import anomaly, runtime
from models.datasets import load_skab
from models.errors import DataError
from models.features import sliding_windows

DEFAULT_BASELINE_ROWS = anomaly.BASELINE_ROWS  # SKAB reads one row a second: 400 rows are under 7 minutes
DEFAULT_QUANTILE = 0.99  # the edge agent's EDGE_BASELINE_QUANTILE default


@dataclass(frozen=True)
class Scored:
    """One machine's scored rows: truth and both scores (default baseline, own baseline), own threshold."""

    name: str
    labels: NDArray[np.bool_]
    default: NDArray[np.float64]
    adapted: NDArray[np.float64]
    threshold: float  # the adapted one: never below the calibrated threshold


def score_file(
    model: runtime.LoadedModel,
    name: str,
    rows: NDArray[np.float64],
    labels: NDArray[np.bool_],
    baseline_rows: int,
    quantile: float = DEFAULT_QUANTILE,
) -> Scored:
    """Scores of every row after the baseline, against the default baseline and against the machine's own."""
    spec = model.spec
    if rows.shape[0] <= baseline_rows:
        raise DataError(f"{name}: {rows.shape[0]} rows, need more than the {baseline_rows}-row baseline")
    if labels[:baseline_rows].any():
        raise DataError(f"{name}: the first {baseline_rows} rows hold labelled anomalies; a baseline must be healthy")
    first_scored = max(baseline_rows - (spec.window - 1), 0)
    windows = sliding_windows(rows, spec.window, spec.window)[first_scored:]
    baseline = {s: rows[:baseline_rows, i] for i, s in enumerate(spec.signals)}
    own = model.with_baseline(baseline)
    default = model.raw_outputs(model.transform(windows)).reshape(-1).astype(np.float64)
    adapted = own.raw_outputs(own.transform(windows)).reshape(-1).astype(np.float64)
    healthy = sliding_windows(rows[:baseline_rows], spec.window, spec.window)
    calibrated = float(model.manifest["variants"][model.variant]["calibration"]["threshold"])
    own_level = float(np.quantile(own.raw_outputs(own.transform(healthy)), quantile)) if len(healthy) else calibrated
    scored = labels[max(baseline_rows, spec.window - 1) :]
    return Scored(name, scored, default, adapted, max(calibrated, own_level))


def skab(
    model: runtime.LoadedModel,
    paths: Sequence[Path],
    baseline_rows: int = DEFAULT_BASELINE_ROWS,
    quantile: float = DEFAULT_QUANTILE,
) -> dict[str, Any]:
    """Default against per-machine baseline on the labelled SKAB files under ``paths``."""
    if model.task != "anomaly":
        raise DataError(f"adaptation applies to anomaly models, not {model.task}")
    needed = int(model.manifest["baseline"]["min_rows"])
    if baseline_rows < needed:
        raise DataError(f"a baseline of {baseline_rows} rows is shorter than the model's minimum of {needed}")
    if not 0.5 < quantile < 1.0:
        raise DataError(f"threshold quantile {quantile} is not in (0.5, 1)")
    spec = model.spec
    machines = [
        score_file(
            model,
            str(frame.attrs.get("file", "skab")),
            frame[list(spec.signals)].to_numpy(dtype=np.float64),
            frame["anomaly"].to_numpy() == 1,
            baseline_rows,
            quantile,
        )
        for frame in load_skab(paths)
        if "anomaly" in frame.columns
    ]
    if not machines:
        raise DataError("no labelled SKAB file among the data given")
    threshold = float(model.manifest["variants"][model.variant]["calibration"]["threshold"])
    return compare(machines, threshold) | {
        "variant": model.variant,
        "baseline_rows": baseline_rows,
        "threshold_quantile": quantile,
    }


def compare(machines: Sequence[Scored], threshold: float) -> dict[str, Any]:
    """Per machine and pooled figures: the default baseline at the calibrated ``threshold``, each machine's
    own baseline at its own threshold, and the default at the adapted missed alarm rate."""
    files = []
    for m in machines:
        files.append(
            {
                "file": m.name,
                "threshold": m.threshold,
                "default": _figures(m.labels, m.default > threshold),
                "adapted": _figures(m.labels, m.adapted > m.threshold),
            }
        )
    labels = np.concatenate([m.labels for m in machines])
    default = np.concatenate([m.default for m in machines])
    adapted = np.concatenate([m.adapted / m.threshold for m in machines])  # relative to each machine's threshold
    overall = {
        "default": _pooled(files, "default", labels, default > threshold),
        "adapted": _pooled(files, "adapted", labels, adapted > 1.0),
    }
    # The default baseline's best case: its threshold re-tuned, knowing the labels, to miss no more than adapted.
    matched = equal_mar_threshold(labels, default, overall["adapted"]["mar"])
    by_file = [_figures(m.labels, m.default > matched) for m in machines]
    overall["default_at_equal_mar"] = _pooled(by_file, None, labels, default > matched) | {"threshold": matched}
    overall["auc"] = {"default": _auc(labels, default), "adapted": _auc(labels, adapted)}
    return {
        "threshold": threshold,
        "files": files,
        "overall": overall,
        "far_lower": overall["adapted"]["far"] < overall["default_at_equal_mar"]["far"],
        "mar_not_higher": overall["adapted"]["mar"] <= overall["default_at_equal_mar"]["mar"] + 1e-9,
    }


def equal_mar_threshold(labels: NDArray[np.bool_], scores: NDArray[np.float64], mar: float) -> float:
    """The highest threshold whose missed alarm rate (in %) on ``scores`` is at most ``mar``."""
    anomalous = np.sort(scores[labels])
    if anomalous.size == 0:
        raise DataError("no labelled anomaly to match the missed alarm rate on")
    allowed = int(np.floor(mar / 100.0 * anomalous.size + 1e-9))  # rows at or below the threshold
    if allowed == 0:
        return float(np.nextafter(anomalous[0], -np.inf))
    return float(anomalous[allowed - 1])


def _figures(labels: NDArray[np.bool_], alarms: NDArray[np.bool_]) -> dict[str, Any]:
    found = anomaly.metrics(labels, alarms)
    return {
        "f1": found["f1"],
        "far": found["far"],
        "mar": found["mar"],
        "detected": bool((labels & alarms).any()),
        "n_rows": found["n_rows"],
    }


def _pooled(
    files: Sequence[dict[str, Any]], key: str | None, labels: NDArray[np.bool_], alarms: NDArray[np.bool_]
) -> dict[str, Any]:
    rows = [f[key] for f in files] if key is not None else files
    return _figures(labels, alarms) | {
        "faults_detected": sum(1 for r in rows if r["detected"]),
        "faults": len(rows),
    }


def _auc(labels: NDArray[np.bool_], scores: NDArray[np.float64]) -> float | None:
    if labels.all() or not labels.any():
        return None
    return float(roc_auc_score(labels, scores))


def table(result: dict[str, Any]) -> str:
    """The comparison as aligned text: one line per file, then the pooled figures."""
    lines = [
        f"per-machine baseline: first {result['baseline_rows']} healthy rows of each file ({result['variant']}; "
        f"threshold {result['threshold']:.3f}, or the {result['threshold_quantile']} quantile of the healthy "
        "scores where higher)",
        f"{'file':<16}{'FAR default':>12}{'FAR own':>9}{'MAR default':>12}{'MAR own':>9}"
        f"{'F1 default':>11}{'F1 own':>8}{'detected':>10}",
    ]
    for f in result["files"]:
        d, a = f["default"], f["adapted"]
        lines.append(
            f"{f['file']:<16}{d['far']:>12.1f}{a['far']:>9.1f}{d['mar']:>12.1f}{a['mar']:>9.1f}"
            f"{d['f1']:>11.3f}{a['f1']:>8.3f}{_yes(d['detected']) + '/' + _yes(a['detected']):>10}"
        )
    o = result["overall"]
    for name, key in (
        ("default baseline", "default"),
        ("own baseline", "adapted"),
        ("default, equal MAR", "default_at_equal_mar"),
    ):
        r = o[key]
        lines.append(
            f"{name:<20} FAR {r['far']:5.1f} %  MAR {r['mar']:5.1f} %  F1 {r['f1']:.3f}  "
            f"faults detected {r['faults_detected']}/{r['faults']}"
        )
    lines.append(f"ROC AUC: default {o['auc']['default']:.3f}, own baseline {o['auc']['adapted']:.3f}")
    return "\n".join(lines)


def _yes(flag: bool) -> str:
    return "y" if flag else "n"
