"""The custom detectors obey the scikit-learn estimator contract."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPRegressor
from sklearn.utils.estimator_checks import parametrize_with_checks

from models.distill import KnnDetector, MahalanobisDetector, averaged_mlp, fit_temperature, soft_targets


@parametrize_with_checks([MahalanobisDetector(), KnnDetector(max_reference=50)])
def test_sklearn_contract(estimator, check) -> None:
    check(estimator)


def test_mahalanobis_flags_far_rows() -> None:
    rng = np.random.default_rng(0)
    normal = rng.standard_normal((500, 4))
    detector = MahalanobisDetector(alarm_rate=0.01).fit(normal)
    assert detector.predict(np.full((1, 4), 10.0))[0] == -1
    assert (detector.predict(normal) == 1).mean() >= 0.98


def test_temperature_softens_and_fits() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    soft = soft_targets(probs, 4.0)
    assert soft[0, 0] < 0.9
    assert np.allclose(soft.sum(axis=1), 1.0)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    overconfident = np.where(labels[:, None] == np.arange(2), 0.999, 0.001)
    flip = rng.random(400) < 0.3
    overconfident[flip] = overconfident[flip][:, ::-1]
    assert fit_temperature(overconfident, labels) > 1.0


def test_averaged_mlp_is_the_mean_of_its_members() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 6))
    y = X @ rng.standard_normal(6) + 0.1 * rng.standard_normal(200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        members = [MLPRegressor(hidden_layer_sizes=(8, 4), max_iter=20, random_state=s).fit(X, y) for s in range(3)]
    merged = averaged_mlp(members)
    expected = np.mean([m.predict(X) for m in members], axis=0)
    assert np.allclose(merged.predict(X), expected, atol=1e-10)
    assert merged.hidden_layer_sizes == (24, 12)
    with pytest.raises(ValueError, match="no MLP"):
        averaged_mlp([])
