"""The window feature code shared by training and the runtime."""

from __future__ import annotations

import numpy as np
import pytest

from models import anomaly, faults, rul
from models.errors import WindowRejected
from models.features import FeatureSpec, Regimes, features, pad_oldest, series_features, sliding_windows


def test_sliding_windows_match_padded_last_windows() -> None:
    rows = np.arange(30, dtype=np.float64).reshape(10, 3)
    windows = sliding_windows(rows, 4, 2)
    assert windows.shape == (9, 4, 3)
    for end in range(1, 10):
        assert np.array_equal(windows[end - 1], pad_oldest(rows[: end + 1], 4))


def test_features_reject_misshapen_windows() -> None:
    with pytest.raises(ValueError, match="windows must be"):
        features(np.zeros((1, rul.SPEC.window - 1, len(rul.SPEC.signals))), rul.SPEC)


def test_rul_features_of_a_linear_trend() -> None:
    n, s = rul.SPEC.window, len(rul.SPEC.signals)
    window = np.tile(np.arange(n, dtype=np.float64)[:, None], (1, s))
    feats = features(window[None], rul.SPEC)[0]
    sensors = s - 1
    assert feats[0] == n - 1  # cycle count
    assert np.allclose(feats[1 + 3 * sensors : 1 + 4 * sensors], 1.0)  # slope block


def test_fault_margins_computed_in_float64() -> None:
    # Air 300.0 K and process 308.6 K sit exactly on the 8.6 K heat-dissipation rule: the margin must be 0,
    # not float32 noise that flips the rule.
    window = np.array([[[0.0, 300.0, 308.6, 1300.0, 40.0, 10.0]]])
    feats = features(window, faults.SPEC)[0]
    assert abs(feats[9]) < 1e-9


@pytest.mark.parametrize("spec", [rul.SPEC, anomaly.SPEC, faults.SPEC], ids=["rul", "anomaly", "faults"])
def test_single_window_path_matches_the_batch_features(spec) -> None:
    # The edge's series_features and the training side's features must be the same numbers.
    rng = np.random.default_rng(0)
    windows = 50.0 + rng.standard_normal((3, spec.window, len(spec.signals)))
    if spec.categories:
        windows[:, :, 0] = 1.0
    batch = features(windows, spec)
    for i in range(3):
        assert np.allclose(series_features(np.ascontiguousarray(windows[i].T), spec), batch[i], rtol=1e-12, atol=1e-9)
    with pytest.raises(ValueError, match="series must be"):
        series_features(windows[0], spec)


def test_anomaly_features_of_a_known_window() -> None:
    spec = anomaly.SPEC
    t = np.arange(spec.window, dtype=np.float64)
    window = np.tile((2.0 * t + 5.0)[:, None], (1, len(spec.signals)))
    feats = features(window[None], spec)[0].reshape(4, -1)
    assert np.allclose(feats[0], 2.0 * t.mean() + 5.0)  # mean
    assert np.allclose(feats[1], 2.0 * t.std())  # std
    assert np.allclose(feats[2], 2.0)  # slope
    assert np.allclose(feats[3], 2.0 * t[-1] + 5.0)  # last


def _graph_features(windows: np.ndarray, spec) -> np.ndarray:
    import onnxruntime as ort

    from models.export import window_features_onnx

    session = ort.InferenceSession(window_features_onnx(spec), providers=["CPUExecutionProvider"])
    return session.run(["raw_features"], {"window": windows})[0]


def test_window_feature_graph_equals_features_py_on_real_windows(datasets) -> None:
    # The edge student computes the anomaly features in ONNX: generated from the same FeatureSpec, they must be
    # the numbers features.py gives, on real SKAB windows (steady and faulty parts alike).
    from models.datasets import load_skab

    spec = anomaly.SPEC
    frame = load_skab([datasets / "skab" / "valve1" / "0.csv"])[0]
    rows = frame[list(spec.signals)].to_numpy(dtype=np.float64)
    windows = sliding_windows(rows, spec.window, spec.window)
    expected = features(windows, spec)
    got = _graph_features(windows, spec)
    assert got.dtype == np.float64
    assert got.shape == expected.shape
    assert np.allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_window_feature_graph_of_a_known_window_and_other_recipes_refused() -> None:
    from models.errors import TrainingError
    from models.export import window_features_nodes

    spec = anomaly.SPEC
    t = np.arange(spec.window, dtype=np.float64)
    window = np.tile((2.0 * t + 5.0)[:, None], (1, len(spec.signals)))[None]
    assert np.allclose(_graph_features(window, spec), features(window, spec), rtol=1e-12)
    with pytest.raises(TrainingError, match="no ONNX form"):
        window_features_nodes(rul.SPEC)


def _regime_spec() -> FeatureSpec:
    """Two operating regimes of one setting (0 and 10), two sensors reading 100/200 and 300/600 in them."""
    regimes = Regimes(
        settings=1,
        centres=np.array([[0.0], [10.0]]),
        scale=np.array([1.0]),
        radius=0.5,
        mean=np.array([[100.0, 300.0], [200.0, 600.0]]),
        std=np.array([[1.0, 3.0], [2.0, 6.0]]),
    )
    signals, units = ("cycle", "setting", "a", "b"), ("cycle", "", "", "")
    return FeatureSpec("rul", signals, units, window=4, min_window=2, ewm_alphas=(0.5,), regimes=regimes)


def test_sensors_are_standardised_within_the_regime_of_their_row() -> None:
    spec = _regime_spec()
    cycles = np.arange(1.0, 5.0)
    settings = np.array([0.0, 10.0, 0.1, 9.8])  # the regime changes from row to row, as in C-MAPSS FD002
    sensors = np.array([[101.0, 303.0], [202.0, 606.0], [101.0, 303.0], [202.0, 606.0]])
    window = np.column_stack([cycles, settings, sensors])[None]
    feats = features(window, spec)[0]
    assert feats[0] == 4.0  # the cycle count
    assert np.allclose(feats[1:3], 1.0)  # last row: (202 - 200) / 2 and (606 - 600) / 6, in its own regime
    assert np.allclose(feats[3:5], 1.0)  # mean over rows in two regimes: one spread above the mean in each
    again = FeatureSpec.from_json(spec.to_json())
    assert again.regimes is not None
    assert np.array_equal(features(window, again), features(window, spec))
    assert np.allclose(series_features(np.ascontiguousarray(window[0].T), spec), feats)
    # A condition the model never saw: refused, not standardised against the nearest one.
    window[0, 2, 1] = 5.0
    with pytest.raises(WindowRejected, match=r"unknown_regime: operating settings \[5.0\]"):
        features(window, spec)
    assert spec.probe().shape == (4, 4)
    assert np.isfinite(features(spec.probe()[None], spec)).all()
