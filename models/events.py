"""Event-level views of an anomaly detector on labelled runs: detection delay, and SKAB's NAB-style score.

Point-wise F1 counts rows; a maintenance team meets events. Here each run's labelled anomaly is one event (SKAB
files hold one contiguous block each): detected when an alarm falls inside it, the delay from its first row to
that alarm (rows; SKAB reads one row a second), and the alarms raised outside any event.

The NAB-style score follows SKAB's change-point protocol (Lavin & Ahmad 2015, as SKAB's leaderboard applies it):
a window of ``NAB_WINDOW`` rows to the right of each labelled change point; the first detection inside a window
earns ``A_TP`` times the scaled sigmoid of its position (about 1 at the change point, 0 at the window's end),
a window without one costs ``A_FN``, every detection outside the windows costs ``A_FP``; normalised so that
detecting nothing scores 0 and detecting every change point at once scores 100. Detections are the alarm's
edges (its onsets and ends), the change points an outlier detector announces. Training side (numpy only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

NAB_WINDOW = 60  # rows (seconds) to the right of each change point, as SKAB's current leaderboard
PROFILES = {  # A_TP, A_FP, A_FN
    "standard": (1.0, -0.11, -1.0),
    "low_fp": (1.0, -0.22, -1.0),
    "low_fn": (1.0, -0.11, -2.0),
}


def delays(runs: Sequence[tuple[NDArray[np.bool_], NDArray[np.bool_]]]) -> dict[str, Any]:
    """Per run (labels, alarms): the event detected or not, and the delay of its first alarm, in rows."""
    found: list[float] = []
    missed = 0
    false_onsets = 0
    for labels, alarms in runs:
        events = _blocks(labels)
        for start, end in events:
            hit = np.flatnonzero(alarms[start:end])
            if hit.size:
                found.append(float(hit[0]))
            else:
                missed += 1
        outside = alarms & ~labels
        false_onsets += int(np.count_nonzero(outside[1:] & ~outside[:-1]) + int(outside[:1].sum()))
    return {
        "events": len(found) + missed,
        "events_detected": len(found),
        "delay_median_rows": float(np.median(found)) if found else None,
        "delay_mean_rows": float(np.mean(found)) if found else None,
        "delay_max_rows": float(np.max(found)) if found else None,
        "false_alarm_onsets": false_onsets,
    }


def _blocks(flags: NDArray[np.bool_]) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    edges = np.diff(np.r_[0, flags.astype(np.int8), 0])
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


def _sigmoid(position: float) -> float:
    """NAB's scaled sigmoid: position -1 (window start) → ~0.987, 0 (window end) → 0."""
    return float(2.0 / (1.0 + np.exp(5.0 * position)) - 1.0)


def nab(runs: Sequence[tuple[NDArray[np.bool_], NDArray[np.bool_]]], window: int = NAB_WINDOW) -> dict[str, Any]:
    """NAB-style scores (per profile) of the alarms' edges against the change points, per run (cps, alarms)."""
    raw = dict.fromkeys(PROFILES, 0.0)
    perfect = dict.fromkeys(PROFILES, 0.0)
    null = dict.fromkeys(PROFILES, 0.0)
    missed = false = 0
    for changepoints, alarms in runs:
        detections = np.flatnonzero(np.diff(np.r_[False, alarms]) != 0)
        used = np.zeros(detections.size, dtype=bool)
        for cp in np.flatnonzero(changepoints):
            inside = (detections >= cp) & (detections < cp + window)
            first = np.flatnonzero(inside)
            used |= inside
            for name, (a_tp, _a_fp, a_fn) in PROFILES.items():
                perfect[name] += a_tp * _sigmoid(-1.0)
                null[name] += a_fn
                raw[name] += a_tp * _sigmoid(-1.0 + (detections[first[0]] - cp) / window) if first.size else a_fn
            missed += 0 if first.size else 1
        false += int((~used).sum())
        for name, (_a_tp, a_fp, _a_fn) in PROFILES.items():
            raw[name] += a_fp * float((~used).sum())
    scores = {
        name: 100.0 * (raw[name] - null[name]) / (perfect[name] - null[name]) if perfect[name] != null[name] else 0.0
        for name in PROFILES
    }
    return {f"nab_{name}": value for name, value in scores.items()} | {
        "changepoints_missed": missed,
        "detections_outside_windows": false,
    }
