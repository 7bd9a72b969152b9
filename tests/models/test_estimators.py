"""The custom detectors obey the scikit-learn estimator contract."""

from __future__ import annotations

import numpy as np
from sklearn.utils.estimator_checks import parametrize_with_checks

from models.distill import KnnDetector, MahalanobisDetector, fit_temperature, soft_targets


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
