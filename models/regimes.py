"""Operating regimes found from the data: how many there are, where they sit, how each sensor reads in each.

Training side (scikit-learn). The setting columns are standardised and clustered by k-means for every k from 2 to
``MAX_REGIMES`` on a sample of rows; the k with the best silhouette is kept when that silhouette reaches
``SEPARATED`` (the clusters are distinct operating conditions: C-MAPSS's six conditions score 0.997), otherwise
the fleet runs in one regime (FD001's setting noise scores 0.36). Nothing is fixed to one or six: a fleet of
three conditions gets three. Sensors that take fewer than ``MIN_DISTINCT`` values within every regime (constant,
or a two-valued flag) carry no wear information and are left out, and the model card says which.

The regimes are then a ``features.Regimes``: the runtime (numpy only) places each row in its regime and
standardises its sensors there, on the edge as in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from models.errors import TrainingError
from models.features import Regimes, nearest_regime

Array = NDArray[np.float64]
MAX_REGIMES = 10
SEPARATED = 0.8  # silhouette from which clusters of the settings count as distinct operating regimes
SAMPLE = 3000  # rows the clustering and the silhouette are computed on
MIN_DISTINCT = 3
RADIUS_FACTOR = 4.0  # a row may lie this many times farther from its centre than any training row did
MIN_SEPARATION_SHARE = 0.25  # ... or, with several regimes, up to this share of the nearest two centres' distance


@dataclass(frozen=True)
class Found:
    """The regimes of a training set, the sensors kept and those left out (name → why)."""

    regimes: Regimes
    sensors: list[str]
    dropped: dict[str, str]
    silhouette: float | None


def cluster(settings: Array, seed: int = 0) -> tuple[Array, Array, float | None]:
    """Regime centres ``(k, n_settings)``, the distance scale, and the silhouette of the chosen k (None for k=1)."""
    if len(settings) < 2:
        raise TrainingError("too few rows to find operating regimes")
    scale = settings.std(axis=0)
    scale[scale <= 1e-12 * np.maximum(np.abs(settings.mean(axis=0)), 1.0)] = 1.0  # a constant setting
    z = (settings - settings.mean(axis=0)) / scale
    rng = np.random.default_rng(seed)
    sample = z[rng.choice(len(z), size=min(SAMPLE, len(z)), replace=False)]
    best: tuple[float, Array] | None = None
    for k in range(2, min(MAX_REGIMES, len(np.unique(sample, axis=0)) - 1) + 1):
        model = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(sample)
        score = float(silhouette_score(sample, model.labels_))
        if best is None or score > best[0]:
            best = (score, model.cluster_centers_)
    if best is None or best[0] < SEPARATED:
        return settings.mean(axis=0)[None, :], scale, None if best is None else best[0]
    centres: Array = best[1] * scale + settings.mean(axis=0)
    return centres[np.lexsort(centres.T[::-1])], scale, best[0]  # a stable order: by the first setting, ...


def fit(frame: pd.DataFrame, settings: Sequence[str], sensors: Sequence[str], seed: int = 0) -> Found:
    """Regimes, per-regime sensor statistics and the informative sensors of a training frame."""
    values = frame[list(settings)].to_numpy(dtype=np.float64)
    centres, scale, silhouette = cluster(values, seed)
    index, distance = nearest_regime(values, centres, scale)
    k = len(centres)
    radius = RADIUS_FACTOR * float(distance.max()) + 1e-9
    if k > 1:
        gaps = np.linalg.norm((centres[:, None, :] - centres[None, :, :]) / scale, axis=-1)
        radius = max(radius, MIN_SEPARATION_SHARE * float(gaps[~np.eye(k, dtype=bool)].min()))
    kept, dropped = [], {}
    for name in sensors:
        column = frame[name].to_numpy()
        distinct = max(len(np.unique(column[index == r])) for r in range(k))
        if distinct < MIN_DISTINCT:
            dropped[name] = "constant" if distinct == 1 else f"{distinct} distinct values within every regime"
        else:
            kept.append(name)
    if not kept:
        raise TrainingError(f"no sensor varies within its operating regime (left out: {sorted(dropped)})")
    x = frame[kept].to_numpy(dtype=np.float64)
    mean = np.stack([x[index == r].mean(axis=0) for r in range(k)])
    floor = 1e-3 * x.std(axis=0) + 1e-9
    std = np.stack([np.maximum(x[index == r].std(axis=0), floor) for r in range(k)])
    return Found(Regimes(len(settings), centres, scale, radius, mean, std), kept, dropped, silhouette)
