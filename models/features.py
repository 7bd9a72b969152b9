"""Window features: the one implementation used at training and at inference, on the edge and the platform.

A window is a float64 array ``(n_windows, length, n_signals)``, oldest row first, signals in the order the
model's ``FeatureSpec`` declares. Features are computed in float64 (differences such as a temperature margin
lose the decision boundary in float32) and cast to float32 only when they enter an ONNX graph.
Imports numpy only, so the edge runtime can use it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.errors import WindowRejected

Array = NDArray[np.float64]

AI4I_TYPES = ("L", "M", "H")
# AI4I mode rules (data set README): the margins make them exact thresholds at zero.
_HDF_DT_K, _HDF_SPEED_RPM = 8.6, 1380.0
_PWF_LOW_W, _PWF_HIGH_W = 3500.0, 9000.0
_OSF_LIMIT = np.array([11_000.0, 12_000.0, 13_000.0])  # min·N·m for L, M, H


def nearest_regime(settings: Array, centres: Array, scale: Array) -> tuple[NDArray[np.int64], Array]:
    """The nearest centre of each row of ``settings`` (``(..., n_settings)``) and the distance to it, in ``scale``
    units."""
    offsets = (settings[..., None, :] - centres) / scale
    distances = np.sqrt(np.einsum("...ks,...ks->...k", offsets, offsets))
    index = distances.argmin(axis=-1)
    return index, np.take_along_axis(distances, index[..., None], axis=-1)[..., 0]


@dataclass(frozen=True, eq=False)
class Regimes:
    """Operating regimes of a fleet, so that sensors are compared within the condition they were read in.

    Each row's operating settings put it in the regime of the nearest centre (distances in ``scale`` units);
    its sensors are then standardised by their mean and spread in that regime. A row farther than ``radius``
    from every centre is in a regime the model never saw: refused (``WindowRejected("unknown_regime")``).

    Args:
        settings: how many signals after ``cycle`` are operating settings (the regime is read from them).
        centres: ``(k, n_settings)`` regime centres, in the settings' own units.
        scale: ``(n_settings,)`` the unit of distance along each setting.
        radius: the largest distance from a centre a row may have (in ``scale`` units).
        mean: ``(k, n_sensors)`` each sensor's mean in each regime.
        std: ``(k, n_sensors)`` each sensor's spread in each regime (floored, never zero).
    """

    settings: int
    centres: Array
    scale: Array
    radius: float
    mean: Array
    std: Array

    def to_json(self) -> dict[str, Any]:
        """The regimes as a JSON-ready dict (for the manifest)."""
        return {
            "settings": self.settings,
            "centres": self.centres.tolist(),
            "scale": self.scale.tolist(),
            "radius": self.radius,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Regimes:
        """The regimes back from their manifest dict."""
        arrays = {k: np.asarray(data[k], dtype=np.float64) for k in ("centres", "scale", "mean", "std")}
        return cls(settings=int(data["settings"]), radius=float(data["radius"]), **arrays)

    def standardise(self, settings: Array, sensors: Array) -> Array:
        """Sensors standardised within the regime of their row; refuses a row in no known regime."""
        index, distance = nearest_regime(settings, self.centres, self.scale)
        far = distance > self.radius
        if far.any():
            row = np.unravel_index(int(np.argmax(distance)), distance.shape)
            raise WindowRejected(
                "unknown_regime",
                f"operating settings {settings[row].tolist()} are {float(distance[row]):.3g} from the nearest "
                f"known regime (at most {self.radius:.3g}); the model was not trained for this condition",
            )
        standardised: Array = (sensors - self.mean[index]) / self.std[index]
        return standardised


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
        regimes: operating regimes the sensors are standardised in (rul); None: sensors as read.
    """

    task: str
    signals: tuple[str, ...]
    units: tuple[str, ...]
    window: int
    min_window: int
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)
    ewm_alphas: tuple[float, ...] = ()
    regimes: Regimes | None = None

    def to_json(self) -> dict[str, Any]:
        """The spec as a JSON-ready dict (for the manifest)."""
        data = asdict(replace(self, regimes=None))
        data["categories"] = {k: list(v) for k, v in self.categories.items()}
        if self.regimes is None:
            del data["regimes"]
        else:
            data["regimes"] = self.regimes.to_json()
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
            regimes=Regimes.from_json(data["regimes"]) if data.get("regimes") else None,
        )

    def probe(self) -> Array:
        """One window ``(window, n_signals)`` the spec accepts: settings at the first regime's centre, its sensors
        at their mean there, every other value 0 (the first category of a categorical signal)."""
        row = np.zeros(len(self.signals))
        if self.regimes is not None:
            n = self.regimes.settings
            row[1 : 1 + n] = self.regimes.centres[0]
            row[1 + n :] = self.regimes.mean[0]
        return np.tile(row, (self.window, 1))


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
    """Per sensor: last, mean, std, slope, min, max and EWMs; plus the cycle count (first signal).

    With ``spec.regimes`` the operating settings (the signals after the cycle) place each row in its regime
    and the sensors are standardised within it first; the settings themselves are not features.
    """
    if spec.regimes is None:
        sensors = windows[:, :, 1:]
    else:
        n = spec.regimes.settings
        sensors = spec.regimes.standardise(windows[:, :, 1 : 1 + n], windows[:, :, 1 + n :])
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
