"""Knowledge distillation and calibration helpers, and the normal-operation detectors of the anomaly task.

Training side only (scikit-learn). The detectors follow the scikit-learn estimator contract: parameters
only in ``__init__``, learned state in attributes ending in ``_``, ``fit`` returns ``self``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.covariance import LedoitWolf
from sklearn.utils.validation import check_is_fitted, validate_data

Array = NDArray[np.float64]


def soft_targets(probabilities: Array, temperature: float) -> Array:
    """Teacher probabilities softened by a temperature (> 1 spreads mass onto the runner-up classes)."""
    logits = np.log(np.clip(probabilities, 1e-6, None)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def fit_temperature(raw: Array, labels: NDArray[np.int64]) -> float:
    """The temperature minimising held-out negative log-likelihood of ``softmax(log(raw) / T)``."""
    logs = np.log(np.clip(raw, 1e-6, None))
    best_t, best_nll = 1.0, np.inf
    for t in np.exp(np.linspace(np.log(0.05), np.log(20.0), 121)):
        z = logs / t
        z = z - z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        nll = -float(log_p[np.arange(len(labels)), labels].mean())
        if nll < best_nll:
            best_t, best_nll = float(t), nll
    return best_t


def interval_bands(predicted: Array, true: Array, edges: tuple[float, ...], coverage: float = 0.8) -> dict[str, Any]:
    """Split-conformal prediction interval per band of predicted value: residual quantiles (true - pred)."""
    band = np.searchsorted(np.asarray(edges), predicted, side="right")
    residual = true - predicted
    tail = (1.0 - coverage) / 2.0
    lower, upper = [], []
    for b in range(len(edges) + 1):
        r = residual[band == b]
        if r.size < 10:  # too few to estimate a band: fall back on all residuals
            r = residual
        lower.append(float(np.quantile(r, tail)))
        upper.append(float(np.quantile(r, 1.0 - tail)))
    return {"edges": list(edges), "lower": lower, "upper": upper, "coverage": coverage}


class _DistanceDetector(OutlierMixin, BaseEstimator):  # type: ignore[misc]
    """A detector whose anomaly score is a distance, thresholded at the training rows' ``1 - alarm_rate`` quantile.

    Subclasses set ``alarm_rate`` in ``__init__`` and define ``_distance`` on validated rows.
    """

    alarm_rate: float

    def _distance(self, X: Array) -> Array:
        raise NotImplementedError

    def _set_threshold(self, X: Array) -> None:
        self.threshold_ = float(np.quantile(self._distance(X), 1.0 - self.alarm_rate))
        self.offset_ = -self.threshold_

    def distance(self, X: Any) -> Array:
        """The anomaly score of each row (higher is more anomalous)."""
        check_is_fitted(self)
        return self._distance(validate_data(self, X, dtype=np.float64, reset=False))

    def score_samples(self, X: Any) -> Array:
        """Negated distance (scikit-learn's convention: higher is more normal)."""
        return -self.distance(X)

    def decision_function(self, X: Any) -> Array:
        """Threshold minus distance: negative for outliers."""
        return self.score_samples(X) - self.offset_

    def predict(self, X: Any) -> NDArray[np.int64]:
        """-1 for outliers, 1 for inliers."""
        return np.where(self.decision_function(X) < 0, -1, 1)


class MahalanobisDetector(_DistanceDetector):
    """Distance from normal operation under a shrunk (Ledoit-Wolf) covariance; higher is more anomalous.

    Args:
        alarm_rate: fraction of the training rows allowed above the threshold ``predict`` uses.
    """

    def __init__(self, alarm_rate: float = 0.05) -> None:
        self.alarm_rate = alarm_rate

    def fit(self, X: Any, y: Any = None) -> MahalanobisDetector:
        """Learn the centre, the whitening matrix and the threshold from normal rows."""
        X = validate_data(self, X, dtype=np.float64, ensure_min_samples=2)
        cov = LedoitWolf().fit(X)
        self.location_ = cov.location_
        # Cholesky factor of the precision: ||(x - c) @ L|| is the Mahalanobis distance.
        self.whitening_ = np.linalg.cholesky(cov.precision_ + 1e-12 * np.eye(X.shape[1]))
        self._set_threshold(X)
        return self

    def _distance(self, X: Array) -> Array:
        """Mahalanobis distance of each row."""
        return np.linalg.norm((X - self.location_) @ self.whitening_, axis=1)  # type: ignore[no-any-return]


class KnnDetector(_DistanceDetector):
    """Mean distance to the k nearest of a sample of normal rows, in whitened space.

    Args:
        n_neighbors: neighbours averaged.
        max_reference: normal rows kept as reference (a random sample, for speed and size).
        alarm_rate: fraction of the training rows allowed above the threshold ``predict`` uses.
        random_state: seed of the reference sample.
    """

    def __init__(
        self, n_neighbors: int = 5, max_reference: int = 2000, alarm_rate: float = 0.05, random_state: int = 0
    ) -> None:
        self.n_neighbors = n_neighbors
        self.max_reference = max_reference
        self.alarm_rate = alarm_rate
        self.random_state = random_state

    def fit(self, X: Any, y: Any = None) -> KnnDetector:
        """Whiten, sample the reference rows and set the threshold."""
        X = validate_data(self, X, dtype=np.float64, ensure_min_samples=2)
        maha = MahalanobisDetector().fit(X)
        self.location_, self.whitening_ = maha.location_, maha.whitening_
        rng = np.random.default_rng(self.random_state)
        keep = rng.choice(len(X), size=min(self.max_reference, len(X)), replace=False)
        self.reference_ = (X[np.sort(keep)] - self.location_) @ self.whitening_
        self._set_threshold(X)
        return self

    def _distance(self, X: Array) -> Array:
        """Mean distance to the nearest reference rows."""
        w = (X - self.location_) @ self.whitening_
        sq = (w**2).sum(1)[:, None] - 2.0 * w @ self.reference_.T + (self.reference_**2).sum(1)[None, :]
        k = min(self.n_neighbors, self.reference_.shape[0])
        nearest = np.partition(np.maximum(sq, 0.0), k - 1, axis=1)[:, :k]
        return np.sqrt(nearest).mean(axis=1)  # type: ignore[no-any-return]
