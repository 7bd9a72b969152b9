"""Window features: the one implementation used at training and at inference, on the edge and the platform.

A window is a float64 array ``(n_windows, length, n_signals)``, oldest row first, signals in the order the
model's ``FeatureSpec`` declares. Features are computed in float64 (differences such as a temperature margin
lose the decision boundary in float32) and cast to float32 only when they enter an ONNX graph.
Imports numpy only, so the edge runtime can use it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]

AI4I_TYPES = ("L", "M", "H")
# AI4I mode rules (data set README): the margins make them exact thresholds at zero.
_HDF_DT_K, _HDF_SPEED_RPM = 8.6, 1380.0
_PWF_LOW_W, _PWF_HIGH_W = 3500.0, 9000.0
_OSF_LIMIT = np.array([11_000.0, 12_000.0, 13_000.0])  # min·N·m for L, M, H


@dataclass(frozen=True)
class FeatureSpec:
    """What a model reads: its signals (name, unit, kind), window length and feature recipe.

    Args:
        task: ``rul``, ``faults`` or ``anomaly``; selects the feature recipe.
        signals: input signal names in column order.
        units: unit of each signal, as declared in the site model ("" for dimensionless).
        window: rows per window (the newest ``window`` rows are used).
        min_window: shortest window accepted; shorter ones than ``window`` are padded with their oldest
            row (the declared imputation policy ``pad_oldest``).
        categories: for string signals, the accepted values in code order.
        ewm_alphas: smoothing factors of the exponentially weighted means (rul).
    """

    task: str
    signals: tuple[str, ...]
    units: tuple[str, ...]
    window: int
    min_window: int
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)
    ewm_alphas: tuple[float, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The spec as a JSON-ready dict (for the manifest)."""
        data = asdict(self)
        data["categories"] = {k: list(v) for k, v in self.categories.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeatureSpec:
        """The spec back from its manifest dict."""
        return cls(
            task=str(data["task"]),
            signals=tuple(data["signals"]),
            units=tuple(data["units"]),
            window=int(data["window"]),
            min_window=int(data["min_window"]),
            categories={k: tuple(v) for k, v in data.get("categories", {}).items()},
            ewm_alphas=tuple(float(a) for a in data.get("ewm_alphas", ())),
        )


def pad_oldest(rows: Array, length: int) -> Array:
    """A ``(k, n_signals)`` window grown to ``length`` rows by repeating its oldest row in front."""
    missing = length - rows.shape[0]
    if missing <= 0:
        return rows[-length:]
    return np.concatenate([np.repeat(rows[:1], missing, axis=0), rows], axis=0)


def _slope(windows: Array) -> Array:
    length = windows.shape[1]
    t = np.arange(length, dtype=np.float64) - (length - 1) / 2.0
    denom = float(np.dot(t, t)) or 1.0
    slopes: Array = np.einsum("t,nts->ns", t, windows) / denom
    return slopes


def _ewm_last(windows: Array, alpha: float) -> Array:
    length = windows.shape[1]
    weights = (1.0 - alpha) ** np.arange(length - 1, -1, -1, dtype=np.float64)
    weights /= weights.sum()
    means: Array = np.einsum("t,nts->ns", weights, windows)
    return means


def rul_features(windows: Array, spec: FeatureSpec) -> Array:
    """Per sensor: last, mean, std, slope, min, max and EWMs; plus the cycle count (first signal)."""
    sensors = windows[:, :, 1:]
    parts = [
        windows[:, -1, :1],
        sensors[:, -1, :],
        sensors.mean(axis=1),
        sensors.std(axis=1),
        _slope(sensors),
        sensors.min(axis=1),
        sensors.max(axis=1),
    ]
    parts.extend(_ewm_last(sensors, alpha) for alpha in spec.ewm_alphas)
    return np.concatenate(parts, axis=1)


def fault_features(windows: Array, spec: FeatureSpec) -> Array:
    """Raw readings, physics (power, temperature difference, strain) and the mode-rule margins."""
    if windows.shape[2] != 6:
        raise ValueError(f"fault features take 6 signals, got {windows.shape[2]}")
    row = windows[:, -1, :]
    ptype, air, process, speed, torque, wear = (row[:, i] for i in range(6))
    power = torque * speed * (2.0 * np.pi / 60.0)
    delta_t = process - air
    strain = wear * torque
    limit = _OSF_LIMIT[np.clip(ptype, 0, 2).astype(np.int64)]
    columns = [
        ptype,
        air,
        process,
        speed,
        torque,
        wear,
        power,
        delta_t,
        strain,
        delta_t - _HDF_DT_K,
        speed - _HDF_SPEED_RPM,
        power - _PWF_LOW_W,
        power - _PWF_HIGH_W,
        strain - limit,
    ]
    return np.stack(columns, axis=1)


@functools.lru_cache(maxsize=8)
def window_statistics(length: int) -> tuple[Array, Array]:
    """The constant matrices behind the anomaly statistics of a ``length``-row series.

    ``series @ linear`` gives mean, least-squares slope and last value (one product); the norm of
    ``series @ centering`` over time is the standard deviation. The numpy path below and the ONNX graph
    that computes the same features on the edge (``export.window_features_nodes``) are both built from these.
    """
    t = np.arange(length, dtype=np.float64) - (length - 1) / 2.0
    linear = np.zeros((length, 3))
    linear[:, 0] = 1.0 / length
    linear[:, 1] = t / (float(np.dot(t, t)) or 1.0)
    linear[-1, 2] = 1.0
    centering = (np.eye(length) - 1.0 / length) / np.sqrt(length)
    linear.flags.writeable = False  # shared by every call
    centering.flags.writeable = False
    return linear, centering


def _anomaly_stats(series: Array) -> Array:
    """Mean, std, slope and last value of each signal; ``series`` is ``(..., n_signals, length)``."""
    linear, centering = window_statistics(series.shape[-1])
    stats = series @ linear  # (..., n_signals, 3): mean, slope, last
    centered = series @ centering
    std = np.sqrt(np.einsum("...t,...t->...", centered, centered))
    return np.concatenate([stats[..., 0], std, stats[..., 1], stats[..., 2]], axis=-1)


def anomaly_features(windows: Array, spec: FeatureSpec) -> Array:
    """Per signal: mean, std, slope and last value over the window (smoothing is most of the signal)."""
    return _anomaly_stats(windows.transpose(0, 2, 1))


def series_features(series: Array, spec: FeatureSpec) -> Array:
    """Features ``(n_features,)`` of one full window given signal-major, ``(n_signals, window)``.

    The edge's single-window path: the same statistics as ``features`` without the batch reshaping.
    """
    if series.shape != (len(spec.signals), spec.window):
        raise ValueError(f"series must be ({len(spec.signals)}, {spec.window}), got {series.shape}")
    if spec.task == "anomaly":
        return _anomaly_stats(series)
    one: Array = _RECIPES[spec.task](series.T[None], spec)[0]
    return one


_RECIPES: dict[str, Callable[[Array, FeatureSpec], Array]] = {
    "rul": rul_features,
    "faults": fault_features,
    "anomaly": anomaly_features,
}


def features(windows: Array, spec: FeatureSpec) -> Array:
    """Feature matrix ``(n_windows, n_features)`` in float64 for windows shaped by ``spec``."""
    if windows.ndim != 3 or windows.shape[1:] != (spec.window, len(spec.signals)):
        raise ValueError(f"windows must be (n, {spec.window}, {len(spec.signals)}), got {windows.shape}")
    return _RECIPES[spec.task](windows, spec)


def sliding_windows(rows: Array, length: int, min_length: int) -> Array:
    """Every window ending at each row from ``min_length`` on, padded with the oldest row when short."""
    if rows.shape[0] < min_length:
        return np.empty((0, length, rows.shape[1]))
    padded = np.concatenate([np.repeat(rows[:1], length - 1, axis=0), rows], axis=0)
    view = np.lib.stride_tricks.sliding_window_view(padded, length, axis=0)  # (n, S, L)
    return np.ascontiguousarray(view.transpose(0, 2, 1)[min_length - 1 :])
